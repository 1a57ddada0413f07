"""Graph rewrites that compute the same values (to float rounding at most) with fewer, faster operators.

`fold_clamps` turns a clamp spelled as Min and Max with scalar constant bounds (what tf2onnx makes of
Keras' ReLU6, `clip_by_value`: Relu, then Minimum, then Maximum) into one Clip, absorbing a Relu
in front of it when the lower bound is not negative. onnxruntime fuses a Clip into the convolution
before it, and Clip's backward rule is one mask where Max and Min each need tie-sharing masks: on
the HSE FaceRes network this halves the time of a cloak step. Only subgradients at the bounds
themselves can differ.

`prelus_as_local_slopes` writes PRelu with a per-channel constant slope on a batch of images as
x * L, with L = slope + (1 - slope) * [x > 0] made by two 1x1 depthwise convolutions (the first,
weighted 2^100 and clipped to [0, 1], is the step [x > 0] for every x outside (0, 2^-100)). Every
operator then stays in onnxruntime's blocked NCHWc layout, which Greater, Cast, Min and broadcast
multiplications leave (each costing a conversion out of it and back). In a cloak graph the PRelu's
backward rule computes the same L (`rules._prelu`); the forward's L replaces that chain, and the
gradient is a single product. On SFace a cloak step takes 0.75-0.83x the time of the split form below
and a forward pass 0.78-0.84x (benchmarks/results/sface-prelu-layout-2026-12-07.md).

`split_prelus` writes the other PRelus with a constant slope as Relu(x) + slope * Min(x, 0): onnxruntime's
CPU PRelu broadcasts the slope element by element (on SFace its 27 PRelus took 61 % of a forward
pass), and the three plain operators that replace each are several times faster.

The last two are for onnxruntime only, applied to the graphs sessions run
(`session.optimised_for_this_machine`), after the cloak graph is built: differentiated through, the
split form's Min would need the tie-sharing masks PRelu's own rule does without.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

_PAIRS = {"Max": "Min", "Min": "Max"}


def _scalar_constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return {name: value.reshape(()) for name, value in values.items() if value.size == 1}


def fold_clamps(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every Max(Min(u, hi), lo) and Min(Max(u, lo), hi) on scalar constants,
    lo <= hi, whose inner result has no other use, written as Clip(u, lo, hi)."""
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    graph = folded.graph
    scalars = _scalar_constants(graph)
    producers = {output: node for node in graph.node for output in node.output}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for output in graph.output:
        uses[output.name] = uses.get(output.name, 0) + 1
    removed: set[int] = set()
    replacements: dict[int, onnx.NodeProto] = {}
    for node in graph.node:
        if node.op_type not in _PAIRS or len(node.input) != 2 or node.input[1] not in scalars:
            continue
        inner = producers.get(node.input[0])
        if (
            inner is None
            or inner.op_type != _PAIRS[node.op_type]
            or len(inner.input) != 2
            or inner.input[1] not in scalars
            or uses.get(inner.output[0]) != 1
        ):
            continue
        bounds = {node.op_type: float(scalars[node.input[1]]), inner.op_type: float(scalars[inner.input[1]])}
        low, high = bounds["Max"], bounds["Min"]
        if low > high:
            continue
        source = inner.input[0]
        relu = producers.get(source)
        if relu is not None and relu.op_type == "Relu" and low >= 0 and uses.get(source) == 1:
            removed.add(id(relu))
            source = relu.input[0]
        removed.add(id(inner))
        names = [f"{node.output[0]}/clip_{bound}" for bound in ("low", "high")]
        dtype = scalars[node.input[1]].dtype
        graph.initializer.extend(
            numpy_helper.from_array(np.asarray(value, dtype), name)
            for value, name in zip((low, high), names, strict=True)
        )
        replacements[id(node)] = onnx.helper.make_node(
            "Clip", [source, *names], [node.output[0]], name=f"{node.name or node.output[0]}/clip"
        )
    if not replacements:
        return folded
    nodes = [replacements.get(id(node), node) for node in graph.node if id(node) not in removed]
    del graph.node[:]
    graph.node.extend(nodes)
    # Bounds that only the rewritten nodes read would be left unused (and onnxruntime warns about them).
    read = {name for node in graph.node for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return folded


class _Names:
    """Fresh tensor and node names for a graph's rewrite: none that a tensor or node already has."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self._taken = {tensor.name for tensor in graph.initializer} | {value.name for value in graph.input}
        self._taken |= {name for node in graph.node for name in [*node.input, *node.output, node.name]}

    def fresh(self, name: str) -> str:
        while name in self._taken:
            name += "_"
        self._taken.add(name)
        return name


# x times this is at least 1 for every float x from 2^-100 up (the clip to [0, 1] then gives exactly 1),
# negative for every negative x (0 after the clip) and 0 for x = 0.
_STEP_GAIN = 2.0**100


def prelus_as_local_slopes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every PRelu of a 4-D float32 tensor x whose slope is an initializer of
    shape [C, 1, 1] written as x * L, L = slope + (1 - slope) * [x > 0], the step a depthwise 1x1
    convolution of x clipped to [0, 1] and L a depthwise 1x1 convolution of the step. When the graph
    also computes L for the PRelu's gradient (`rules._prelu`: Greater(x, 0), Cast, Mul by the constant
    1 - slope, Add slope), that tensor is made here instead and the chain is dropped."""
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    graph = rewritten.graph
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    ranks = _ranks(rewritten)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    names = _Names(graph)
    replacements: dict[int, list[onnx.NodeProto]] = {}
    dropped: set[int] = set()
    for node in graph.node:
        if node.op_type != "PRelu" or node.domain not in ("", "ai.onnx"):
            continue
        x, slope_name = node.input
        slope = initializers.get(slope_name)
        if slope is None or slope.dtype != np.float32 or slope.ndim != 3 or slope.shape[1:] != (1, 1):
            continue
        if ranks.get(x) != 4:
            continue
        chain = _local_slope_chain(x, slope_name, slope, consumers, initializers)
        dropped.update(id(part) for part in chain)
        y = node.output[0]
        local = chain[-1].output[0] if chain else names.fresh(f"{y}/local_slope")
        channels = slope.shape[0]
        constants = {
            "step_weight": np.full((channels, 1, 1, 1), _STEP_GAIN, np.float32),
            "rise_weight": (1 - slope).reshape(channels, 1, 1, 1),
            "slope_bias": slope.reshape(channels),
            "zero": np.zeros((), np.float32),
            "one": np.ones((), np.float32),
        }
        constant_names = {key: names.fresh(f"{y}/{key}") for key in constants}
        graph.initializer.extend(
            numpy_helper.from_array(value, constant_names[key]) for key, value in constants.items()
        )
        scaled, positive = names.fresh(f"{y}/step_scaled"), names.fresh(f"{y}/positive")
        depthwise = {"group": channels, "kernel_shape": [1, 1]}
        replacements[id(node)] = [
            onnx.helper.make_node(
                "Conv", [x, constant_names["step_weight"]], [scaled], name=names.fresh(scaled), **depthwise
            ),
            onnx.helper.make_node(
                "Clip",
                [scaled, constant_names["zero"], constant_names["one"]],
                [positive],
                name=names.fresh(positive),
            ),
            onnx.helper.make_node(
                "Conv",
                [positive, constant_names["rise_weight"], constant_names["slope_bias"]],
                [local],
                name=names.fresh(f"{y}/local_slope_conv"),
                **depthwise,
            ),
            onnx.helper.make_node("Mul", [x, local], [y], name=names.fresh(f"{y}/prelu_mul")),
        ]
    nodes = [
        part for node in graph.node if id(node) not in dropped for part in replacements.get(id(node), [node])
    ]
    del graph.node[:]
    graph.node.extend(nodes)
    return rewritten


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """The rank of every tensor ONNX shape inference can tell it of."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    return {
        value.name: len(value.type.tensor_type.shape.dim)
        for value in [*inferred.input, *inferred.value_info, *inferred.output]
        if value.type.tensor_type.HasField("shape")
    }


def _local_slope_chain(
    x: str,
    slope_name: str,
    slope: np.ndarray,
    consumers: dict[str, list[onnx.NodeProto]],
    initializers: dict[str, np.ndarray],
) -> list[onnx.NodeProto]:
    """The nodes Greater(x, 0) -> Cast to float -> Mul by 1 - slope -> Add slope, each the only reader
    of the one before, that compute a PRelu's local slope; [] if the graph has none."""

    def only_reader(node: onnx.NodeProto, op_type: str) -> onnx.NodeProto | None:
        readers = consumers.get(node.output[0], [])
        return readers[0] if len(readers) == 1 and readers[0].op_type == op_type else None

    for greater in consumers.get(x, []):
        zero = initializers.get(greater.input[1]) if greater.op_type == "Greater" else None
        if zero is None or greater.input[0] != x or zero.size != 1 or zero.reshape(()) != 0:
            continue
        cast = only_reader(greater, "Cast")
        if cast is None or onnx.helper.get_node_attr_value(cast, "to") != onnx.TensorProto.FLOAT:
            continue
        mul = only_reader(cast, "Mul")
        if mul is None:
            continue
        rise = initializers.get(mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0])
        if rise is None or rise.shape != slope.shape or not np.array_equal(rise, 1 - slope):
            continue
        add = only_reader(mul, "Add")
        if add is not None and slope_name in add.input and mul.output[0] in add.input:
            return [greater, cast, mul, add]
    return []


def split_prelus(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every PRelu whose slope is an initializer written as
    Add(Relu(x), Mul(Min(x, 0), slope)): the same values, including at 0."""
    split = onnx.ModelProto()
    split.CopyFrom(model)
    graph = split.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    unused = _Names(graph).fresh
    nodes: list[onnx.NodeProto] = []
    zeros: dict[int, str] = {}
    for node in graph.node:
        if node.op_type != "PRelu" or node.domain not in ("", "ai.onnx") or node.input[1] not in initializers:
            nodes.append(node)
            continue
        x, slope = node.input
        elem_type = initializers[slope].data_type
        if elem_type not in zeros:
            zeros[elem_type] = unused(f"{slope}/prelu_zero")
            zero = np.zeros((), onnx.helper.tensor_dtype_to_np_dtype(elem_type))
            graph.initializer.append(numpy_helper.from_array(zero, zeros[elem_type]))
        positive, negative, leak = (
            unused(f"{node.output[0]}/prelu_{part}") for part in ("positive", "negative", "leak")
        )
        nodes += [
            onnx.helper.make_node("Relu", [x], [positive], name=unused(f"{positive}/relu")),
            onnx.helper.make_node("Min", [x, zeros[elem_type]], [negative], name=unused(f"{negative}/min")),
            onnx.helper.make_node("Mul", [negative, slope], [leak], name=unused(f"{leak}/mul")),
            onnx.helper.make_node(
                "Add", [positive, leak], [node.output[0]], name=unused(f"{node.output[0]}/prelu_add")
            ),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    return split
