"""Fold a model's own input convention in front of it, so that every model takes the canonical chip.

The canonical chip `x` is float32 RGB NCHW [N, 3, H, W] in [-1, 1]. A model's native input may differ in
layout (NHWC), channel order (BGR), value range (native = x * scale + offset per channel) and FaceNet's
per-image prewhitening. The preprocessing becomes ONNX nodes, so gradients flow through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ulixes_onnx.engine.autodiff import default_opset
from ulixes_onnx.engine.names import CANONICAL_INPUT
from ulixes_onnx.errors import GraphError

_PREFIX = "adapt/"


@dataclass(frozen=True)
class InputSpec:
    """How a model's native input is made from the canonical chip x.

    `scale` and `offset` are per channel in the native channel order: native = x * scale + offset.
    `prewhiten` then applies FaceNet's per-image (v - mean) / max(std, 1 / sqrt(v.size)).
    """

    input_name: str
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    channel_order: Literal["RGB", "BGR"] = "RGB"
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    prewhiten: bool = False


def _static_dim(dim: onnx.TensorShapeProto.Dimension) -> int | None:
    return dim.dim_value if dim.HasField("dim_value") else None


def _chip_size(
    model_input: onnx.ValueInfoProto, layout: str
) -> tuple[onnx.TensorShapeProto.Dimension, int, int]:
    """The batch dimension and static height and width of a native image input."""
    dims = list(model_input.type.tensor_type.shape.dim)
    if len(dims) != 4:
        raise GraphError(
            f"model input '{model_input.name}' has rank {len(dims)}, not 4; "
            "give an image input [N, C, H, W] or [N, H, W, C]"
        )
    channels, height, width = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
    if _static_dim(channels) != 3 or _static_dim(height) is None or _static_dim(width) is None:
        raise GraphError(
            f"model input '{model_input.name}' is not a 3-channel image of fixed size in {layout} "
            "layout; check the model's InputSpec layout"
        )
    return dims[0], int(_static_dim(height)), int(_static_dim(width))  # type: ignore[arg-type]


def _rename_input(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = new
    for output in graph.output:
        if output.name == old:
            raise GraphError(f"model input '{old}' is also an output; it is not a network")


def with_canonical_input(model: onnx.ModelProto, spec: InputSpec) -> onnx.ModelProto:
    """A copy of `model` whose only input is the canonical chip `x` [N, 3, H, W] in [-1, 1]."""
    adapted = onnx.ModelProto()
    adapted.CopyFrom(model)
    graph = adapted.graph
    initializer_names = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializer_names]
    native = next((value for value in inputs if value.name == spec.input_name), None)
    if native is None or len(inputs) != 1:
        raise GraphError(
            f"the model must have exactly one input named '{spec.input_name}', it has "
            f"{[value.name for value in inputs]}; fix the model card's input name"
        )
    batch, height, width = _chip_size(native, spec.layout)
    native_name = _PREFIX + "native_input"
    _rename_input(graph, spec.input_name, native_name)
    if any(CANONICAL_INPUT in [*n.input, *n.output] for n in graph.node):
        raise GraphError(
            f"the model has an inner tensor named '{CANONICAL_INPUT}'; rename it before adapting"
        )
    elem_type = native.type.tensor_type.elem_type

    nodes: list[onnx.NodeProto] = []
    constants: list[onnx.TensorProto] = []

    def constant(value: np.ndarray, name: str) -> str:
        constants.append(numpy_helper.from_array(value, _PREFIX + name))
        return _PREFIX + name

    def node(op_type: str, inputs: list[str], output: str, **attributes: object) -> str:
        nodes.append(
            helper.make_node(op_type, inputs, [_PREFIX + output], name=_PREFIX + output, **attributes)
        )
        return _PREFIX + output

    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    v = CANONICAL_INPUT
    if spec.channel_order == "BGR":
        int64 = np.int64
        v = node(
            "Slice",
            [
                v,
                constant(np.array([-1], int64), "last_channel"),
                constant(np.array([np.iinfo(int64).min], int64), "before_first"),
                constant(np.array([1], int64), "channel_axis"),
                constant(np.array([-1], int64), "backwards"),
            ],
            "bgr",
        )
    per_channel = (1, 3, 1, 1)
    if spec.scale != (1.0, 1.0, 1.0):
        v = node("Mul", [v, constant(np.reshape(spec.scale, per_channel).astype(dtype), "scale")], "scaled")
    if spec.offset != (0.0, 0.0, 0.0):
        v = node(
            "Add", [v, constant(np.reshape(spec.offset, per_channel).astype(dtype), "offset")], "shifted"
        )
    if spec.prewhiten:

        def image_mean(t: str, output: str) -> str:
            # ReduceMean takes its axes as an input from opset 18 on, as an attribute before.
            if default_opset(adapted) >= 18:
                axes = constant(np.array([1, 2, 3], np.int64), "image_axes")
                return node("ReduceMean", [t, axes], output, keepdims=1)
            return node("ReduceMean", [t], output, axes=[1, 2, 3], keepdims=1)

        centred = node("Sub", [v, image_mean(v, "mean")], "centred")
        squares = node("Mul", [centred, centred], "squares")
        std = node("Sqrt", [image_mean(squares, "variance")], "std")
        floor = constant(np.array(1.0 / np.sqrt(3 * height * width), dtype), "std_floor")
        v = node("Div", [centred, node("Max", [std, floor], "adjusted_std")], "prewhitened")
    if spec.layout == "NHWC":
        v = node("Transpose", [v], "nhwc", perm=[0, 2, 3, 1])
    nodes.append(helper.make_node("Identity", [v], [native_name], name=native_name))

    canonical = helper.make_tensor_value_info(CANONICAL_INPUT, elem_type, [None, 3, height, width])
    canonical.type.tensor_type.shape.dim[0].CopyFrom(batch)
    graph.input.remove(native)
    graph.input.insert(0, canonical)
    forward_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + forward_nodes)
    graph.initializer.extend(constants)
    return adapted
