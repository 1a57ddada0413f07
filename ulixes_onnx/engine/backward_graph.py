"""The backward pass under construction, and what the backward rules may ask about the forward graph.

A `BackwardGraph` owns the nodes and initializers that the rules emit (with names that cannot clash with
the forward graph), and answers questions about forward tensors: their static shape (from ONNX shape
inference; `None` marks a dynamic dimension such as the batch), element type and constant value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ulixes_onnx.errors import GraphError

StaticShape = tuple[int | None, ...]

# Constants up to this many elements are shared between rules instead of being stored twice.
_SHARED_CONSTANT_MAX_SIZE = 64


def _shape_of(value_type: onnx.TypeProto) -> StaticShape | None:
    tensor_type = value_type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return tuple(dim.dim_value if dim.HasField("dim_value") else None for dim in tensor_type.shape.dim)


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if attribute.name == "value":
            return numpy_helper.to_array(value)
        if attribute.name in ("value_float", "value_floats"):
            return np.asarray(value, dtype=np.float32)
        if attribute.name in ("value_int", "value_ints"):
            return np.asarray(value, dtype=np.int64)
    return None


class BackwardGraph:
    """Collects backward nodes for a shape-inferred forward graph and answers the rules' questions."""

    def __init__(self, inferred_graph: onnx.GraphProto, requires_grad: set[str]) -> None:
        self._requires_grad = requires_grad
        self._shapes: dict[str, StaticShape | None] = {}
        self._elem_types: dict[str, int] = {}
        self._values: dict[str, np.ndarray] = {}
        for info in [*inferred_graph.input, *inferred_graph.value_info, *inferred_graph.output]:
            self._shapes[info.name] = _shape_of(info.type)
            self._elem_types[info.name] = info.type.tensor_type.elem_type
        for tensor in inferred_graph.initializer:
            self._values[tensor.name] = numpy_helper.to_array(tensor)
            self._shapes[tensor.name] = tuple(tensor.dims)
            self._elem_types[tensor.name] = tensor.data_type
        for node in inferred_graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = _constant_node_value(node)
                if value is not None:
                    self._values[node.output[0]] = value
        self._taken_names = set(self._shapes) | {
            name for node in inferred_graph.node for name in [*node.input, *node.output]
        }
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._shared_constants: dict[tuple[str, tuple[int, ...], bytes], str] = {}
        self._shape_tensors: dict[str, str] = {}
        self._counter = 0

    # ---- facts about forward tensors -------------------------------------------------------------

    def needs_grad(self, name: str) -> bool:
        """Whether the gradient w.r.t. this forward tensor is wanted (it lies between input and loss)."""
        return name in self._requires_grad

    def shape(self, name: str, node: onnx.NodeProto | None) -> StaticShape:
        """The inferred shape; `node` (the node being differentiated) names the culprit in errors."""
        shape = self._shapes.get(name)
        if shape is None:
            problem = f"the shape of tensor '{name}' could not be inferred"
            if node is None:
                raise GraphError(f"cannot differentiate the model: {problem}; give it a static rank")
            raise self.error(node, problem)
        return shape

    def static_dims(self, name: str, node: onnx.NodeProto, axes: Iterable[int]) -> list[int]:
        """The sizes of the given axes, which must be known when the graph is built."""
        shape = self.shape(name, node)
        dims = [shape[axis] for axis in axes]
        if any(dim is None for dim in dims):
            raise self.error(node, f"tensor '{name}' needs a static size on axes {list(axes)}")
        return [int(dim) for dim in dims if dim is not None]

    def rank(self, name: str, node: onnx.NodeProto) -> int:
        return len(self.shape(name, node))

    def dtype(self, name: str) -> np.dtype:
        elem_type = self._elem_types.get(name, onnx.TensorProto.FLOAT)
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))

    def elem_type(self, name: str) -> int:
        return self._elem_types.get(name, onnx.TensorProto.FLOAT)

    def value(self, name: str) -> np.ndarray | None:
        """The value of a forward tensor that is an initializer or a Constant node, else None."""
        return self._values.get(name)

    def constant_input(self, node: onnx.NodeProto, index: int) -> np.ndarray | None:
        """The constant value of an optional node input; None when the input is absent."""
        if len(node.input) <= index or not node.input[index]:
            return None
        value = self.value(node.input[index])
        if value is None:
            raise self.error(node, f"input {index} ('{node.input[index]}') must be a constant")
        return value

    @staticmethod
    def error(node: onnx.NodeProto, problem: str) -> GraphError:
        return GraphError(
            f"cannot differentiate {node.op_type} node '{node.name}': {problem}; "
            "export the model without it or add a backward rule"
        )

    # ---- emitting backward nodes -----------------------------------------------------------------

    def _fresh_name(self, hint: str) -> str:
        while True:
            self._counter += 1
            name = f"grad/{hint}_{self._counter}"
            if name not in self._taken_names:
                self._taken_names.add(name)
                return name

    def op(self, op_type: str, inputs: Sequence[str], **attributes: object) -> str:
        """Emit a single-output node and return the name of its output."""
        return self.op_multi(op_type, inputs, 1, **attributes)[0]

    def op_multi(
        self, op_type: str, inputs: Sequence[str], n_outputs: int, **attributes: object
    ) -> list[str]:
        outputs = [self._fresh_name(op_type) for _ in range(n_outputs)]
        self.nodes.append(
            helper.make_node(
                op_type,
                list(inputs),
                outputs,
                name=self._fresh_name(op_type + "_node"),
                **attributes,
            )
        )
        return outputs

    def constant(self, value: np.ndarray, hint: str = "const") -> str:
        value = np.ascontiguousarray(value)
        key = (value.dtype.str, value.shape, value.tobytes())
        if value.size <= _SHARED_CONSTANT_MAX_SIZE and key in self._shared_constants:
            return self._shared_constants[key]
        name = self._fresh_name(hint)
        self.initializers.append(numpy_helper.from_array(value, name))
        if value.size <= _SHARED_CONSTANT_MAX_SIZE:
            self._shared_constants[key] = name
        return name

    def scalar(self, value: float, like: str) -> str:
        """A scalar constant with the element type of tensor `like`."""
        return self.constant(np.array(value, dtype=self.dtype(like)), "scalar")

    def int64s(self, values: Iterable[int]) -> str:
        return self.constant(np.array(list(values), dtype=np.int64), "ints")

    def shape_tensor(self, name: str, node: onnx.NodeProto | None) -> str:
        """A 1-D int64 tensor holding the runtime shape of a forward tensor (constant when static)."""
        if name not in self._shape_tensors:
            shape = self._shapes.get(name)
            if shape is not None and all(dim is not None for dim in shape):
                self._shape_tensors[name] = self.int64s(int(dim) for dim in shape if dim is not None)
            else:
                self._shape_tensors[name] = self.op("Shape", [name])
        return self._shape_tensors[name]

    def zeros_like(self, name: str, node: onnx.NodeProto) -> str:
        fill = numpy_helper.from_array(np.zeros(1, dtype=self.dtype(name)))
        return self.op("ConstantOfShape", [self.shape_tensor(name, node)], value=fill)

    def unbroadcast(self, grad: str, input_name: str, output_name: str, node: onnx.NodeProto) -> str:
        """Sum a gradient of a broadcast result back to the shape of the input that was broadcast."""
        input_shape = self.shape(input_name, node)
        output_shape = self.shape(output_name, node)
        extra = len(output_shape) - len(input_shape)
        broadcast_axes = [
            axis
            for axis, input_dim in enumerate(input_shape, start=extra)
            if input_dim == 1 and output_shape[axis] != 1
        ]
        return self.sum_leading_and(grad, extra, broadcast_axes)

    def sum_leading_and(self, grad: str, leading: int, axes: list[int]) -> str:
        """Sum `grad` over its first `leading` axes (dropped) and over `axes` (kept with size 1)."""
        axes = list(range(leading)) + axes
        if not axes:
            return grad
        summed = self.op("ReduceSum", [grad, self.int64s(axes)], keepdims=1)
        if leading:
            summed = self.op("Squeeze", [summed, self.int64s(range(leading))])
        return summed
