"""Built-in real photos (shipped in ulixes_onnx/sample_photos): the astronaut Eileen Collins (NASA,
public domain) and a cameraman (Lav Varshney, CC0), used by `models check`, the demo and the benchmarks
when the user gives no photos."""

from __future__ import annotations

import cv2
import numpy as np

from ulixes_onnx import sample_photos


def astronaut() -> np.ndarray:
    """512x512 RGB uint8 photo with one face."""
    return sample_photos.read("astronaut.png")


def cameraman() -> np.ndarray:
    """512x512 photo of another person, as RGB uint8 (the original is grayscale)."""
    return np.repeat(sample_photos.read("cameraman.png")[:, :, None], 3, axis=2)


def shifted(photo: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """The photo moved by a sub-pixel offset (edges repeated), as a camera shake would."""
    matrix = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
    height, width = photo.shape[:2]
    return cv2.warpAffine(
        photo, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def rescaled(photo: np.ndarray, factor: float) -> np.ndarray:
    """The photo resized by `factor` with area averaging, as an upload pipeline would."""
    return cv2.resize(photo, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
