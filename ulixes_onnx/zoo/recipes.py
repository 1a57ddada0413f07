"""The conversion recipes: for each builder that converts a model from another framework, the export
script that runs it in the export toolchain, the source format, and the tensors it starts and ends at.

Kept apart from conversion.py (which imports onnx, onnxruntime and OpenCV) so that the builder table
in zoo/__init__.py can list the converted builders without loading the conversion machinery.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """How to convert one kind of source: which export script, which format, which tensors."""

    script: str
    source_format: str
    source_input: str = ""
    source_output: str = ""
    architecture: str = ""


RECIPES: dict[str, Recipe] = {
    "facenet-graphdef": Recipe("export_tensorflow.py", "graphdef", "input:0", "embeddings:0"),
    "faceres-tfjs": Recipe("export_tensorflow.py", "tfjs", "input_1", "global_pooling/Mean"),
    "vggface-vgg16-h5": Recipe("export_tensorflow.py", "keras", architecture="vggface-vgg16"),
    "vggface-resnet50-h5": Recipe("export_tensorflow.py", "keras", architecture="vggface-resnet50"),
    "deepface-h5": Recipe("export_tensorflow.py", "keras", architecture="deepface"),
    "facenet-keras-h5": Recipe("export_tensorflow.py", "keras", architecture="facenet-keras"),
    "facelib-tflite": Recipe("export_tensorflow.py", "tflite"),
    "facenet-pytorch": Recipe("export_torch.py", "state-dict", architecture="inception-resnet-v1"),
    "memento-face-torch": Recipe("export_torch.py", "state-dict", architecture="memento-face"),
    "lightcnn-torch": Recipe("export_torch.py", "state-dict", architecture="lightcnn-v4"),
}
