"""dlib's own chip placement as a photo -> chip matrix (test-only: dlib is the reference)."""

from __future__ import annotations

import cv2
import numpy as np

from tests.dlib_reference import dlib, reference_models


def dlib_chip_matrix(details) -> np.ndarray:
    """The 2x3 photo -> chip matrix of a dlib chip_details, built the way dlib's extractor does:
    the chip's corner pixels go to the corners of `details.rect` rotated by `details.angle`.
    """
    rect = details.rect
    centre = np.array([(rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2])
    cos, sin = np.cos(details.angle), np.sin(details.angle)
    rotation = np.array([[cos, -sin], [sin, cos]])

    def corner(x: float, y: float) -> np.ndarray:
        return centre + rotation @ (np.array([x, y]) - centre)

    top_left = corner(rect.left(), rect.top())
    top_right = corner(rect.right(), rect.top())
    bottom_left = corner(rect.left(), rect.bottom())
    chip_to_photo = np.stack(
        [
            (top_right - top_left) / (details.cols - 1),
            (bottom_left - top_left) / (details.rows - 1),
            top_left,
        ],
        axis=1,
    )
    return cv2.invertAffineTransform(chip_to_photo)


def dlib_pipeline(photo: np.ndarray, upsample: int = 0) -> list[tuple]:
    """(HOG box, chip matrix, uint8 chip) for every face dlib-bin finds, via get_face_chip(150, 0.25)."""
    detector, predictor, _ = reference_models()
    photo = np.ascontiguousarray(photo)
    results = []
    for box in detector(photo, upsample):
        shape = predictor(photo, box)
        matrix = dlib_chip_matrix(dlib.get_face_chip_details(shape, 150, 0.25))
        chip = np.asarray(dlib.get_face_chip(photo, shape, size=150, padding=0.25))
        results.append(((box.left(), box.top(), box.right(), box.bottom()), matrix, chip))
    return results


def to_uint8_chip(chip: np.ndarray) -> np.ndarray:
    """Canonical [3, S, S] chip -> uint8 HWC, as dlib's network takes it."""
    pixels = np.rint((chip.transpose(1, 2, 0) + 1) * 127.5)
    return np.ascontiguousarray(np.clip(pixels, 0, 255).astype(np.uint8))
