"""Clamps spelled with Min and Max fold into Clip, PRelus of images become x times their local slope and
other PRelus split into plain operators, with the same values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from tests.engine.conftest import make_model, run
from ulixes_onnx.engine import add_input_gradient
from ulixes_onnx.engine.rewrite import fold_clamps, prelus_as_local_slopes, split_prelus
from ulixes_onnx.engine.session import optimised_for_this_machine


def _clamp_model(
    first: str, low: float, high: float, *, relu: bool, extra_use: bool = False
) -> onnx.ModelProto:
    """x -> [Relu] -> first(., bound) -> second(., bound) -> y, the bounds as initializers."""
    second = {"Min": "Max", "Max": "Min"}[first]
    bound = {"Min": high, "Max": low}
    nodes = [helper.make_node("Relu", ["x"], ["r"])] if relu else []
    source = "r" if relu else "x"
    nodes += [
        helper.make_node(first, [source, "first_bound"], ["inner"]),
        helper.make_node(second, ["inner", "second_bound"], ["y"]),
    ]
    initializers = {
        "first_bound": np.full((1, 1, 1, 1), bound[first], np.float32),
        "second_bound": np.float32(bound[second]),
    }
    outputs = ["y", "inner"] if extra_use else ["y"]
    return make_model(
        nodes, {"x": [2, 3, 4, 4]}, outputs, initializers=initializers, dtype=np.float32, opset=18
    )


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return run(model, {"x": x}, ["y"])[0]


def _inputs() -> np.ndarray:
    x = np.random.default_rng(0).uniform(-8, 8, (2, 3, 4, 4)).astype(np.float32)
    x.flat[:4] = [0.0, 6.0, -0.0, 1.5]  # values on the bounds
    return x


@pytest.mark.parametrize("first", ["Min", "Max"])
@pytest.mark.parametrize("relu", [False, True])
def test_min_max_clamps_become_one_clip_with_equal_values(first: str, relu: bool) -> None:
    model = _clamp_model(first, 0.0, 6.0, relu=relu)
    folded = fold_clamps(model)
    assert [node.op_type for node in folded.graph.node] == ["Clip"]
    np.testing.assert_array_equal(_run(folded, _inputs()), _run(model, _inputs()))
    assert {tensor.name for tensor in folded.graph.initializer} == {
        name for name in folded.graph.node[0].input[1:]
    }


def test_a_relu_is_kept_when_the_lower_bound_is_negative() -> None:
    model = _clamp_model("Min", -1.0, 6.0, relu=True)
    folded = fold_clamps(model)
    assert [node.op_type for node in folded.graph.node] == ["Relu", "Clip"]
    np.testing.assert_array_equal(_run(folded, _inputs()), _run(model, _inputs()))


@pytest.mark.parametrize(
    ("low", "high", "extra_use"),
    [(6.0, 0.0, False), (0.0, 6.0, True)],
    ids=["bounds-crossed", "inner-result-used-elsewhere"],
)
def test_other_min_max_chains_are_left_alone(low: float, high: float, extra_use: bool) -> None:
    model = _clamp_model("Min", low, high, relu=False, extra_use=extra_use)
    assert [node.op_type for node in fold_clamps(model).graph.node] == ["Min", "Max"]


def test_the_folded_clamp_differentiates_like_the_original_off_the_bounds() -> None:
    model = _clamp_model("Min", 0.0, 6.0, relu=True)
    x = np.random.default_rng(1).uniform(-8, 8, (2, 3, 4, 4)).astype(np.float32)
    (gradient,) = run(add_input_gradient(model, "x", "y"), {"x": x}, ["x_grad"])
    np.testing.assert_array_equal(gradient, ((x > 0) & (x < 6)).astype(np.float32))


def _prelu_model(slope_as_input: bool = False) -> onnx.ModelProto:
    """x -> PRelu(., slope) -> y with per-channel slopes below 0, between 0 and 1 and above 1."""
    slope = np.array([-0.8, 0.25, 1.2], np.float32).reshape(3, 1, 1)
    inputs = {"x": [2, 3, 4, 4]}
    if slope_as_input:
        inputs["slope"] = [3, 1, 1]
    return make_model(
        [helper.make_node("PRelu", ["x", "slope"], ["y"])],
        inputs,
        ["y"],
        initializers=None if slope_as_input else {"slope": slope},
        dtype=np.float32,
    )


def test_a_prelu_splits_into_plain_operators_with_equal_values() -> None:
    model = _prelu_model()
    split = split_prelus(model)
    assert [node.op_type for node in split.graph.node] == ["Relu", "Min", "Mul", "Add"]
    onnx.checker.check_model(split, full_check=True)
    np.testing.assert_array_equal(_run(split, _inputs()), _run(model, _inputs()))


def test_split_prelus_take_names_no_other_tensor_or_node_has() -> None:
    model = _prelu_model()
    # a tensor already named as the rewrite would name its first part
    model.graph.node.append(helper.make_node("Identity", ["y"], ["y/prelu_positive"], name="y/prelu_add"))
    model.graph.output.append(helper.make_tensor_value_info("y/prelu_positive", onnx.TensorProto.FLOAT, None))
    split = split_prelus(model)
    outputs = [name for node in split.graph.node for name in node.output]
    node_names = [node.name for node in split.graph.node]
    assert len(outputs) == len(set(outputs)) and len(node_names) == len(set(node_names))
    np.testing.assert_array_equal(_run(split, _inputs()), _run(model, _inputs()))


@pytest.mark.parametrize("rewrite", [split_prelus, prelus_as_local_slopes])
def test_a_prelu_whose_slope_is_computed_is_left_alone(rewrite) -> None:
    assert [node.op_type for node in rewrite(_prelu_model(slope_as_input=True)).graph.node] == ["PRelu"]


def test_a_prelu_of_images_becomes_x_times_its_local_slope() -> None:
    model = _prelu_model()
    rewritten = prelus_as_local_slopes(model)
    assert [node.op_type for node in rewritten.graph.node] == ["Conv", "Clip", "Conv", "Mul"]
    onnx.checker.check_model(rewritten, full_check=True)
    x = _inputs()
    x.flat[4:7] = [1e-30, -1e-30, 3e38]  # the step holds from 2^-100 up, and where x * 2^100 overflows
    np.testing.assert_allclose(_run(rewritten, x), _run(model, x), rtol=2e-7, atol=0)


def test_the_gradient_of_a_rewritten_prelu_is_one_product_with_the_forward_local_slope() -> None:
    model = _prelu_model()
    gradient_model = add_input_gradient(model, "x", "y")
    rewritten = prelus_as_local_slopes(gradient_model)
    operators = [node.op_type for node in rewritten.graph.node]
    # The backward's Greater, Cast, Mul by 1 - slope and Add slope became the forward's local slope.
    assert "Greater" not in operators and "Cast" not in operators
    assert operators.count("Conv") == 2
    x = _inputs()
    expected = run(gradient_model, {"x": x}, ["x_grad"])[0]
    np.testing.assert_allclose(run(rewritten, {"x": x}, ["x_grad"])[0], expected, rtol=2e-7, atol=0)
    # At 0 both take the slope, as PRelu's own rule does.
    np.testing.assert_array_equal(expected.flat[0], np.float32(-0.8))


@pytest.mark.parametrize(
    ("slope", "shape"),
    [(np.float32(0.25), [2, 3, 4, 4]), (np.full((3, 1, 1), 0.25, np.float32), [3, 4, 4])],
    ids=["scalar slope", "unbatched image"],
)
def test_other_prelus_are_left_to_the_split(slope: np.ndarray, shape: list[int]) -> None:
    model = make_model(
        [helper.make_node("PRelu", ["x", "slope"], ["y"])],
        {"x": shape},
        ["y"],
        initializers={"slope": slope},
        dtype=np.float32,
    )
    assert [node.op_type for node in prelus_as_local_slopes(model).graph.node] == ["PRelu"]


def test_sessions_run_the_rewritten_prelus(tmp_path: Path) -> None:
    path = tmp_path / "prelu.onnx"
    onnx.save(_prelu_model(), path)
    optimised = onnx.load_from_string(optimised_for_this_machine(path))
    assert "PRelu" not in {node.op_type for node in optimised.graph.node}
    np.testing.assert_allclose(_run(optimised, _inputs()), _run(_prelu_model(), _inputs()), rtol=2e-7, atol=0)
