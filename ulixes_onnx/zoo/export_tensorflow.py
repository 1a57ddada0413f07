"""TensorFlow side of the model exporters: TF GraphDef, TFJS graph models and Keras .h5 weights to ONNX.

This file runs as a script in the export toolchain's interpreter (see `toolchain.py`), never inside the
ulixes-onnx process: it imports TensorFlow, tf-keras and tf2onnx, which are not run-time dependencies, and
it imports nothing from ulixes_onnx (the export interpreter need not have it installed).

    python export_tensorflow.py JOB.json

The job names the source format and files, the output ONNX path, a probe batch (.npy, NHWC float32 in
the network's native convention) and where to write the source framework's own outputs on that probe;
the caller compares them with onnxruntime's. Formats:

- "graphdef": a frozen TensorFlow GraphDef (FaceNet's .pb). Its Reshape constants and placeholder fix
  the batch to 1; every Reshape gets -1 as its leading size instead (each keeps the batch on axis 0), so
  the ONNX model takes any batch. The reference runs the unmodified graph one probe at a time.
- "tfjs": a TFJS graph model (model.json plus weight shards), converted by tf2onnx's TFJS reader. The
  reference runs the same nodes rebuilt as a TensorFlow graph, with weights decoded independently.
- "keras": Keras 2 weights (.h5) of a known architecture (`architecture`), loaded into tf-keras, the
  Keras 2 implementation that still has LocallyConnected2D. Locally connected layers are exported through
  an equivalent layer made of strided slices and a batched matrix product (tf-keras' own implementation
  slices once per output position, thousands of nodes); the reference is the tf-keras model itself.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

# tf-keras (Keras 2) instead of Keras 3: Keras 3 has no LocallyConnected2D and reads .h5 weights of
# Keras 2 models only partly. Must be set before TensorFlow is imported.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

if not hasattr(np, "product"):
    # tf2onnx 1.17 still calls numpy.product, which numpy 2 removed.
    np.product = np.prod

import tensorflow as tf
import tf2onnx
import tf_keras as keras
from google.protobuf import json_format
from tf2onnx import tfonnx

OPSET = 17


# ---- TensorFlow GraphDef ----------------------------------------------------------------------


def _read_graph_def(path: str) -> tf.compat.v1.GraphDef:
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(Path(path).read_bytes())
    return graph_def


def _run_graph_def(graph_def: tf.compat.v1.GraphDef, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(output, feeds)


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
    original = _read_graph_def(job["source"]["graph"])
    input_name, output_name = job["input"], job["output"]
    # The original graph takes batch 1 only: the reference runs one probe at a time.
    reference = np.concatenate(
        [_run_graph_def(original, {input_name: probe[i : i + 1]}, output_name) for i in range(len(probe))]
    )
    model, _ = tf2onnx.convert.from_graph_def(
        _with_dynamic_batch(original), input_names=[input_name], output_names=[output_name], opset=OPSET
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


class PatchwiseDense(layers.Layer):
    """LocallyConnected2D (valid padding, channels last, tf-keras implementation 1 weights) from plain
    ops that tf2onnx maps one to one: k*k strided slices concatenated into patches, then one matrix
    product per output position."""

    def __init__(self, source: layers.LocallyConnected2D) -> None:
        super().__init__(name=source.name)
        self.kernel_size = source.kernel_size
        self.strides = source.strides
        self.rows, self.cols = source.output_row, source.output_col
        self.activation = source.activation
        self.kernel_value = source.kernel.numpy()  # [positions, k*k*channels, filters]
        self.bias_value = source.bias.numpy()  # [rows, cols, filters]

    def build(self, input_shape: tf.TensorShape) -> None:
        self.kernel = tf.constant(self.kernel_value)
        self.bias = tf.constant(self.bias_value)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        (kernel_rows, kernel_cols), (stride_rows, stride_cols) = self.kernel_size, self.strides
        row_span, col_span = stride_rows * (self.rows - 1) + 1, stride_cols * (self.cols - 1) + 1
        # Patch features in tf-keras' order: kernel row, kernel column, channel.
        patches = tf.concat(
            [
                x[:, i : i + row_span : stride_rows, j : j + col_span : stride_cols, :]
                for i in range(kernel_rows)
                for j in range(kernel_cols)
            ],
            axis=-1,
        )
        features = patches.shape[-1]
        per_position = tf.transpose(tf.reshape(patches, [-1, self.rows * self.cols, features]), [1, 0, 2])
        outputs = tf.transpose(tf.matmul(per_position, self.kernel), [1, 0, 2])
        outputs = tf.reshape(outputs, [-1, self.rows, self.cols, self.kernel.shape[-1]]) + self.bias
        return self.activation(outputs)


def _embedding_model(architecture: str, weights: str) -> tuple[keras.Model, keras.Model]:
    """(the tf-keras model with the user's weights, the model to export), both ending at the embedding."""
    if architecture == "vggface-vgg16":
        model = vggface_vgg16()
        model.load_weights(weights, by_name=True)  # as keras-vggface does
        return model, model
    if architecture == "vggface-resnet50":
        model = vggface_resnet50()
        model.load_weights(weights)  # keras-vggface loads ResNet-50 weights in layer order
        return model, model
    if architecture == "deepface":
        full = deepface_taigman()
        full.load_weights(weights)
        embedding_layer = full.get_layer("F7")
        reference = keras.Model(full.inputs, embedding_layer.output)
        x = image = layers.Input((152, 152, 3))
        for layer in full.layers:
            x = PatchwiseDense(layer)(x) if isinstance(layer, layers.LocallyConnected2D) else layer(x)
            if layer is embedding_layer:
                break
        return reference, keras.Model(image, x)
    raise ValueError(f"unknown Keras architecture {architecture!r}")


def export_keras(job: dict, probe: np.ndarray) -> tuple[bytes, np.ndarray]:
    reference_model, export_model = _embedding_model(job["architecture"], job["source"]["weights"])
    reference = reference_model(probe, training=False).numpy()
    signature = [tf.TensorSpec([None, *export_model.input_shape[1:]], tf.float32, name="input")]
    model, _ = tf2onnx.convert.from_keras(export_model, input_signature=signature, opset=OPSET)
    return model.SerializeToString(), reference


def save_random_keras_weights(architecture: str, path: str, seed: int) -> None:
    """Save randomly initialised weights of an architecture as Keras 2 .h5 (used by the tests)."""
    keras.utils.set_random_seed(seed)
    builders = {"vggface-vgg16": vggface_vgg16, "vggface-resnet50": vggface_resnet50}
    builders["deepface"] = deepface_taigman
    model = builders[architecture]()
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
