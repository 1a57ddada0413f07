"""Embeddings an attacker would compute from a photo: the largest face, aligned for each model, embedded."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ulixes_onnx.face_model import FaceModel
from ulixes_onnx.faces import MTCNN, extract_chips


class FaceEmbedder:
    """Detects the largest face in a photo once and embeds it with every evaluation model."""

    def __init__(self, detector: MTCNN, models: Sequence[FaceModel]) -> None:
        self.detector = detector
        self.models = list(models)

    def embed(self, rgb: np.ndarray) -> dict[str, np.ndarray] | None:
        """Each model's embedding of the photo's largest face; None when no face is found."""
        pixels = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
        faces = self.detector.detect(pixels)
        if not faces:
            return None
        largest = max(faces, key=lambda face: face.width * face.height)
        return {
            model.name: model.embed(extract_chips(pixels, [largest], model.chip_spec).chips)[0]
            for model in self.models
        }
