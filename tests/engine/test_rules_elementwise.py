"""Finite-difference checks of the elementwise, activation and matrix-product backward rules (float64)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.engine.conftest import make_model
from ulixes_onnx.engine.autodiff import add_input_gradient
from ulixes_onnx.engine.session import create_session


def away_from_kinks(shape, seed: int = 0) -> np.ndarray:
    """Values in ±(0.05..1.95) that keep a finite-difference step away from 0 and from multiples of
    0.1, where Relu, Abs, Clip and friends have kinks; the jitter makes ties between inputs unlikely."""
    rng = np.random.default_rng(seed)
    grid = (rng.integers(-20, 20, size=shape) + 0.5) * 0.1
    return grid + rng.uniform(-0.02, 0.02, size=shape)


def positive(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.5, 2.0, size=shape)


UNARY_CASES = [
    ("Relu", {}, away_from_kinks),
    ("LeakyRelu", {"alpha": 0.2}, away_from_kinks),
    ("Sigmoid", {}, away_from_kinks),
    ("Tanh", {}, away_from_kinks),
    ("Neg", {}, away_from_kinks),
    ("Abs", {}, away_from_kinks),
    ("Exp", {}, away_from_kinks),
    ("Sqrt", {}, positive),
    ("Log", {}, positive),
    ("Reciprocal", {}, positive),
    ("Softmax", {"axis": 1}, away_from_kinks),
    ("Softmax", {"axis": -1}, away_from_kinks),
    ("LogSoftmax", {"axis": -1}, away_from_kinks),
    ("Identity", {}, away_from_kinks),
    ("Dropout", {}, away_from_kinks),
    ("Cast", {"to": helper.np_dtype_to_tensor_dtype(np.dtype(np.float64))}, away_from_kinks),
    ("LpNormalization", {"axis": 1, "p": 2}, away_from_kinks),
    ("LpNormalization", {"axis": -1, "p": 1}, away_from_kinks),
]


@pytest.mark.parametrize(("op_type", "attributes", "values"), UNARY_CASES)
@pytest.mark.parametrize("shape", [(1, 3), (2, 3, 4)])
def test_unary_rule(op_type, attributes, values, shape, assert_gradient_matches):
    model = make_model(
        [helper.make_node(op_type, ["x"], ["y"], **attributes)], {"x": ["N", *shape[1:]]}, ["y"]
    )
    assert_gradient_matches(model, {"x": values(shape)}, "x")


BROADCAST_SHAPES = [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)), ((1,), (2, 3))]


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"])
@pytest.mark.parametrize(("shape_a", "shape_b"), BROADCAST_SHAPES)
@pytest.mark.parametrize("wrt", ["a", "b"])
def test_binary_rule_with_broadcasting(op_type, shape_a, shape_b, wrt, assert_gradient_matches):
    model = make_model([helper.make_node(op_type, ["a", "b"], ["y"])], {"a": shape_a, "b": shape_b}, ["y"])
    make_values = positive if op_type in ("Div", "Pow") else away_from_kinks
    feeds = {"a": make_values(shape_a, seed=1), "b": make_values(shape_b, seed=2)}
    assert_gradient_matches(model, feeds, wrt)


def test_mul_of_a_tensor_by_itself(assert_gradient_matches):
    model = make_model([helper.make_node("Mul", ["x", "x"], ["y"])], {"x": [2, 3]}, ["y"])
    assert_gradient_matches(model, {"x": away_from_kinks((2, 3))}, "x")


@pytest.mark.parametrize("exponent", [2.0, 0.5, 3])
def test_pow_with_constant_exponent(exponent, assert_gradient_matches):
    value = np.array(exponent, dtype=np.int64 if isinstance(exponent, int) else np.float64)
    model = make_model(
        [helper.make_node("Pow", ["x", "p"], ["y"])], {"x": [2, 3]}, ["y"], initializers={"p": value}
    )
    assert_gradient_matches(model, {"x": positive((2, 3))}, "x")


@pytest.mark.parametrize("wrt", ["a", "b", "c"])
def test_sum_of_three_broadcast_inputs(wrt, assert_gradient_matches):
    model = make_model(
        [helper.make_node("Sum", ["a", "b", "c"], ["y"])], {"a": [2, 3], "b": [3], "c": [2, 1]}, ["y"]
    )
    feeds = {"a": positive((2, 3)), "b": positive((3,), 1), "c": positive((2, 1), 2)}
    assert_gradient_matches(model, feeds, wrt)


@pytest.mark.parametrize("wrt", ["a", "b"])
def test_where_routes_the_gradient_by_condition(wrt, assert_gradient_matches):
    condition = np.random.default_rng(3).random((2, 3, 4)) > 0.5
    model = make_model(
        [helper.make_node("Where", ["c", "a", "b"], ["y"])],
        {"a": [2, 3, 4], "b": [3, 1]},
        ["y"],
        initializers={"c": condition},
    )
    assert_gradient_matches(model, {"a": positive((2, 3, 4)), "b": positive((3, 1), 1)}, wrt)


@pytest.mark.parametrize(("low", "high"), [(-0.6, 0.6), (0.0, 6.0), (None, 0.3), (-0.3, None), (None, None)])
def test_clip_passes_the_gradient_inside_the_bounds_only(low, high, assert_gradient_matches):
    inputs = ["x", "" if low is None else "low", "" if high is None else "high"]
    while inputs[-1] == "":
        inputs.pop()
    bounds = {"low": np.array(low or 0.0), "high": np.array(high or 0.0)}
    model = make_model(
        [helper.make_node("Clip", inputs, ["y"])],
        {"x": ["N", 4]},
        ["y"],
        initializers={name: bounds[name] for name in inputs[1:] if name},
    )
    assert_gradient_matches(model, {"x": away_from_kinks((3, 4))}, "x")


def test_clip_backward_does_not_read_the_clip_input():
    # onnxruntime fuses a Clip into the convolution before it only when nothing else reads the
    # convolution's output, so the mask is taken from the Clip's output.
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["z"]), helper.make_node("Clip", ["z", "low", "high"], ["y"])],
        {"x": ["N", 2, 4, 4]},
        ["y"],
        initializers={"w": np.ones((2, 2, 1, 1)), "low": np.array(0.0), "high": np.array(6.0)},
    )
    graph = add_input_gradient(model, "x", "y").graph
    assert [node.op_type for node in graph.node if "z" in node.input] == ["Clip"]


def test_clip_gradient_is_zero_on_and_beyond_the_bounds():
    model = make_model(
        [helper.make_node("Clip", ["x", "low", "high"], ["y"])],
        {"x": [5]},
        ["y"],
        initializers={"low": np.array(0.0), "high": np.array(6.0)},
    )
    x = np.array([-1.0, 0.0, 0.5, 6.0, 7.0])
    (dx,) = create_session(add_input_gradient(model, "x", "y", grad_name="dx")).run(["dx"], {"x": x})
    np.testing.assert_array_equal(dx, [0.0, 0.0, 1.0, 0.0, 0.0])


def test_prelu_with_per_channel_slopes(assert_gradient_matches):
    slopes = np.array([0.1, 0.25, 0.5]).reshape(3, 1, 1)
    model = make_model(
        [helper.make_node("PRelu", ["x", "slope"], ["y"])],
        {"x": ["N", 3, 2, 2]},
        ["y"],
        initializers={"slope": slopes},
    )
    assert_gradient_matches(model, {"x": away_from_kinks((2, 3, 2, 2))}, "x")


GEMM_ATTRIBUTES = [
    {},
    {"transA": 1},
    {"transB": 1},
    {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0},
]


@pytest.mark.parametrize("attributes", GEMM_ATTRIBUTES)
@pytest.mark.parametrize("wrt", ["a", "b", "c"])
def test_gemm(attributes, wrt, assert_gradient_matches):
    shape_a = (4, 2) if attributes.get("transA") else (2, 4)
    shape_b = (3, 4) if attributes.get("transB") else (4, 3)
    model = make_model(
        [helper.make_node("Gemm", ["a", "b", "c"], ["y"], **attributes)],
        {"a": shape_a, "b": shape_b, "c": [3]},
        ["y"],
    )
    feeds = {"a": positive(shape_a), "b": positive(shape_b, 1), "c": positive((3,), 2)}
    assert_gradient_matches(model, feeds, wrt)


MATMUL_SHAPES = [
    ((2, 3), (3, 4)),
    ((5, 2, 3), (3, 4)),
    ((3,), (3, 4)),
    ((2, 3), (3,)),
    ((3,), (3,)),
    ((2, 1, 3, 4), (5, 4, 2)),
    ((3,), (2, 3, 4)),
]


@pytest.mark.parametrize(("shape_a", "shape_b"), MATMUL_SHAPES)
@pytest.mark.parametrize("wrt", ["a", "b"])
def test_matmul(shape_a, shape_b, wrt, assert_gradient_matches):
    model = make_model([helper.make_node("MatMul", ["a", "b"], ["y"])], {"a": shape_a, "b": shape_b}, ["y"])
    feeds = {"a": positive(shape_a), "b": positive(shape_b, 1)}
    assert_gradient_matches(model, feeds, wrt)
