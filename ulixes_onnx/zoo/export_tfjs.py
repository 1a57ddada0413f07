"""TFJS graph models to ONNX (format "tfjs"; see export_tensorflow.py).

A TFJS graph model (model.json plus weight shards) is converted by tf2onnx's TFJS reader. The
reference runs the same nodes rebuilt as a TensorFlow graph, with weights decoded independently.
"""

from __future__ import annotations

import json
from pathlib import Path

import export_setup
import numpy as np
import tensorflow as tf
import tf2onnx
from google.protobuf import json_format
from tf2onnx import tfonnx


def _run_graph_def(graph_def: tf.compat.v1.GraphDef, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(output, feeds)


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
        opset=export_setup.OPSET,
        input_names=[f"{input_name}:0"],
        output_names=[f"{output_name}:0"],
        tfjs_path=str(model_json),
    )
    model = tf2onnx.optimizer.optimize_graph(graph).make_model(f"converted from {model_json.name}")
    return model.SerializeToString(), reference
