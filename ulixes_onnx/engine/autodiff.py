"""Reverse-mode differentiation of an ONNX graph w.r.t. one of its inputs, in standard ONNX operators.

`add_input_gradient` appends to a model the nodes that compute the vector-Jacobian product of one tensor
(the loss) w.r.t. one graph input. It walks the nodes in reverse topological order, asks the rule of each
node that lies on a path from the input to the loss for its input gradients (see `rules.py`), and sums the
gradients of tensors that fan out. Nodes off those paths get no backward nodes, weights get no gradients,
and forward nodes that no output needs are dropped. Only default-domain operators are accepted and
emitted, so the result runs in plain onnxruntime.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, inliner, numpy_helper, shape_inference, version_converter

from ulixes_onnx.engine.backward_graph import BackwardGraph
from ulixes_onnx.engine.rewrite import fold_clamps
from ulixes_onnx.engine.rules import BACKWARD_RULES, NON_DIFFERENTIABLE
from ulixes_onnx.errors import GraphError

MIN_OPSET = 18
_DEFAULT_DOMAINS = ("", "ai.onnx")
_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
}


def default_opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in _DEFAULT_DOMAINS:
            return opset.version
    return 0


def prepare_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with local functions inlined, clamps folded into Clip (`rewrite.fold_clamps`) and the
    default opset raised to at least `MIN_OPSET`."""
    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    if prepared.functions:
        prepared = inliner.inline_local_functions(prepared)
    for node in prepared.graph.node:
        if node.domain not in _DEFAULT_DOMAINS:
            raise GraphError(
                f"node '{node.name}' uses operator {node.domain}:{node.op_type}, which is not a "
                "standard ONNX operator; export the model with default-domain operators only"
            )
    prepared = fold_clamps(prepared)
    if default_opset(prepared) < MIN_OPSET:
        try:
            prepared = version_converter.convert_version(prepared, MIN_OPSET)
        except Exception as error:
            raise GraphError(
                f"cannot upgrade the model from opset {default_opset(model)} to {MIN_OPSET} "
                f"({error}); re-export it with opset {MIN_OPSET} or later"
            ) from error
    return prepared


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model, data_prop=True)
    except Exception as error:
        raise GraphError(
            f"ONNX shape inference failed on the model ({error}); check it with onnx.checker"
        ) from error


def _names_in_subgraphs(node: onnx.NodeProto) -> set[str]:
    """Outer-scope tensor names that the subgraphs of control-flow nodes read."""
    names: set[str] = set()
    for attribute in node.attribute:
        graphs = list(attribute.graphs)
        if attribute.HasField("g"):
            graphs.append(attribute.g)
        for graph in graphs:
            for inner in graph.node:
                names.update(inner.input)
                names |= _names_in_subgraphs(inner)
    return names


def _differentiable_tensors(graph: onnx.GraphProto, wrt: str, of: str, float_tensors: set[str]) -> set[str]:
    """Tensors on a path from `wrt` to `of` through differentiable operators."""
    depends_on_wrt = {wrt}
    for node in graph.node:
        if node.op_type in NON_DIFFERENTIABLE:
            continue
        if any(name in depends_on_wrt for name in node.input):
            depends_on_wrt.update(name for name in node.output if name in float_tensors)
    leads_to_of = {of}
    for node in reversed(graph.node):
        if node.op_type in NON_DIFFERENTIABLE:
            continue
        if any(name in leads_to_of for name in node.output):
            leads_to_of.update(node.input)
    return depends_on_wrt & leads_to_of


def _check_rules_exist(graph: onnx.GraphProto, requires_grad: set[str]) -> None:
    for node in graph.node:
        on_path = any(name in requires_grad for name in node.output) and any(
            name in requires_grad for name in node.input
        )
        if on_path and node.op_type not in BACKWARD_RULES:
            raise GraphError(
                f"no backward rule for ONNX operator {node.op_type} (node '{node.name}'); "
                "add one to ulixes_onnx/engine/rules.py or export the model without it"
            )


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes and initializers that no graph output depends on."""
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(node.input)
            needed |= _names_in_subgraphs(node)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [tensor for tensor in graph.initializer if tensor.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    value_infos = [value for value in graph.value_info if value.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(value_infos)


def add_input_gradient(
    model: onnx.ModelProto,
    wrt: str,
    of: str,
    *,
    grad_name: str | None = None,
    cotangent_name: str | None = None,
    scaled_gradients: Mapping[tuple[str, int], str] | None = None,
    linearised: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """Return a copy of `model` with an extra output: the gradient of `of` w.r.t. graph input `wrt`.

    The gradient is the vector-Jacobian product with a cotangent of `of`'s shape: all ones (the gradient
    of the sum of `of`, which for a per-sample loss [N] gives each sample's own gradient), or, when
    `cotangent_name` is given, a new graph input of that name. `scaled_gradients` maps (a node's first
    output, an input index) to the name of a tensor by which the gradient that node passes back to that
    input is multiplied: no longer the true gradient, but a chosen backward pass (the skip-gradient
    method of `cloak_graph`). `linearised` maps an elementwise node (by its first output) to the name of
    a tensor t: the gradient it passes back to its first input is t * (the gradient it received) +
    (1 - t) * its rule's, the node taken for the identity on the way back as far as t says (the linear
    backward pass of `cloak_graph`). The output is named `grad_name`
    (default `<wrt>_grad`) and has the shape of `wrt`. Raises `GraphError` when the graph has an
    operator without a backward rule, a non-standard operator, or shapes a rule cannot work with.
    """
    prepared = prepare_model(model)
    graph = prepared.graph
    graph_inputs = {value.name: value for value in graph.input}
    if wrt not in graph_inputs:
        raise GraphError(f"'{wrt}' is not an input of the model; pass one of {list(graph_inputs)}")
    produced = {name for node in graph.node for name in node.output}
    if of not in produced and of not in graph_inputs:
        raise GraphError(f"the model computes no tensor named '{of}'; pass the loss tensor's name")
    grad_name = grad_name or f"{wrt}_grad"

    inferred = _infer_shapes(prepared).graph
    float_tensors = {
        value.name
        for value in [*inferred.input, *inferred.value_info, *inferred.output]
        if value.type.tensor_type.elem_type in _FLOAT_TYPES
    }
    requires_grad = _differentiable_tensors(inferred, wrt, of, float_tensors)
    if wrt not in requires_grad:
        raise GraphError(f"'{of}' does not depend on '{wrt}' through differentiable operators")
    _check_rules_exist(inferred, requires_grad)

    backward = BackwardGraph(inferred, requires_grad)
    pending: dict[str, list[str]] = defaultdict(list)
    pending[of].append(_seed(backward, of, cotangent_name, graph))
    shapes = _GradientShapes(inferred, graph)

    def total_gradient(name: str) -> str | None:
        parts = pending.pop(name, [])
        if len(parts) > 1:
            total = backward.op("Sum", parts)
            shapes.record(total, name)
            return total
        return parts[0] if parts else None

    # Every chosen change of the backward pass must land on a node the gradient flows through: one that
    # does not would quietly leave the true gradient.
    unused_scales = dict(scaled_gradients or {})
    unused_linearities = dict(linearised or {})
    for node in reversed(inferred.node):
        if not any(name in requires_grad for name in node.input):
            continue
        output_grads = [total_gradient(name) for name in node.output]
        if all(grad is None for grad in output_grads):
            continue
        input_grads = BACKWARD_RULES[node.op_type](backward, node, output_grads)
        linearity = unused_linearities.pop(node.output[0], None)
        if linearity is not None:
            received, own = output_grads[0], input_grads[0]
            linear_part = backward.op("Mul", [backward.op("Sub", [received, own]), linearity])
            input_grads = [backward.op("Add", [own, linear_part]), *input_grads[1:]]
        for index, name in enumerate(node.input):
            if name not in requires_grad:
                continue
            grad = input_grads[index] if index < len(input_grads) else None
            if grad is None:
                raise backward.error(node, f"its rule gives no gradient for input {index} ('{name}')")
            scale = unused_scales.pop((node.output[0], index), None)
            if scale is not None:
                grad = backward.op("Mul", [grad, scale])
            pending[name].append(grad)
            shapes.record(grad, name)

    unused = [*unused_scales, *unused_linearities]
    if unused:
        raise GraphError(
            f"no gradient flows through {unused} of the model, whose backward pass was to change"
        )
    wrt_grad = total_gradient(wrt)
    backward.nodes.append(helper.make_node("Identity", [wrt_grad], [grad_name], name=grad_name))
    graph.node.extend(backward.nodes)
    graph.initializer.extend(backward.initializers)
    grad_info = onnx.ValueInfoProto()
    grad_info.CopyFrom(graph_inputs[wrt])
    grad_info.name = grad_name
    graph.output.append(grad_info)
    graph.value_info.extend(shapes.value_infos())
    _prune(graph)
    return prepared


class _GradientShapes:
    """The type and shape of each gradient tensor, which are its forward tensor's.

    ONNX shape inference cannot tell that a gradient has its forward tensor's batch dimension (on the
    way back through a Reshape or a Gemm it becomes a new unknown one), so onnxruntime cannot prove that
    a gradient and a forward tensor it is multiplied with have one shape, and takes both out of its
    blocked NCHWc layout and back for the product. Declared as value_info, the shapes let it keep
    them in that layout.
    """

    def __init__(self, inferred: onnx.GraphProto, graph: onnx.GraphProto) -> None:
        self._forward = {value.name: value for value in [*inferred.input, *inferred.value_info]}
        self._graph_tensors = {value.name for value in [*graph.input, *graph.output]}
        self._declared: dict[str, onnx.ValueInfoProto] = {}
        self._conflicting: set[str] = set()

    def record(self, gradient: str, forward: str) -> None:
        """Declare that tensor `gradient` is the gradient of forward tensor `forward`."""
        if gradient in self._graph_tensors or gradient in self._forward or forward not in self._forward:
            return
        declared = onnx.ValueInfoProto()
        declared.CopyFrom(self._forward[forward])
        declared.name = gradient
        if self._declared.setdefault(gradient, declared) != declared:
            # One tensor standing for the gradients of two forward tensors of different shapes (never
            # seen, but then neither shape is declared).
            self._conflicting.add(gradient)

    def value_infos(self) -> list[onnx.ValueInfoProto]:
        return [value for name, value in self._declared.items() if name not in self._conflicting]


def _seed(backward: BackwardGraph, of: str, cotangent_name: str | None, graph: onnx.GraphProto) -> str:
    """The gradient of the loss w.r.t. itself: ones, or a cotangent the caller feeds."""
    if cotangent_name is not None:
        shape = [
            dim if dim is not None else f"{cotangent_name}_dim{axis}"
            for axis, dim in enumerate(backward.shape(of, None))
        ]
        graph.input.append(helper.make_tensor_value_info(cotangent_name, backward.elem_type(of), shape))
        return cotangent_name
    one = numpy_helper.from_array(np.ones(1, dtype=backward.dtype(of)))
    return backward.op("ConstantOfShape", [backward.shape_tensor(of, None)], value=one)
