"""dlib's ResNet-29 face recognition network (dlib_face_recognition_resnet_model_v1.dat) as ONNX.

The architecture is the `anet_type` of dlib's examples/dnn_face_recognition_ex.cpp. The ONNX graph takes
an RGB chip [N, 3, 150, 150] in 0..255 (as dlib.get_face_chip makes it), applies dlib's own input
normalisation (channel mean subtracted, divided by 256) and returns dlib's 128-d descriptor, which is not
L2-normalised (same person: Euclidean distance < 0.6). Affine (frozen batch-norm) layers are folded into
the convolution before them; dlib adds residuals of different sizes by zero-padding the smaller one at the
end of each axis, which the graph reproduces with Pad.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ulixes_onnx.zoo.dlib_format import DlibNetwork, Layer, LayerSpec, read_network

INPUT_NAME = "rgb"
OUTPUT_NAME = "embedding"
OPSET = 17


# block<N, affine, stride> = affine<con<N,3,3,1,1, relu<affine<con<N,3,3,stride,stride, SUBNET>>>>>;
# filter counts and strides are stored in the file, so the reader only needs the layer sequence.
_BLOCK = [LayerSpec("con"), LayerSpec("affine"), LayerSpec("relu"), LayerSpec("con"), LayerSpec("affine")]

# ares<N> = relu<add_prev1<block<N, affine, 1, tag1<SUBNET>>>>
_RESIDUAL = [LayerSpec("tag", 1), *_BLOCK, LayerSpec("add_prev", 1), LayerSpec("relu")]

# ares_down<N> = relu<add_prev2<avg_pool<2,2,2,2, skip1<tag2<block<N, affine, 2, tag1<SUBNET>>>>>>>
_RESIDUAL_DOWN = [
    LayerSpec("tag", 1),
    *_BLOCK,
    LayerSpec("tag", 2),
    LayerSpec("skip", 1),
    LayerSpec("avg_pool"),
    LayerSpec("add_prev", 2),
    LayerSpec("relu"),
]


def face_resnet_architecture() -> list[LayerSpec]:
    """The layers of dlib's face recognition ResNet in computation order, input first."""
    stem = [
        LayerSpec("input"),
        LayerSpec("con"),
        LayerSpec("affine"),
        LayerSpec("relu"),
        LayerSpec("max_pool"),
    ]
    # (down-sampling residuals, plain residuals) per level, from alevel4 to alevel0
    levels = [(0, 3), (1, 3), (1, 2), (1, 2), (1, 0)]
    body = [spec for downs, plains in levels for spec in _RESIDUAL_DOWN * downs + _RESIDUAL * plains]
    head = [LayerSpec("avg_pool"), LayerSpec("fc")]
    return stem + body + head


class _GraphWriter:
    """Collects nodes and initializers with unique, readable names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def constant(self, value: np.ndarray, prefix: str) -> str:
        name = self._name(prefix)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op_type: str, inputs: list[str], **attributes: object) -> str:
        output = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attributes))
        return output


def _pool_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _emit_graph(network: DlibNetwork) -> onnx.ModelProto:
    writer = _GraphWriter()
    input_params = network.layers[0].params
    height, width = input_params["size"] or (150, 150)

    mean = input_params["mean"].reshape(1, 3, 1, 1)
    current = writer.node("Sub", [INPUT_NAME, writer.constant(mean, "input_mean")])
    current = writer.node("Mul", [current, writer.constant(np.array(1 / 256, np.float32), "input_scale")])
    shape = (3, height, width)  # (channels, height, width) of `current`
    tagged: dict[int, tuple[str, tuple[int, int, int]]] = {}

    layers = network.layers[1:]
    index = 0
    while index < len(layers):
        layer = layers[index]
        kind = layer.spec.kind
        if kind == "con":
            following = layers[index + 1] if index + 1 < len(layers) else None
            folded = following if following and following.spec.kind == "affine" else None
            current, shape = _emit_conv(writer, current, shape, layer, folded)
            index += 2 if folded else 1
            continue
        if kind == "affine":
            gamma, beta = layer.params["gamma"], layer.params["beta"]
            current = writer.node("Mul", [current, writer.constant(gamma.reshape(1, -1, 1, 1), "g")])
            current = writer.node("Add", [current, writer.constant(beta.reshape(1, -1, 1, 1), "b")])
        elif kind == "relu":
            if not layer.params["disabled"]:
                current = writer.node("Relu", [current])
        elif kind == "tag":
            tagged[layer.spec.tag] = (current, shape)
        elif kind == "skip":
            current, shape = tagged[layer.spec.tag]
        elif kind == "add_prev":
            current, shape = _emit_zero_padded_add(writer, current, shape, *tagged[layer.spec.tag])
        elif kind in ("max_pool", "avg_pool"):
            current, shape = _emit_pool(writer, current, shape, layer)
        elif kind == "fc":
            current = writer.node("Flatten", [current], axis=1)
            current = writer.node("MatMul", [current, writer.constant(layer.params["weight"], "fc")])
            if layer.params["bias"] is not None:
                current = writer.node("Add", [current, writer.constant(layer.params["bias"], "fc_b")])
            shape = (layer.params["weight"].shape[1],)
        else:
            raise ValueError(f"no ONNX translation for dlib layer kind {kind!r}")
        index += 1

    writer.nodes.append(helper.make_node("Identity", [current], [OUTPUT_NAME], name=OUTPUT_NAME))
    graph = helper.make_graph(
        writer.nodes,
        "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, height, width])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", shape[0]])],
        writer.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ulixes-onnx"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _emit_conv(
    writer: _GraphWriter,
    current: str,
    shape: tuple[int, ...],
    conv: Layer,
    affine: Layer | None,
) -> tuple[str, tuple[int, int, int]]:
    params = conv.params
    weight, bias = params["weight"], params["bias"]
    if affine is not None:
        gamma, beta = affine.params["gamma"], affine.params["beta"]
        weight = weight * gamma[:, None, None, None]
        bias = bias * gamma + beta
    (kernel_h, kernel_w), (stride_h, stride_w) = params["kernel"], params["stride"]
    pad_h, pad_w = params["padding"]
    weight_name = writer.constant(weight.astype(np.float32), "conv_w")
    bias_name = writer.constant(bias.astype(np.float32), "conv_b")
    current = writer.node(
        "Conv",
        [current, weight_name, bias_name],
        kernel_shape=[kernel_h, kernel_w],
        strides=[stride_h, stride_w],
        pads=[pad_h, pad_w, pad_h, pad_w],
    )
    if params["fused_relu"]:
        current = writer.node("Relu", [current])
    out_shape = (
        weight.shape[0],
        _pool_size(shape[1], kernel_h, stride_h, pad_h),
        _pool_size(shape[2], kernel_w, stride_w, pad_w),
    )
    return current, out_shape


def _emit_pool(
    writer: _GraphWriter, current: str, shape: tuple[int, ...], layer: Layer
) -> tuple[str, tuple[int, int, int]]:
    (kernel_h, kernel_w), (stride_h, stride_w) = layer.params["kernel"], layer.params["stride"]
    pad_h, pad_w = layer.params["padding"]
    is_max = layer.spec.kind == "max_pool"
    if kernel_h == 0 and kernel_w == 0:  # dlib's "pool everything"
        current = writer.node("GlobalMaxPool" if is_max else "GlobalAveragePool", [current])
        return current, (shape[0], 1, 1)
    attributes: dict[str, object] = {
        "kernel_shape": [kernel_h, kernel_w],
        "strides": [stride_h, stride_w],
        "pads": [pad_h, pad_w, pad_h, pad_w],
    }
    if not is_max:
        attributes["count_include_pad"] = 0  # dlib averages only over pixels inside the image
    current = writer.node("MaxPool" if is_max else "AveragePool", [current], **attributes)
    out_shape = (
        shape[0],
        _pool_size(shape[1], kernel_h, stride_h, pad_h),
        _pool_size(shape[2], kernel_w, stride_w, pad_w),
    )
    return current, out_shape


def _emit_zero_padded_add(
    writer: _GraphWriter,
    current: str,
    shape: tuple[int, ...],
    other: str,
    other_shape: tuple[int, ...],
) -> tuple[str, tuple[int, ...]]:
    target = tuple(max(a, b) for a, b in zip(shape, other_shape, strict=True))

    def padded(name: str, size: tuple[int, ...]) -> str:
        if size == target:
            return name
        ends = [t - s for t, s in zip(target, size, strict=True)]
        pads = np.array([0, 0, 0, 0, 0, *ends], np.int64)
        return writer.node("Pad", [name, writer.constant(pads, "pads")], mode="constant")

    return writer.node("Add", [padded(current, shape), padded(other, other_shape)]), target


def build_dlib_resnet(dat_bytes: bytes) -> onnx.ModelProto:
    """Rebuild dlib_face_recognition_resnet_model_v1.dat as an ONNX model (see module docstring)."""
    return _emit_graph(read_network(dat_bytes, face_resnet_architecture()))
