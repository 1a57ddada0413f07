"""The perceptual polish's pure parts: keeping a distance, the floors, and a step within bounds."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ulixes_onnx.cloaking.loop import Boost, CanvasCloak, LoopSettings
from ulixes_onnx.cloaking.polish import _floor, _keeping, _random_view_noise, _unit

PRECONDITIONER = np.array([1.0, 0.2, 0.2], np.float32)


def test_a_direction_that_lowers_a_distance_is_turned_along_it() -> None:
    rng = np.random.default_rng(0)
    gradient = rng.normal(size=(6, 5, 3)).astype(np.float32)
    direction = -gradient + 0.3 * rng.normal(size=gradient.shape).astype(np.float32)
    assert np.vdot(direction, gradient) < 0
    kept = _keeping(direction, gradient, PRECONDITIONER)
    # to first order the distance no longer moves
    assert abs(np.vdot(kept, gradient)) < 1e-3 * np.linalg.norm(kept) * np.linalg.norm(gradient)
    # only the preconditioned gradient's direction was taken away
    removed = direction - kept
    along = gradient * PRECONDITIONER
    assert np.allclose(removed, along * (np.vdot(removed, along) / np.vdot(along, along)), atol=1e-4)


def test_a_direction_that_raises_a_distance_is_left_as_it_is() -> None:
    gradient = np.ones((2, 2, 3), np.float32)
    direction = np.full((2, 2, 3), 0.5, np.float32)
    assert _keeping(direction, gradient, PRECONDITIONER) is direction


def test_unit_scales_to_max_norm_one_and_leaves_zero() -> None:
    gradient = np.array([[[-4.0, 2.0, 1.0]]], np.float32)
    assert np.abs(_unit(gradient)).max() == pytest.approx(1.0)
    zero = np.zeros((1, 1, 3), np.float32)
    assert not _unit(zero).any()


def _result(distance: float) -> CanvasCloak:
    empty = np.zeros((1, 1, 3), np.float32)
    return CanvasCloak(empty, empty, 10, 0.0, {"m": "target-reached"}, {"m": distance})


@pytest.mark.parametrize(
    ("strategy", "reached", "boost", "expected"),
    [
        ("away", 0.85, 1.0, 0.8),  # past the target: the target is the floor
        ("away", 0.75, 1.0, 0.75),  # stopped short (slow progress): where it stopped
        ("away", 0.85, 1.1, 0.85),  # a raised target (later round)
        ("farthest", 0.9, 1.0, 0.9),  # no target of its own: where the loop left it
    ],
)
def test_a_polished_face_keeps_the_lesser_of_its_distance_and_its_target(strategy, reached, boost, expected):
    settings = LoopSettings(strategy=strategy, target=0.8)
    view = SimpleNamespace(model=SimpleNamespace(name="m"), settings=settings)
    assert _floor(view, _result(reached), Boost(target=boost)) == pytest.approx(expected)


def test_random_views_run_perturbed_copies_and_plain_views_the_plain_network() -> None:
    model = SimpleNamespace(name="m", noise_channels=(4, 2))
    noisy = SimpleNamespace(model=model, settings=LoopSettings(activation_noise=0.1))
    rngs = [np.random.default_rng(1), np.random.default_rng(2)]
    # two faces: the first with one plain view and one random, the second with two plain and one random
    factors = _random_view_noise(noisy, rngs, placed=[1, 2], counts=[2, 3])
    assert [layer.shape for layer in factors] == [(5, 4), (5, 2)]
    for layer in factors:
        assert np.all(layer[[0, 2, 3]] == 1)
        random_rows = layer[[1, 4]]
        assert np.all(np.abs(random_rows - 1) <= 0.1) and np.all(random_rows != 1)
    plain = SimpleNamespace(model=model, settings=LoopSettings())
    assert _random_view_noise(plain, rngs, placed=[1, 2], counts=[2, 3]) is None
