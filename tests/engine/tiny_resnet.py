"""A small random ResNet in dlib's style (folded batch norm, max pool stem, residual blocks with average
pooled, zero-padded skips, global average pooling, a linear embedding), for engine tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

INPUT_NAME = "rgb"
OUTPUT_NAME = "embedding"
CHIP_SIZE = 32
EMBEDDING_SIZE = 8


class _Writer:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def constant(self, value: np.ndarray, dtype: type = np.float32) -> str:
        name = self.name("w")
        self.initializers.append(numpy_helper.from_array(value.astype(dtype), name))
        return name

    def node(self, op_type: str, inputs: list[str], **attributes) -> str:
        output = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attributes))
        return output

    def conv(self, x: str, channels_in: int, channels_out: int, stride: int = 1) -> str:
        # He initialisation keeps activations (and so gradients) of a similar size in every layer.
        weight = self.rng.standard_normal((channels_out, channels_in, 3, 3)) * np.sqrt(2 / (9 * channels_in))
        bias = self.rng.standard_normal(channels_out) * 0.1
        return self.node(
            "Conv",
            [x, self.constant(weight), self.constant(bias)],
            pads=[1, 1, 1, 1],
            strides=[stride, stride],
        )


def tiny_resnet(seed: int = 0) -> onnx.ModelProto:
    """rgb [N, 3, 32, 32] in 0..255 -> embedding [N, 8]; normalised inside like dlib's network."""
    w = _Writer(seed)
    mean = w.constant(np.array([122.8, 117.0, 104.1]).reshape(1, 3, 1, 1))
    x = w.node("Mul", [w.node("Sub", [INPUT_NAME, mean]), w.constant(np.array(1 / 64))])
    x = w.node("Relu", [w.conv(x, 3, 8, stride=2)])
    x = w.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    block = w.conv(w.node("Relu", [w.conv(x, 8, 8)]), 8, 8)
    x = w.node("Relu", [w.node("Add", [block, x])])
    block = w.conv(w.node("Relu", [w.conv(x, 8, 16, stride=2)]), 16, 16)
    skip = w.node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
    # dlib grows the skip's channels by zero padding at the end of the channel axis.
    skip = w.node("Pad", [skip, w.constant(np.array([0, 0, 0, 0, 0, 8, 0, 0]), np.int64)])
    x = w.node("Relu", [w.node("Add", [block, skip])])
    x = w.node("Flatten", [w.node("GlobalAveragePool", [x])])
    projection = w.rng.standard_normal((16, EMBEDDING_SIZE)) / 4
    w.nodes.append(helper.make_node("MatMul", [x, w.constant(projection)], [OUTPUT_NAME], name=OUTPUT_NAME))
    graph = helper.make_graph(
        w.nodes,
        "tiny_resnet",
        [helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, ["N", 3, CHIP_SIZE, CHIP_SIZE])],
        [helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, ["N", EMBEDDING_SIZE])],
        w.initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
