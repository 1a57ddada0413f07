"""A face found in a photo, and the photos faces are looked for in.

Coordinates: a pixel in row r and column c covers [c, c+1) x [r, r+1), so a box (x0, y0, x1, y1) is
x1 - x0 pixels wide; landmarks use the same system.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ulixes_onnx.errors import ImageError


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face.

    `box` is (x0, y0, x1, y1) clipped to the photo, `landmarks` a float64 [5, 2] array of (x, y) for
    left eye, right eye, nose, left mouth corner and right mouth corner (left/right as seen in the
    photo); landmarks are not clipped and may lie outside the photo for faces cut by its border.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]


def as_rgb_uint8(photo: np.ndarray) -> np.ndarray:
    """Check that `photo` is an 8-bit RGB (or grayscale) image and return it as HxWx3 uint8."""
    if not isinstance(photo, np.ndarray) or photo.dtype != np.uint8:
        raise ImageError("faces can only be found in 8-bit photos; convert the image to uint8 first")
    if photo.ndim == 3 and photo.shape[2] == 1:
        photo = photo[:, :, 0]
    if photo.ndim == 2:
        return np.repeat(photo[:, :, None], 3, axis=2)
    if photo.ndim != 3 or photo.shape[2] != 3:
        raise ImageError(
            f"a photo must be HxW or HxWx3, not shape {photo.shape}; drop the alpha channel first"
        )
    if photo.shape[0] == 0 or photo.shape[1] == 0:
        raise ImageError("the photo is empty (zero width or height)")
    return photo
