"""CloakSettings: card defaults filled in per model, levels, and settings that cannot work."""

from __future__ import annotations

import pytest

from ulixes_onnx.cards import get_card
from ulixes_onnx.cloaking.loop import CloakSettingsError
from ulixes_onnx.cloaking.settings import LEVELS, CloakSettings, overrides_from, protect_distance


def test_card_defaults_fill_what_is_left_as_none() -> None:
    card = get_card("dlib-resnet")
    loop = CloakSettings(level="mid").loop_settings(card)
    assert (loop.target, loop.margin, loop.min_progress) == (
        card.cloak.away_target,
        card.cloak.margin,
        card.cloak.min_progress,
    )
    assert CloakSettings(target=1.1, margin=0.3).loop_settings(card).target == 1.1


def test_levels_scale_how_far_a_face_must_move() -> None:
    card = get_card("faceres")
    for level, scale in LEVELS.items():
        settings = CloakSettings(level=level)
        assert settings.loop_settings(card).target == pytest.approx(card.cloak.away_target * scale)
        assert protect_distance(settings, card) == pytest.approx(card.cloak.protect_distance * scale)
    # an explicit target is the user's, whatever the level
    assert CloakSettings(level="low", target=0.9).loop_settings(card).target == 0.9
    assert LEVELS["low"] < LEVELS["mid"] == 1.0 < LEVELS["high"]


def test_models_are_kept_once_in_order_and_labelled() -> None:
    settings = CloakSettings(models=("faceres", "dlib-resnet", "faceres"), ensemble="joint")
    assert settings.models == ("faceres", "dlib-resnet")
    assert settings.label == "joint(faceres+dlib-resnet)"
    assert CloakSettings(models=("dlib-resnet",)).label == "dlib-resnet"
    assert CloakSettings().label == "joint(dlib-resnet+sface)"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"models": ()}, "at least one model"),
        ({"ensemble": "mean"}, "unknown ensemble 'mean'"),
        ({"level": "max"}, "unknown level 'max'"),
        ({"strategy": "closest"}, "unknown strategy"),
        ({"max_rounds": 0}, "max rounds"),
        ({"canvas_cap": 0.5}, "canvas cap"),
        ({"step": 2.0}, "the step must be in"),
        ({"diversity": 0.5}, "diversity must be in"),
    ],
)
def test_settings_that_cannot_work_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(CloakSettingsError, match=message):
        CloakSettings(**changes)


def test_set_assignments_take_each_fields_type() -> None:
    assignments = ["momentum=0.8", "models=dlib-resnet,facenet-vggface2", "budget=3", "max_steps=7"]
    fields = overrides_from(assignments)
    assert fields == {
        "momentum": 0.8,
        "models": ("dlib-resnet", "facenet-vggface2"),
        "budget": 3.0,
        "max_steps": 7,
    }
    assert isinstance(fields["max_steps"], int)
    assert CloakSettings(**fields).momentum == 0.8


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("no_such_field=1", "not a setting"),
        ("level=high", "not a setting"),
        ("loop_settings=1", "not a setting"),
        ("max_steps=many", "'many' is not a whole number"),
        ("target=far", "'far' is not a number"),
        ("ensemble=both", "unknown ensemble 'both'"),
        ("max_rounds=0", "max rounds must be at least 1"),
    ],
)
def test_set_assignments_that_cannot_work_are_refused(assignment: str, message: str) -> None:
    with pytest.raises(CloakSettingsError, match=message):
        overrides_from([assignment], fixed=("level",))
