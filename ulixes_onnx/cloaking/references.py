"""The person's other photos: every face is also cloaked away from them, and judged against them.

A cloak pushed only away from the original photo can still land near another photo of the same
person (one person's photos lie about 0.4 apart for dlib-resnet), and that photo would then match it.
Given a few other photos of the person, the loop pushes each face away from whichever of them and the
original is nearest, and a face counts as protected only once it is far enough from all of them.
Like a pool, references are embeddings only; each photo contributes its largest face (the person).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ulixes_onnx.cloaking.files import find_inputs
from ulixes_onnx.errors import UlixesError, UsageError
from ulixes_onnx.face_model import FaceModel
from ulixes_onnx.faces import MTCNN, extract_chips
from ulixes_onnx.photos.decoding import read_photo


class ReferencePhotoError(UsageError):
    """A reference photo cannot be used (the command stops before cloaking anything)."""


def embed_references(
    photos: Iterable[Path], models: Sequence[FaceModel], detector: MTCNN
) -> dict[str, np.ndarray]:
    """Embeddings [R, D] per model of the largest face of each reference photo."""
    collected: dict[str, list[np.ndarray]] = {model.name: [] for model in models}
    for path in photos:
        try:
            pixels = read_photo(path).rgb8
        except UlixesError as error:
            raise ReferencePhotoError(f"reference photo {path}: {error}") from None
        faces = detector.detect(pixels)
        if not faces:
            raise ReferencePhotoError(f"reference photo {path}: no face found; give photos of your own face")
        largest = max(faces, key=lambda face: face.width * face.height)
        for model in models:
            collected[model.name].append(model.embed(extract_chips(pixels, [largest], model.chip_spec).chips))
    if not any(collected.values()):
        raise ReferencePhotoError("no reference photo given")
    return {name: np.concatenate(rows) for name, rows in collected.items()}


def references_from_paths(
    arguments: Sequence[str], models: Sequence[FaceModel], detector: MTCNN
) -> dict[str, np.ndarray]:
    """`embed_references` of the photos named by files and folders (as the cloak command finds its
    inputs); a named file that cannot be used is an error, not left out."""
    found = find_inputs(arguments)
    for report in found.skipped:
        if str(report.source) in arguments:
            raise ReferencePhotoError(f"reference photo {report.source}: {report.skipped}")
    if not found.photos:
        raise ReferencePhotoError(f"no photos found in {', '.join(arguments)}")
    return embed_references([photo.path for photo in found.photos], models, detector)
