"""Pools of other people's face embeddings: the negatives of the paper's example-selection strategies.

The loss needs only embeddings, so a pool never stores images: it maps each model name to an array of
embeddings [M, D], saved as an .npz file together with each model's sha256 (a pool made with other
weights would point the cloak at meaningless targets, so it is refused).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from ulixes_onnx.atomic import write_atomically
from ulixes_onnx.errors import ImageError, UlixesError
from ulixes_onnx.face_model import FaceModel
from ulixes_onnx.faces import MTCNN, extract_chips
from ulixes_onnx.photos.decoding import read_photo

_SHA_SUFFIX = ".sha256"


class PoolError(UlixesError):
    """A pool cannot be built, read or used with these models."""


def build_pool(
    photos: Iterable[Path],
    models: Sequence[FaceModel],
    detector: MTCNN,
    on_skip: Callable[[Path, str], None] | None = None,
) -> dict[str, np.ndarray]:
    """Embeddings of every face found in `photos`, per model, in the same order for every model. A
    photo that cannot be read is left out and handed to `on_skip` with the reason."""
    collected: dict[str, list[np.ndarray]] = {model.name: [] for model in models}
    for path in photos:
        try:
            pixels = read_photo(path).rgb8
        except ImageError as error:
            if on_skip is not None:
                on_skip(path, str(error))
            continue
        faces = detector.detect(pixels)
        if not faces:
            continue
        for model in models:
            chips = extract_chips(pixels, faces, model.chip_spec).chips
            collected[model.name].append(model.embed(chips))
    pool = {name: np.concatenate(rows) for name, rows in collected.items() if rows}
    if not pool:
        raise PoolError("no face was found in the pool photos; give a folder of photos of other people")
    return pool


def save_pool(
    pool: dict[str, np.ndarray], models: Sequence[FaceModel], path: Path, *, overwrite: bool = True
) -> None:
    """Write `pool` with each model's sha256 to `path` atomically (without `overwrite`, an existing
    file is left alone and `FileExistsError` raised)."""
    arrays = {name: embeddings.astype(np.float32) for name, embeddings in pool.items()}
    for model in models:
        arrays[model.name + _SHA_SUFFIX] = np.array(model.built.sha256["model"])
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomically(buffer.getvalue(), path, overwrite=overwrite)


def load_pool(path: Path, models: Sequence[FaceModel]) -> dict[str, np.ndarray]:
    """The pool saved at `path`, checked against the models it will be used with."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise PoolError(f"{path}: not a readable pool file ({error}); build it again") from None
    pool = {}
    for model in models:
        if model.name not in arrays:
            raise PoolError(f"{path} has no embeddings for {model.name}; build the pool with that model")
        if str(arrays.get(model.name + _SHA_SUFFIX)) != model.built.sha256["model"]:
            raise PoolError(f"{path} was built with other {model.name} weights; build the pool again")
        pool[model.name] = arrays[model.name]
    return pool
