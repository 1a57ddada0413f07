"""The reverse-mode walk: fan-out, pruning, errors, opset upgrade and the dynamic batch dimension."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import helper

from tests.engine.conftest import make_model
from ulixes_onnx.engine.autodiff import MIN_OPSET, add_input_gradient
from ulixes_onnx.engine.session import create_session
from ulixes_onnx.errors import GraphError


def values(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.5, 2.0, shape)


def test_fan_out_gradients_are_summed(assert_gradient_matches):
    # x feeds three consumers; y = exp(x) * x + sqrt(x)
    model = make_model(
        [
            helper.make_node("Exp", ["x"], ["e"]),
            helper.make_node("Mul", ["e", "x"], ["p"]),
            helper.make_node("Sqrt", ["x"], ["r"]),
            helper.make_node("Add", ["p", "r"], ["y"]),
        ],
        {"x": ["N", 3]},
        ["y"],
    )
    assert_gradient_matches(model, {"x": values((2, 3))}, "x")


def _exponential_and_relu() -> onnx.ModelProto:
    # y = relu(x) + 2 * exp(x)
    return make_model(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Exp", ["x"], ["s"]),
            helper.make_node("Add", ["s", "s"], ["t"]),
            helper.make_node("Add", ["r", "t"], ["y"]),
        ],
        {"x": ["N", 3]},
        ["y"],
        initializers={"half": np.array([0.5]), "linear": np.array([1.0])},
    )


def test_scaled_and_linearised_gradients_change_only_the_chosen_paths():
    model = _exponential_and_relu()
    x = np.array([[-1.0, 0.5, 2.0]])
    chosen = add_input_gradient(
        model, "x", "y", scaled_gradients={("t", 1): "half"}, linearised={"r": "linear"}
    )
    (grad,) = create_session(chosen, threads=1).run(["x_grad"], {"x": x})
    # relu taken for the identity on the way back; one of the two exponential terms halved
    np.testing.assert_allclose(grad, 1.0 + 1.5 * np.exp(x))


def test_a_chosen_path_the_gradient_does_not_take_is_an_error():
    with pytest.raises(GraphError, match=r"no gradient flows through \[\('nowhere', 0\)\]"):
        add_input_gradient(_exponential_and_relu(), "x", "y", scaled_gradients={("nowhere", 0): "half"})
    with pytest.raises(GraphError, match=r"no gradient flows through \['nowhere'\]"):
        add_input_gradient(_exponential_and_relu(), "x", "y", linearised={"nowhere": "linear"})


def test_unbroadcast_sums_over_broadcast_and_leading_axes():
    model = make_model(
        [helper.make_node("Mul", ["x", "w"], ["y"])],
        {"x": [3, 1], "w": [2, 3, 4]},
        ["y"],
    )
    grad_model = add_input_gradient(model, "x", "y", grad_name="dx")
    w = values((2, 3, 4))
    (dx,) = create_session(grad_model).run(["dx"], {"x": values((3, 1)), "w": w})
    np.testing.assert_allclose(dx, w.sum(axis=(0, 2)).reshape(3, 1))


def test_branches_that_do_not_reach_the_input_get_no_backward_nodes():
    model = make_model(
        [
            helper.make_node("Exp", ["w"], ["ew"]),  # weight-only branch: no gradient needed
            helper.make_node("Mul", ["x", "ew"], ["t"]),
            helper.make_node("Tanh", ["x"], ["unused"]),  # does not reach y: pruned
            helper.make_node("Sigmoid", ["t"], ["y"]),
        ],
        {"x": [2]},
        ["y"],
        initializers={"w": np.array([0.5, 1.5])},
    )
    grad_model = add_input_gradient(model, "x", "y", grad_name="dx")
    op_types = [node.op_type for node in grad_model.graph.node]
    assert "Tanh" not in op_types
    assert op_types.count("Exp") == 1
    assert [o.name for o in grad_model.graph.output] == ["y", "dx"]


def test_operator_without_a_rule_is_an_error_naming_it():
    model = make_model([helper.make_node("Erf", ["x"], ["y"], name="the_erf")], {"x": [2]}, ["y"])
    with pytest.raises(GraphError, match=r"no backward rule for ONNX operator Erf.*the_erf"):
        add_input_gradient(model, "x", "y")


def test_operator_without_a_rule_off_the_path_is_fine():
    model = make_model(
        [
            helper.make_node("Erf", ["w"], ["ew"]),
            helper.make_node("Mul", ["x", "ew"], ["y"]),
        ],
        {"x": [2]},
        ["y"],
        initializers={"w": np.array([0.5, 1.5], np.float32)},
        dtype=np.float32,  # onnxruntime has no float64 Erf
    )
    gradient = add_input_gradient(model, "x", "y", grad_name="dx", cotangent_name="dy")
    cotangent = np.array([2.0, -1.0], np.float32)
    feeds = {"x": np.ones(2, np.float32), "dy": cotangent}
    (dx,) = create_session(gradient, threads=1).run(["dx"], feeds)
    np.testing.assert_allclose(dx, cotangent * [math.erf(0.5), math.erf(1.5)], rtol=1e-5)


def test_non_default_domain_operator_is_an_error():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": [2]}, ["y"])
    model.graph.node[0].domain = "com.microsoft"
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(GraphError, match=r"com\.microsoft:Relu"):
        add_input_gradient(model, "x", "y")


def test_gradient_through_non_differentiable_ops_only_is_an_error():
    model = make_model(
        [helper.make_node("Sign", ["x"], ["s"]), helper.make_node("Mul", ["s", "w"], ["y"])],
        {"x": [2]},
        ["y"],
        initializers={"w": np.array([1.0, 2.0])},
    )
    with pytest.raises(GraphError, match="does not depend"):
        add_input_gradient(model, "x", "y")


@pytest.mark.parametrize(("wrt", "of"), [("nope", "y"), ("x", "nope")])
def test_unknown_names_are_errors(wrt, of):
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": [2]}, ["y"])
    with pytest.raises(GraphError, match="nope"):
        add_input_gradient(model, wrt, of)


def test_shape_computations_are_not_differentiated(assert_gradient_matches):
    # Reshape to a shape computed from x itself: the Shape branch carries no gradient.
    model = make_model(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Reshape", ["x", "s"], ["r"]),
            helper.make_node("Mul", ["r", "r"], ["y"]),
        ],
        {"x": ["N", 3]},
        ["y"],
    )
    assert_gradient_matches(model, {"x": values((2, 3))}, "x")


def test_old_opset_model_is_upgraded(assert_gradient_matches):
    # Clip with min/max attributes exists only before opset 11.
    model = make_model(
        [helper.make_node("Clip", ["x"], ["y"], min=-0.5, max=0.5)],
        {"x": [2, 3]},
        ["y"],
        dtype=np.float32,
        opset=9,
    )
    grad_model = add_input_gradient(model, "x", "y")
    assert grad_model.opset_import[0].version == MIN_OPSET
    x = np.array([[-1.0, -0.2, 0.3], [0.9, 0.1, -0.7]], np.float32)
    assert_gradient_matches(model, {"x": x}, "x")


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_batch_dimension_stays_dynamic(batch):
    model = make_model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], {"x": ["N", 4]}, ["y"])
    grad_model = add_input_gradient(model, "x", "y", grad_name="dx")
    assert grad_model.graph.output[-1].type.tensor_type.shape.dim[0].dim_param == "N"
    (dx,) = create_session(grad_model).run(["dx"], {"x": values((batch, 4))})
    # Softmax outputs sum to 1, so the gradient of their sum is zero.
    np.testing.assert_allclose(dx, np.zeros((batch, 4)), atol=1e-12)


def test_input_gradient_keeps_the_model_valid():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": ["N", 2]}, ["y"])
    onnx.checker.check_model(add_input_gradient(model, "x", "y"), full_check=True)


def test_gradients_are_declared_with_their_forward_tensors_shapes():
    # Back through Flatten, shape inference loses the batch dimension's name; the declaration keeps it.
    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Flatten", ["r"], ["f"]),
            helper.make_node("ReduceSum", ["f"], ["y"], keepdims=0),
        ],
        {"x": ["N", 2, 3, 3]},
        ["y"],
    )
    grad_model = add_input_gradient(model, "x", "y")
    onnx.checker.check_model(grad_model, full_check=True)
    declared = {value.name: value for value in grad_model.graph.value_info}
    relu = next(node for node in grad_model.graph.node if node.op_type == "Mul")  # Relu's backward
    gradient_of_r = relu.input[0]
    dims = declared[gradient_of_r].type.tensor_type.shape.dim
    assert [dim.dim_param or dim.dim_value for dim in dims] == ["N", 2, 3, 3]
    # Only tensors still in the graph are declared.
    produced = {name for node in grad_model.graph.node for name in node.output}
    assert set(declared) <= produced | {value.name for value in grad_model.graph.input}
