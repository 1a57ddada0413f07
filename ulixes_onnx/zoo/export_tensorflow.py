"""The TensorFlow side of the model exporters, run as a script in the export toolchain's interpreter
(see `toolchain.py`), never inside the ulixes-onnx process: it imports TensorFlow, tf-keras and
tf2onnx, which are not run-time dependencies, and nothing from ulixes_onnx (the export interpreter
need not have it installed).

    python export_tensorflow.py JOB.json

The job names the source format and files, the output ONNX path, a probe batch (.npy, NHWC float32 in
the network's native convention) and where to write the source framework's own outputs on that probe;
the caller compares them with onnxruntime's. One module per format: "graphdef" (export_graphdef.py:
FaceNet's frozen graphs and TensorFlow 1 checkpoints), "tfjs" (export_tfjs.py: TFJS graph models) and
"keras" (export_keras.py: Keras 2 .h5 weights of known architectures, or a whole saved FaceNet) and
"tflite" (export_tflite.py: TensorFlow Lite flatbuffers). Each
sets up TensorFlow's environment through export_setup.py before TensorFlow loads.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import export_graphdef
import export_keras
import export_tfjs
import export_tflite
import numpy as np

EXPORTERS = {
    "graphdef": export_graphdef.export_graph_def,
    "tfjs": export_tfjs.export_tfjs,
    "keras": export_keras.export_keras,
    "tflite": export_tflite.export_tflite,
}


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    probe = np.load(job["probe"]).astype(np.float32)
    started = time.perf_counter()
    model, reference = EXPORTERS[job["format"]](job, probe)
    Path(job["onnx"]).write_bytes(model)
    np.save(job["reference"], reference.astype(np.float32))
    Path(job["report"]).write_text(json.dumps({"seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main(sys.argv[1])
