"""The transfer matrix's rows: each cloak model alone, each ensemble mode, and excluding the judge."""

from __future__ import annotations

import pytest

from ulixes_onnx.errors import ModelError
from ulixes_onnx.evaluation.runner import EvaluationSettings, check_models, excluding, transfer_rows
from ulixes_onnx.settings import ENSEMBLES, CloakSettings


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
