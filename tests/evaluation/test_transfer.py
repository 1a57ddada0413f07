"""The transfer matrix's rows: each cloak model alone, each ensemble mode, excluding the judge, and
leave-one-out (each judge against the ensemble of the others)."""

from __future__ import annotations

import pytest

from ulixes_onnx.cloaking.settings import ENSEMBLES, CloakSettings
from ulixes_onnx.errors import ModelError
from ulixes_onnx.evaluation.report import render_markdown
from ulixes_onnx.evaluation.runner import (
    EvaluationSettings,
    check_models,
    excluding,
    leave_one_out_rows,
    transfer_rows,
)


def test_one_cloak_model_is_one_row() -> None:
    assert transfer_rows(CloakSettings(models=("dlib-resnet",))) == [CloakSettings(models=("dlib-resnet",))]


def test_several_cloak_models_give_each_alone_then_every_ensemble_mode() -> None:
    cloak = CloakSettings(models=("dlib-resnet", "faceres"), strategy="self")
    rows = transfer_rows(cloak)
    assert [row.label for row in rows] == [
        "dlib-resnet",
        "faceres",
        *(f"{mode}(dlib-resnet+faceres)" for mode in ENSEMBLES),
    ]
    assert all(row.strategy == "self" for row in rows)


def test_excluding_the_evaluated_model_from_an_ensemble() -> None:
    ensemble = CloakSettings(models=("dlib-resnet", "faceres", "facenet-vggface2"), ensemble="sum")
    assert excluding(ensemble, "faceres").models == ("dlib-resnet", "facenet-vggface2")
    assert excluding(ensemble, "faceres").ensemble == "sum"
    assert excluding(CloakSettings(models=("faceres",)), "faceres") is None


def test_models_are_checked_before_any_work() -> None:
    with pytest.raises(ModelError, match="nosuchnet"):
        check_models(EvaluationSettings(models=("nosuchnet",)))
    with pytest.raises(ModelError, match="not a face-embedding model"):
        check_models(EvaluationSettings(cloak=CloakSettings(models=("mtcnn",))))


def test_leave_one_out_cloaks_each_judge_with_all_the_others() -> None:
    judges = ("dlib-resnet", "facenet-vggface2", "faceres")
    rows = leave_one_out_rows(CloakSettings(ensemble="joint", diversity=0.1), judges)
    assert {judge: row.models for judge, row in rows.items()} == {
        "dlib-resnet": ("facenet-vggface2", "faceres"),
        "facenet-vggface2": ("dlib-resnet", "faceres"),
        "faceres": ("dlib-resnet", "facenet-vggface2"),
    }
    assert all(row.ensemble == "joint" and row.diversity == 0.1 for row in rows.values())
    with pytest.raises(ModelError, match="at least two evaluation models"):
        leave_one_out_rows(CloakSettings(), ("dlib-resnet",))


def test_the_leave_one_out_report_has_a_row_per_held_out_model() -> None:
    def verification(tp_rate: float, accuracy: float) -> dict:
        at = {"tp_rate": tp_rate, "fp_rate": 0.01, "accuracy": accuracy}
        return {"at_threshold": at, "best_threshold": {**at, "accuracy": accuracy + 0.1}}

    section = {
        "cloaked_with": "joint(dlib-resnet+faceres)",
        "clean": verification(0.95, 0.97),
        "cloaked": verification(0.40, 0.70),
        "same_pair_distance": {"cloaked": {"mean": 1.2}},
        "face_ssimulacra2": {"mean": 71.5, "min": 64.25},
    }
    document = {
        "dataset": {"root": "/data", "photos": 10, "pairs_same": 5, "pairs_different": 5},
        "protocols": {"leave_one_out": "each judge against the others"},
        "leave_one_out": {"facenet-vggface2": section},
        "timing": {"total_seconds": 12.0, "cloaking_seconds": 10.0},
    }
    markdown = render_markdown(document)
    assert "| facenet-vggface2 | joint(dlib-resnet+faceres) | 95.0% -> 40.0% |" in markdown
    assert "80.0%" in markdown and "71.5 / 64.2" in markdown
