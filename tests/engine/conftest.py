"""Helpers for the engine tests: tiny ONNX graphs and a finite-difference check of their gradients."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper, shape_inference

from ulixes_onnx.engine.autodiff import add_input_gradient
from ulixes_onnx.engine.session import create_session, default_domain_only

# Central differences: the step balances truncation (h^2) against rounding (eps/h). float32 runs
# only use graphs that are linear or smooth at the scale of the step, so h can be large.
FD_STEP = {np.float64: 1e-6, np.float32: 1e-2}
FD_TOLERANCE = {np.float64: 1e-6, np.float32: 2e-3}


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: dict[str, Sequence[int | str]],
    outputs: Sequence[str],
    *,
    initializers: dict[str, np.ndarray] | None = None,
    dtype: type = np.float64,
    opset: int = 17,
) -> onnx.ModelProto:
    """A model whose graph inputs are float tensors of the given shapes (str = dynamic dimension)."""
    elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        list(nodes),
        "test",
        [helper.make_tensor_value_info(name, elem_type, shape) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, elem_type, None) for name in outputs],
        [numpy_helper.from_array(value, name) for name, value in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    # Shape inference fills in the output shapes, which the ONNX checker requires.
    return shape_inference.infer_shapes(model, strict_mode=True)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], names: Sequence[str]) -> list:
    return create_session(model, threads=1).run(list(names), feeds)


def gradient_error(
    model: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    wrt: str,
    of: str = "y",
    *,
    seed: int = 0,
) -> float:
    """Max abs difference between the engine's vector-Jacobian product and central differences,
    relative to the largest derivative. The cotangent is random so that every output counts."""
    dtype = feeds[wrt].dtype.type
    grad_model = add_input_gradient(model, wrt, of, grad_name="dx", cotangent_name="dy")
    onnx.checker.check_model(grad_model)
    assert default_domain_only(grad_model)
    forward = create_session(model, threads=1)
    backward = create_session(grad_model, threads=1)
    output = forward.run([of], feeds)[0]
    cotangent = np.random.default_rng(seed).standard_normal(output.shape).astype(dtype)
    analytic = backward.run(["dx"], {**feeds, "dy": cotangent})[0]
    assert analytic.shape == feeds[wrt].shape

    def objective(x: np.ndarray) -> float:
        value = forward.run([of], {**feeds, wrt: x})[0]
        return float(np.sum(value.astype(np.float64) * cotangent))

    step = FD_STEP[dtype]
    numeric = np.zeros(feeds[wrt].shape)
    for index in np.ndindex(*feeds[wrt].shape):
        plus, minus = feeds[wrt].copy(), feeds[wrt].copy()
        plus[index] += step
        minus[index] -= step
        numeric[index] = (objective(plus) - objective(minus)) / (2 * step)
    scale = max(float(np.abs(numeric).max()), 1e-3)
    return float(np.abs(analytic - numeric).max()) / scale


@pytest.fixture
def assert_gradient_matches():
    """Check a model's input gradient against finite differences at the dtype's tolerance."""

    def check(model: onnx.ModelProto, feeds: dict[str, np.ndarray], wrt: str, of: str = "y"):
        error = gradient_error(model, feeds, wrt, of)
        tolerance = FD_TOLERANCE[feeds[wrt].dtype.type]
        assert error < tolerance, f"relative gradient error {error:.2e} >= {tolerance:.0e}"
        return error

    return check
