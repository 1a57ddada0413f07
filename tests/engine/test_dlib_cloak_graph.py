"""The cloak graph of the real dlib ResNet-29 on a real face chip (skimage's astronaut)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.dlib_reference import dlib_chips
from tests.engine.test_cloak_graph import OUTPUTS, directional_errors
from ulixes_onnx.cards import get_card
from ulixes_onnx.engine.adapter import InputSpec, with_canonical_input
from ulixes_onnx.engine.cloak_graph import build_cloak_graph
from ulixes_onnx.engine.session import create_session, default_domain_only
from ulixes_onnx.store import ModelStore
from ulixes_onnx.zoo.dlib_resnet import INPUT_NAME, OUTPUT_NAME, build_dlib_resnet

DLIB_INPUT = InputSpec(INPUT_NAME, scale=(127.5,) * 3, offset=(127.5,) * 3)


@pytest.fixture(scope="module")
def dlib_model() -> onnx.ModelProto:
    (weights,) = ModelStore().source_paths(get_card("dlib-resnet")).values()
    return build_dlib_resnet(weights.read_bytes())


@pytest.fixture(scope="module")
def chip(astronaut) -> np.ndarray:
    rgb = dlib_chips(astronaut)[0]
    return rgb.transpose(2, 0, 1)[None].astype(np.float32)  # [1, 3, 150, 150] in 0..255


@pytest.fixture(scope="module")
def cloak_graph(dlib_model) -> onnx.ModelProto:
    return build_cloak_graph(with_canonical_input(dlib_model, DLIB_INPUT))


def test_dlib_cloak_graph_matches_the_model_and_finite_differences(dlib_model, cloak_graph, chip):
    assert default_domain_only(cloak_graph)
    session = create_session(cloak_graph)
    x = chip / 127.5 - 1
    (plain,) = create_session(dlib_model).run([OUTPUT_NAME], {INPUT_NAME: chip})
    feeds = {
        "x": x,
        "e_pos": plain,
        "e_neg": np.zeros_like(plain),
        "margin": np.float32([100.0]),
        "neg_weight": np.float32([0.0]),
    }
    loss, grad, emb, d_pos, _ = session.run(OUTPUTS, feeds)
    np.testing.assert_allclose(emb, plain, atol=1e-5)
    np.testing.assert_allclose(loss, 100 - d_pos)
    # At the original chip the distance is at its minimum: the safe gradient is 0, not NaN.
    assert np.all(np.isfinite(grad))
    # Away from the minimum (a cloaking step later), the gradient matches finite differences.
    feeds["e_pos"] = plain + np.random.default_rng(0).normal(0, 0.02, plain.shape).astype(np.float32)
    errors = directional_errors(session, feeds, step=1e-3)
    assert max(errors) < 1e-2, errors


def test_weights_are_stored_at_most_twice(dlib_model, cloak_graph):
    # Every convolution keeps its weight and gets one copy for its backward pass: flipped for stride 1,
    # split into stride phases for strided ones (zero-padded sub-kernels, at most 1.8x as large).
    forward_bytes = sum(len(t.raw_data) for t in dlib_model.graph.initializer)
    cloak_bytes = sum(len(t.raw_data) for t in cloak_graph.graph.initializer)
    assert cloak_bytes < 2 * forward_bytes
