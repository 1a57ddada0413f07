"""Finite-difference checks of the data-movement and reduction backward rules (float64)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.engine.conftest import make_model


def values(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def ints(*items: int) -> np.ndarray:
    return np.array(items, dtype=np.int64)


SINGLE_INPUT_CASES = [
    ("Reshape", {}, {"shape": ints(0, -1)}, (2, 3, 4)),
    ("Reshape", {}, {"shape": ints(4, 3, 2)}, (2, 3, 4)),
    ("Flatten", {"axis": 1}, {}, (2, 3, 2, 2)),
    ("Flatten", {"axis": 2}, {}, (2, 3, 2, 2)),
    ("Transpose", {"perm": [0, 2, 3, 1]}, {}, (2, 3, 2, 4)),
    ("Transpose", {}, {}, (2, 3, 4)),
    ("Squeeze", {}, {"axes": ints(1, 3)}, (2, 1, 3, 1)),
    ("Unsqueeze", {}, {"axes": ints(0, -1)}, (2, 3)),
    ("Expand", {}, {"shape": ints(2, 3, 4)}, (3, 1)),
    ("Expand", {}, {"shape": ints(2, 1, 1)}, (1, 4)),
    ("Split", {"axis": 1}, {"split": ints(1, 3)}, (2, 4, 2)),
    ("Pad", {}, {"pads": ints(0, 1, 0, 2, 0, 0, 2, 1)}, (2, 3, 2, 2)),
    ("Pad", {}, {"pads": ints(0, -1, 1, 0, 1, -1)}, (2, 3, 4)),
    ("Slice", {}, {"starts": ints(1), "ends": ints(3), "axes": ints(1)}, (2, 4, 3)),
    ("Slice", {}, {"starts": ints(-1), "ends": ints(-100), "axes": ints(1), "steps": ints(-1)},
     (2, 3, 2)),
    ("Slice", {}, {"starts": ints(0, 5), "ends": ints(100, 0), "axes": ints(2, 1),
                   "steps": ints(2, -2)}, (2, 6, 5)),
    ("Slice", {}, {"starts": ints(1, 0), "ends": ints(9223372036854775807, 3)}, (3, 4)),
    ("Slice", {}, {"starts": ints(0, 1), "ends": ints(100, 100), "axes": ints(1, 2),
                   "steps": ints(2, 3)}, (2, 5, 7)),
    ("ReduceSum", {"keepdims": 0}, {"axes": ints(1)}, (2, 3, 4)),
    ("ReduceSum", {"keepdims": 1}, {"axes": ints(-1, 0)}, (2, 3, 4)),
    ("ReduceSum", {"keepdims": 0}, {}, (2, 3)),
    ("ReduceMean", {"keepdims": 0, "axes": [1, 2]}, {}, (2, 3, 4)),
    ("ReduceMean", {"keepdims": 1}, {}, (2, 3)),
    ("ReduceL2", {"keepdims": 0, "axes": [1]}, {}, (2, 3, 4)),
    ("ReduceL2", {"keepdims": 1}, {}, (2, 3)),
    ("ReduceSumSquare", {"keepdims": 0, "axes": [-1]}, {}, (2, 3)),
    ("ReduceMax", {"keepdims": 0, "axes": [1]}, {}, (2, 3, 4)),
    ("ReduceMax", {"keepdims": 1, "axes": [0, 2]}, {}, (2, 3, 4)),
    ("ReduceMin", {"keepdims": 1}, {}, (2, 3)),
]  # fmt: skip


@pytest.mark.parametrize(("op_type", "attributes", "constants", "shape"), SINGLE_INPUT_CASES)
def test_single_input_rule(op_type, attributes, constants, shape, assert_gradient_matches):
    outputs = ["y", "rest"] if op_type == "Split" else ["y"]
    model = make_model(
        [helper.make_node(op_type, ["x", *constants], outputs, **attributes)],
        {"x": shape},
        ["y"],
        initializers=constants,
    )
    assert_gradient_matches(model, {"x": values(shape)}, "x")


@pytest.mark.parametrize("used", [[0, 1, 2], [1], [0, 2]])
def test_split_with_unused_outputs(used, assert_gradient_matches):
    outputs = ["p0", "p1", "p2"]
    model = make_model(
        [
            helper.make_node("Split", ["x"], outputs, axis=-1, num_outputs=3),
            helper.make_node("Concat", [outputs[i] for i in used], ["y"], axis=0),
        ],
        {"x": [2, 6]},
        ["y"],
        opset=18,
    )
    assert_gradient_matches(model, {"x": values((2, 6))}, "x")


@pytest.mark.parametrize("wrt", ["a", "b"])
def test_concat(wrt, assert_gradient_matches):
    model = make_model(
        [helper.make_node("Concat", ["a", "b", "a"], ["y"], axis=1)],
        {"a": ["N", 2, 3], "b": ["N", 1, 3]},
        ["y"],
    )
    assert_gradient_matches(model, {"a": values((2, 2, 3)), "b": values((2, 1, 3), 1)}, wrt)


@pytest.mark.parametrize("op_type", ["ReduceSum", "ReduceMean", "ReduceL2", "ReduceMax"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduction_with_axes_as_input_at_opset_18(op_type, keepdims, assert_gradient_matches):
    model = make_model(
        [helper.make_node(op_type, ["x", "axes"], ["y"], keepdims=keepdims)],
        {"x": ["N", 3, 4]},
        ["y"],
        initializers={"axes": ints(1, 2)},
        opset=18,
    )
    assert_gradient_matches(model, {"x": values((2, 3, 4))}, "x")


def test_pad_with_axes_input_at_opset_18(assert_gradient_matches):
    model = make_model(
        [helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"])],
        {"x": ["N", 3, 4]},
        ["y"],
        initializers={"pads": ints(1, -1, 2, 1), "axes": ints(2, 1)},
        opset=18,
    )
    assert_gradient_matches(model, {"x": values((2, 3, 4))}, "x")


def test_reduce_l2_gradient_is_zero_not_nan_at_the_origin():
    from ulixes_onnx.engine.autodiff import add_input_gradient
    from ulixes_onnx.engine.session import create_session

    model = make_model(
        [helper.make_node("ReduceL2", ["x"], ["y"], axes=[1], keepdims=0)], {"x": [2, 3]}, ["y"]
    )
    grad_model = add_input_gradient(model, "x", "y", grad_name="dx")
    x = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 4.0]])
    (dx,) = create_session(grad_model).run(["dx"], {"x": x})
    np.testing.assert_allclose(dx, [[0.0, 0.0, 0.0], [0.6, 0.0, 0.8]])
