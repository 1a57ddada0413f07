"""PyTorch side of the model exporters: state dicts of known architectures to ONNX.

Runs as a script in the export toolchain's interpreter (see `toolchain.py`), like export_tensorflow.py,
and imports nothing from ulixes_onnx:

    python export_torch.py JOB.json

The job's architecture picks the network: "inception-resnet-v1" is facenet-pytorch's own class (the
package's __init__ also imports its MTCNN, which needs torchvision, whose PyPI wheels pin other torch
builds; the toolchain installs facenet-pytorch without dependencies and this script loads only the model
module, under a bare package object); "memento-face" is torch_efficientnet.py's EfficientNet-B0 (the
package builds it with torchvision, which the toolchain does not have); "lightcnn-v4" is
torch_lightcnn.py's LightCNN (the package's own module imports facenet-pytorch's MTCNN and SciPy).
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch_efficientnet
import torch_lightcnn

OPSET = 17


def inception_resnet_v1_class() -> type:
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("facenet-pytorch is not installed in the export toolchain")
    package = types.ModuleType("facenet_pytorch")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault("facenet_pytorch", package)
    from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1

    return InceptionResnetV1


def _embedding_model(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """InceptionResnetV1 with the state dict loaded strictly; it returns the L2-normalised 512-d embedding.

    The released state dicts include the identity classifier ("logits"); it is loaded (so that a file
    of another architecture fails loudly) but not exported: classify=False stops at the embedding.
    """
    classes = state["logits.weight"].shape[0] if "logits.weight" in state else None
    model = inception_resnet_v1_class()(classify=False, num_classes=classes)
    model.load_state_dict(state, strict=True)
    return model.eval()


ARCHITECTURES = {
    "inception-resnet-v1": _embedding_model,
    "memento-face": torch_efficientnet.memento_face,
    "lightcnn-v4": torch_lightcnn.lightcnn_v4,
}


def export_state_dict(job: dict) -> None:
    state = torch.load(job["source"]["weights"], map_location="cpu", weights_only=True)
    model = ARCHITECTURES[job["architecture"]](state)
    probe = torch.from_numpy(np.load(job["probe"]).astype(np.float32))
    started = time.perf_counter()
    with torch.no_grad():
        reference = model(probe).numpy()
        buffer = io.BytesIO()
        torch.onnx.export(
            model,
            (probe[:1],),
            buffer,
            input_names=["input"],
            output_names=["embedding"],
            dynamic_axes={"input": {0: "N"}, "embedding": {0: "N"}},
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter: plain standard operators, stable node names
        )
    Path(job["onnx"]).write_bytes(buffer.getvalue())
    np.save(job["reference"], reference.astype(np.float32))
    Path(job["report"]).write_text(json.dumps({"seconds": time.perf_counter() - started}))


def main(job_path: str) -> None:
    export_state_dict(json.loads(Path(job_path).read_text()))


if __name__ == "__main__":
    main(sys.argv[1])
