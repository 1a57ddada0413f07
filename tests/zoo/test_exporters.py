"""Exporters for weights users download themselves, each on random weights of the identical architecture.

The random weights are written in the export toolchain in the same file format as the real release
(Keras 2 .h5 from tf-keras models built as keras-vggface and deepface build them; a facenet-pytorch
state dict), then go through the same builder as the real files. The conversion compares ONNX with the
source framework on face chips (ONNX vs tf-keras, or vs torch) and the engine differentiates the result.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.zoo.conftest import gradient_check_errors
from ulixes_onnx.cards import get_card
from ulixes_onnx.errors import ModelError
from ulixes_onnx.zoo.conversion import FIDELITY_TOLERANCE, convert
from ulixes_onnx.zoo.toolchain import run_export_script

# Slow: builds and converts networks in the export toolchain.
pytestmark = pytest.mark.slow

# model card -> (the script that writes random weights of its architecture, its job)
KERAS_WEIGHTS = str(Path(__file__).with_name("random_keras_weights.py"))
TORCH_WEIGHTS = str(Path(__file__).with_name("random_state_dict.py"))
RANDOM_WEIGHTS = {
    "vggface-vgg16": (KERAS_WEIGHTS, {"architecture": "vggface-vgg16"}),
    "vggface-resnet50": (KERAS_WEIGHTS, {"architecture": "vggface-resnet50"}),
    "deepface": (KERAS_WEIGHTS, {"architecture": "deepface"}),
    "facenet-pytorch-vggface2": (TORCH_WEIGHTS, {"classes": 8631}),
}


@pytest.fixture(scope="module", params=sorted(RANDOM_WEIGHTS))
def exported(request, export_python, tmp_path_factory):
    name = request.param
    card = get_card(name)
    script, job = RANDOM_WEIGHTS[name]
    (role,) = card.source.files
    weights = tmp_path_factory.mktemp(name) / card.source.files[role]
    run_export_script(script, {**job, "output": str(weights), "seed": 7}, python=export_python)
    return card, convert(card, {role: weights}, python=export_python)


def test_onnx_matches_the_source_framework(exported):
    card, result = exported
    print(
        f"{card.name}: max |ONNX - source| = {result.max_abs_difference:.2e}, scale {result.output_scale:.3g}"
    )
    assert result.output_scale > 0.1  # random weights that give near-zero outputs would prove nothing
    assert result.model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == card.embedding.size
    # convert() itself fails above FIDELITY_TOLERANCE relative to the output's scale.
    assert result.max_abs_difference < FIDELITY_TOLERANCE * max(1.0, result.output_scale)


def test_cloak_graph_gradient_matches_finite_differences(exported):
    card, result = exported
    errors = gradient_check_errors(result.model, card)
    assert max(errors) < 1e-2, errors


def test_a_whole_keras_model_with_another_lambda_is_refused(export_python, tmp_path):
    # facenet-keras loads a whole saved model; its Lambda layers are rebuilt as the residual scaling,
    # never by running the file's stored code, so any other Lambda must stop the build.
    card = get_card("facenet-keras")
    (role,) = card.source.files
    model_file = tmp_path / "foreign.h5"
    run_export_script(
        KERAS_WEIGHTS, {"architecture": "foreign-lambda", "output": str(model_file)}, python=export_python
    )
    with pytest.raises(ModelError, match="Lambda other than keras-facenet's residual scaling"):
        convert(card, {role: model_file}, python=export_python)
