"""Finite-difference checks of the convolution, pooling and normalisation backward rules.

onnxruntime implements these operators in float32 only. They are linear in the input (or smooth at the
step's scale; max pooling has well-separated inputs), so a large step keeps rounding small.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.engine.conftest import make_model
from ulixes_onnx.engine.autodiff import add_input_gradient
from ulixes_onnx.engine.session import create_session


def images(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def distinct_values(shape, seed: int = 0) -> np.ndarray:
    """A permutation of values 0.05 apart, so that no window's maximum is within a step of a tie."""
    count = int(np.prod(shape))
    order = np.random.default_rng(seed).permutation(count)
    return (order * 0.05 - count * 0.025).reshape(shape).astype(np.float32)


CONV_CASES = [
    ({}, 4, 6, 1),
    ({"pads": [1, 1, 1, 1]}, 4, 6, 1),
    ({"pads": [0, 1, 2, 1], "strides": [2, 2]}, 4, 6, 1),
    ({"strides": [2, 3], "dilations": [1, 2]}, 4, 6, 1),
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, 4, 6, 1),
    ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, 4, 6, 1),
    ({"auto_pad": "VALID", "strides": [2, 1]}, 4, 6, 1),
    ({"pads": [1, 1, 1, 1], "group": 2}, 4, 6, 2),
    ({"pads": [1, 1, 1, 1], "group": 4, "strides": [2, 2]}, 4, 8, 4),  # depthwise
    ({"dilations": [2, 1], "pads": [2, 1, 2, 1]}, 4, 6, 1),
    # Strided 3x3 kernels on 16 input channels: the backward pass is a ConvTranspose (asserted below).
    ({"pads": [0, 1, 2, 1], "strides": [2, 2]}, 16, 6, 1),
    ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, 16, 6, 1),
    ({"strides": [2, 3], "dilations": [1, 2]}, 16, 6, 1),
]


@pytest.mark.parametrize(
    ("attributes", "kernel"),
    [
        ({"strides": [2, 2], "pads": [1, 2, 2, 1]}, [5, 5]),
        ({"strides": [2, 2], "pads": [3, 3, 3, 3]}, [7, 7]),  # a stem such as dlib's and ResNet's
        ({"strides": [2, 3]}, [4, 3]),
        ({"strides": [2, 2]}, [1, 1]),  # phases without taps
        ({"strides": [3, 1], "pads": [0, 1, 2, 0]}, [2, 3]),
        ({"pads": [3, 2, 1, 3]}, [2, 2]),  # pads beyond the kernel: the gradient is cropped
        ({"strides": [2, 1], "dilations": [1, 2], "pads": [2, 2, 2, 2]}, [5, 3]),
        ({"strides": [2, 2], "auto_pad": "SAME_UPPER"}, [4, 4]),
    ],
)
def test_conv_by_polyphase_convolution(attributes, kernel, assert_gradient_matches):
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], **attributes)],
        {"x": ["N", 3, 11, 10]},
        ["y"],
        initializers={"w": images((4, 3, *kernel), seed=1)},
        dtype=np.float32,
    )
    assert_gradient_matches(model, {"x": images((2, 3, 11, 10))}, "x")


@pytest.mark.parametrize(
    ("kernel", "channels", "group", "transposed"),
    [
        (7, 16, 1, False),  # 4 phases of 4x4 taps: 1.3x the work of the transposed convolution
        (3, 16, 1, True),  # 4 phases of 2x2 taps: 1.8x the work, onnxruntime's ConvTranspose wins
        (3, 16, 16, False),  # depthwise: ConvTranspose's GEMM per group loses whatever the work
        (3, 3, 1, False),  # few input channels (a first layer): ConvTranspose's col2im dominates
    ],
)
def test_strided_conv_backward_is_a_conv_unless_conv_transpose_is_faster(kernel, channels, group, transposed):
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2], group=group)],
        {"x": ["N", channels, 15, 15]},
        ["y"],
        initializers={"w": images((16, channels // group, kernel, kernel))},
        dtype=np.float32,
    )
    backward_ops = {node.op_type for node in add_input_gradient(model, "x", "y").graph.node}
    assert ("ConvTranspose" in backward_ops) == transposed


@pytest.mark.parametrize(("attributes", "channels", "filters", "group"), CONV_CASES)
@pytest.mark.parametrize("batch", [1, 2])
def test_conv(attributes, channels, filters, group, batch, assert_gradient_matches):
    weight = images((filters, channels // group, 3, 3), seed=1)
    model = make_model(
        [helper.make_node("Conv", ["x", "w", "bias"], ["y"], **attributes)],
        {"x": ["N", channels, 7, 8]},
        ["y"],
        initializers={"w": weight, "bias": images((filters,), seed=2)},
        dtype=np.float32,
    )
    assert_gradient_matches(model, {"x": images((batch, channels, 7, 8))}, "x")


@pytest.mark.parametrize(
    ("attributes", "channels", "filters", "group"), [case for case in CONV_CASES if case[1] >= 16]
)
def test_conv_backward_of_the_strided_16_channel_cases_is_a_conv_transpose(
    attributes, channels, filters, group
):
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], **attributes)],
        {"x": ["N", channels, 7, 8]},
        ["y"],
        initializers={"w": images((filters, channels // group, 3, 3), seed=1)},
        dtype=np.float32,
    )
    assert "ConvTranspose" in {node.op_type for node in add_input_gradient(model, "x", "y").graph.node}


@pytest.mark.parametrize("group", [1, 2])
def test_conv_with_a_computed_weight_is_a_conv_transpose(group, assert_gradient_matches):
    # A weight that is not a constant cannot be rearranged into phases when the graph is built.
    model = make_model(
        [
            helper.make_node("Identity", ["w_input"], ["w"]),
            helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1], group=group),
        ],
        {"x": ["N", 4, 7, 8], "w_input": [6, 4 // group, 3, 3]},
        ["y"],
        dtype=np.float32,
    )
    feeds = {"x": images((2, 4, 7, 8)), "w_input": images((6, 4 // group, 3, 3), seed=1)}
    assert_gradient_matches(model, feeds, "x")
    assert "ConvTranspose" in {node.op_type for node in add_input_gradient(model, "x", "y").graph.node}


def test_conv_1d(assert_gradient_matches):
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[2, 1], strides=[2])],
        {"x": ["N", 2, 9]},
        ["y"],
        initializers={"w": images((3, 2, 4), seed=1)},
        dtype=np.float32,
    )
    assert_gradient_matches(model, {"x": images((2, 2, 9))}, "x")


CONV_TRANSPOSE_CASES = [
    ({}, 1),
    ({"strides": [2, 2], "pads": [1, 0, 1, 1]}, 1),
    ({"strides": [2, 2], "output_padding": [1, 1]}, 1),
    ({"strides": [2, 1], "dilations": [2, 1], "group": 2}, 2),
]


@pytest.mark.parametrize(("attributes", "group"), CONV_TRANSPOSE_CASES)
def test_conv_transpose(attributes, group, assert_gradient_matches):
    model = make_model(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], **attributes)],
        {"x": ["N", 4, 4, 5]},
        ["y"],
        initializers={"w": images((4, 6 // group, 3, 3), seed=1)},
        dtype=np.float32,
    )
    assert_gradient_matches(model, {"x": images((2, 4, 4, 5))}, "x")


MAX_POOL_CASES = [
    {"kernel_shape": [2, 2], "strides": [2, 2]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
    {"kernel_shape": [3, 2], "strides": [1, 2], "dilations": [2, 1]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
    {"kernel_shape": [2, 2]},
]


@pytest.mark.parametrize("attributes", MAX_POOL_CASES)
@pytest.mark.parametrize("batch", [1, 2])
def test_max_pool(attributes, batch, assert_gradient_matches):
    model = make_model(
        [helper.make_node("MaxPool", ["x"], ["y"], **attributes)],
        {"x": ["N", 2, 7, 6]},
        ["y"],
        dtype=np.float32,
    )
    assert_gradient_matches(model, {"x": distinct_values((batch, 2, 7, 6))}, "x")


def test_max_pool_shares_a_tied_window_gradient_instead_of_copying_it():
    # Relu zeros make ties common; the gradient must not be counted once per tied element.

    model = make_model(
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
        {"x": [1, 1, 2, 4]},
        ["y"],
        dtype=np.float32,
    )
    grad_model = add_input_gradient(model, "x", "y", grad_name="dx")
    x = np.zeros((1, 1, 2, 4), np.float32)
    x[0, 0, 1, 3] = 1.0
    (dx,) = create_session(grad_model).run(["dx"], {"x": x})
    expected = np.array([[0.25, 0.25, 0, 0], [0.25, 0.25, 0, 1]], np.float32)
    np.testing.assert_array_equal(dx[0, 0], expected)


def test_max_pool_padding_is_never_a_maximum():
    # With every input negative, zero padding would win the border windows and swallow their gradient.

    model = make_model(
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
        {"x": [1, 1, 4, 4]},
        ["y"],
        dtype=np.float32,
    )
    grad_model = add_input_gradient(model, "x", "y", grad_name="dx")
    x = -1 - distinct_values((1, 1, 4, 4)) ** 2
    (dx,) = create_session(grad_model).run(["dx"], {"x": x})
    assert dx.sum() == 4  # one unit of gradient per output window, all of it on real inputs


AVERAGE_POOL_CASES = [
    {"kernel_shape": [2, 2], "strides": [2, 2]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 0},
    {"kernel_shape": [3, 2], "strides": [2, 2], "ceil_mode": 1},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 1, 1], "ceil_mode": 1},
    {"kernel_shape": [2, 3], "strides": [1, 1], "auto_pad": "SAME_LOWER"},
]


@pytest.mark.parametrize("attributes", AVERAGE_POOL_CASES)
@pytest.mark.parametrize("batch", [1, 2])
def test_average_pool(attributes, batch, assert_gradient_matches):
    model = make_model(
        [helper.make_node("AveragePool", ["x"], ["y"], **attributes)],
        {"x": ["N", 2, 7, 6]},
        ["y"],
        dtype=np.float32,
    )
    assert_gradient_matches(model, {"x": images((batch, 2, 7, 6))}, "x")


@pytest.mark.parametrize("op_type", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(1, 3, 4, 5), (2, 2, 3, 3)])
def test_global_pools(op_type, shape, assert_gradient_matches):
    model = make_model(
        [helper.make_node(op_type, ["x"], ["y"])],
        {"x": ["N", *shape[1:]]},
        ["y"],
        dtype=np.float32,
    )
    assert_gradient_matches(model, {"x": distinct_values(shape)}, "x")


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4, 2)])
def test_batch_normalization_in_inference_mode(shape, assert_gradient_matches):
    channels = shape[1]
    statistics = {
        "scale": images((channels,), 1),
        "bias": images((channels,), 2),
        "mean": images((channels,), 3),
        "var": np.abs(images((channels,), 4)) + 0.5,
    }
    model = make_model(
        [helper.make_node("BatchNormalization", ["x", *statistics], ["y"], epsilon=1e-3)],
        {"x": ["N", *shape[1:]]},
        ["y"],
        initializers=statistics,
        dtype=np.float32,
    )
    assert_gradient_matches(model, {"x": images(shape)}, "x")


@pytest.mark.parametrize(
    "attributes",
    [{"size": 3}, {"size": 5, "alpha": 0.5, "beta": 0.6, "bias": 2.0}, {"size": 1, "alpha": 0.3}],
)
def test_lrn(attributes, assert_gradient_matches):
    model = make_model(
        [helper.make_node("LRN", ["x"], ["y"], **attributes)],
        {"x": ["N", 5, 2, 3]},
        ["y"],
        dtype=np.float32,
    )
    assert_gradient_matches(model, {"x": images((2, 5, 2, 3))}, "x")
