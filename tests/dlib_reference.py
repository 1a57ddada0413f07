"""dlib-bin's own face pipeline, the test-only reference for the converted model and the alignment."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pytest

from ulixes_onnx.cards import get_card
from ulixes_onnx.store import ModelStore

dlib = pytest.importorskip("dlib", reason="dlib-bin (test extra) is the reference implementation")


def _data_file(model: str) -> str:
    """The card's source file in its installed data package, sha256-checked by the store."""
    (path,) = ModelStore().source_paths(get_card(model)).values()
    return str(path)


@cache
def reference_models() -> tuple:
    return (
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(_data_file("dlib-landmarks")),
        dlib.face_recognition_model_v1(_data_file("dlib-resnet")),
    )


def read_rgb(path: Path, max_side: int = 1000) -> np.ndarray:
    """A photo as uint8 RGB, shrunk so that dlib's HOG detector stays fast."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    scale = max_side / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image[:, :, ::-1])


def dlib_chips(image: np.ndarray) -> list[np.ndarray]:
    """dlib.get_face_chip(size=150, padding=0.25) for every face dlib's HOG detector finds."""
    detector, predictor, _ = reference_models()
    image = np.ascontiguousarray(image)
    return [
        np.asarray(dlib.get_face_chip(image, predictor(image, box), size=150, padding=0.25))
        for box in detector(image, 1)
    ]


def dlib_descriptor(chip: np.ndarray) -> np.ndarray:
    return np.asarray(reference_models()[2].compute_face_descriptor(np.ascontiguousarray(chip)))
