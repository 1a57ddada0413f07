"""Random weights of facenet-pytorch's InceptionResnetV1, saved as a state dict (for the tests).

Runs in the export toolchain's interpreter, like the exporter whose model class it uses:

    python random_state_dict.py JOB.json   (job: output path, seed, number of classes)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# The exporters are scripts in ulixes_onnx/zoo, importable by name from there.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ulixes_onnx" / "zoo"))

import export_torch
import torch


def save_random_state_dict(path: str, seed: int, classes: int) -> None:
    """Save a randomly initialised InceptionResnetV1 state dict with a classifier."""
    torch.manual_seed(seed)
    model = export_torch.inception_resnet_v1_class()(classify=False, num_classes=classes)
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            # Non-trivial running statistics, so that a mix-up of batch-norm buffers would show.
            module.running_mean.normal_(0.0, 0.1, generator=generator)
            module.running_var.uniform_(0.5, 1.5, generator=generator)
    torch.save(model.state_dict(), path)


if __name__ == "__main__":
    job = json.loads(Path(sys.argv[1]).read_text())
    save_random_state_dict(job["output"], job["seed"], job["classes"])
