"""Folding a model's input convention in front of it: same outputs, differentiable preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.engine.conftest import make_model
from ulixes_onnx.engine.adapter import InputSpec, with_canonical_input
from ulixes_onnx.engine.session import create_session
from ulixes_onnx.errors import GraphError

HEIGHT, WIDTH = 3, 4


def native_model(layout: str, opset: int = 17):
    """A float64 stand-in network: a weighted sum of the image and of its squares per sample."""
    shape = [HEIGHT, WIDTH, 3] if layout == "NHWC" else [3, HEIGHT, WIDTH]
    weights = np.random.default_rng(5).standard_normal(shape)
    return make_model(
        [
            helper.make_node("Mul", ["img", "img"], ["sq"]),
            helper.make_node("Add", ["img", "sq"], ["mixed"]),
            helper.make_node("Mul", ["mixed", "w"], ["weighted"]),
            helper.make_node("Flatten", ["weighted"], ["y"]),
        ],
        {"img": ["N", *shape]},
        ["y"],
        initializers={"w": weights},
        opset=opset,
    )


def reference_preprocessing(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    v = x[:, ::-1] if spec.channel_order == "BGR" else x
    v = v * np.reshape(spec.scale, (1, 3, 1, 1)) + np.reshape(spec.offset, (1, 3, 1, 1))
    if spec.prewhiten:
        mean = v.mean(axis=(1, 2, 3), keepdims=True)
        std = v.std(axis=(1, 2, 3), keepdims=True)
        v = (v - mean) / np.maximum(std, 1 / np.sqrt(v[0].size))
    return v.transpose(0, 2, 3, 1) if spec.layout == "NHWC" else v


SPECS = [
    InputSpec("img"),
    InputSpec("img", scale=(127.5,) * 3, offset=(127.5,) * 3),
    InputSpec("img", layout="NHWC", channel_order="BGR", scale=(128.0, 127.0, 126.0),
              offset=(-1.0, 0.0, 2.5)),
    InputSpec("img", layout="NHWC", scale=(127.5,) * 3, offset=(127.5,) * 3, prewhiten=True),
    InputSpec("img", channel_order="BGR", prewhiten=True),
]  # fmt: skip


def canonical_chips(batch: int = 2) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (batch, 3, HEIGHT, WIDTH))


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("opset", [17, 18])
def test_adapted_model_equals_native_model_on_preprocessed_input(spec, opset):
    native = native_model(spec.layout, opset)
    adapted = with_canonical_input(native, spec)
    x = canonical_chips()
    (ours,) = create_session(adapted).run(["y"], {"x": x})
    (reference,) = create_session(native).run(["y"], {"img": reference_preprocessing(x, spec)})
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-9)
    assert [value.name for value in adapted.graph.input] == ["x"]


@pytest.mark.parametrize("spec", SPECS)
def test_preprocessing_is_differentiable(spec, assert_gradient_matches):
    adapted = with_canonical_input(native_model(spec.layout), spec)
    assert_gradient_matches(adapted, {"x": canonical_chips()}, "x")


def test_wrong_input_name_is_a_graph_error():
    with pytest.raises(GraphError, match="named 'pixels'"):
        with_canonical_input(native_model("NCHW"), InputSpec("pixels"))


def test_wrong_layout_is_a_graph_error():
    with pytest.raises(GraphError, match="3-channel image"):
        with_canonical_input(native_model("NCHW"), InputSpec("img", layout="NHWC"))
