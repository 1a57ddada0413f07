"""TensorFlow Lite flatbuffers to ONNX (format "tflite"; see export_tensorflow.py).

tf2onnx's TFLite reader converts the flatbuffer. The reference is TensorFlow Lite's own interpreter,
run one probe chip at a time (the networks are stored with a batch of one), which reads the
flatbuffer independently of the converter.
"""

from __future__ import annotations

import export_setup
import numpy as np
import tensorflow as tf
import tf2onnx


def _interpreted(path: str, probe: np.ndarray) -> np.ndarray:
    # tf.lite.Interpreter is deprecated in favour of the ai-edge-litert package, but still in the pinned
    # TensorFlow 2.21: it is the reference only, and an upgrade that drops it fails the build loudly.
    interpreter = tf.lite.Interpreter(model_path=path)
    interpreter.allocate_tensors()
    (network_input,) = interpreter.get_input_details()
    (network_output,) = interpreter.get_output_details()
    if network_input["dtype"] != np.float32 or network_output["dtype"] != np.float32:
        raise ValueError(f"{path} is a quantised network (float32 in and out expected): use its float file")
    outputs = []
    for chip in probe:
        interpreter.set_tensor(network_input["index"], chip[None])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(network_output["index"])[0])
    return np.stack(outputs)


def export_tflite(job: dict, probe: np.ndarray) -> tuple[bytes, np.ndarray]:
    """The job's float32 flatbuffer as ONNX, and TensorFlow Lite's outputs on the probe chips."""
    path = job["source"]["model"]
    model, _ = tf2onnx.convert.from_tflite(path, opset=export_setup.OPSET)
    return model.SerializeToString(), _interpreted(path, probe)
