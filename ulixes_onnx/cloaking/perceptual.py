"""Where a change to a face shows least: a per-pixel budget and an opponent colour basis.

The eye hides a change in texture and at edges (contrast masking) and sees it on flat skin; it is less
sensitive to colour than to lightness in the smooth, low-frequency changes a cloak makes. A cloak's
change is therefore bounded per pixel by a budget that grows with the local contrast of the original
and is held in an opponent basis (lightness, red-green, yellow-blue), with a smaller budget for the two
colour axes, which texture does not raise (it hides a change of lightness, not a shift of colour over it:
an iris keeps its pattern and changes colour; `loop.FaceState` applies the budgets). The basis is
orthonormal, so moving between it and RGB is its transpose.
"""

from __future__ import annotations

import cv2
import numpy as np

# Rows: lightness, red-green, yellow-blue (orthonormal: OPPONENT @ OPPONENT.T = I).
OPPONENT = np.array(
    [
        [1 / np.sqrt(3), 1 / np.sqrt(3), 1 / np.sqrt(3)],
        [1 / np.sqrt(2), -1 / np.sqrt(2), 0.0],
        [1 / np.sqrt(6), 1 / np.sqrt(6), -2 / np.sqrt(6)],
    ],
    dtype=np.float32,
)
# Local contrast is measured over this Gaussian window, in photo pixels (about what a viewer resolves
# at 1:1 without effort).
CONTRAST_WINDOW = 2.0
# The budget stays within this range of its value at the face's median contrast.
BUDGET_RANGE = (0.1, 4.0)


def to_opponent(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] float32 RGB -> [..., 3] opponent coordinates (same units)."""
    return _per_pixel(rgb, OPPONENT)


def to_rgb(opponent: np.ndarray) -> np.ndarray:
    """[..., 3] float32 opponent coordinates -> [..., 3] RGB."""
    return _per_pixel(opponent, OPPONENT.T)


def _per_pixel(values: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """`matrix` applied to every [..., 3] vector (OpenCV's per-pixel transform: several times faster
    than a matrix product with an inner size of 3)."""
    flat = np.ascontiguousarray(values, np.float32).reshape(-1, 1, 3)
    return cv2.transform(flat, matrix).reshape(values.shape)


def budget_map(canvas: np.ndarray, mask: np.ndarray, photo_pixels_per_canvas_pixel: float) -> np.ndarray:
    """[H, W] relative budget of a canvas (RGB, 0..255): 1 at the median contrast inside `mask`, more
    in texture and at edges, less on flat regions (bounded by BUDGET_RANGE)."""
    lightness = canvas @ np.array([0.299, 0.587, 0.114], np.float32)
    sigma = max(CONTRAST_WINDOW / photo_pixels_per_canvas_pixel, 0.7)
    mean = cv2.GaussianBlur(lightness, (0, 0), sigma)
    variance = cv2.GaussianBlur(lightness * lightness, (0, 0), sigma) - mean * mean
    contrast = np.sqrt(np.maximum(variance, 0.0))
    # A floor of one grey level: noise-free flat regions still get a small budget.
    contrast = cv2.GaussianBlur(contrast, (0, 0), sigma) + 1.0
    inside = mask > 0.5
    reference = float(np.median(contrast[inside])) if inside.any() else float(np.median(contrast))
    return np.clip(contrast / reference, *BUDGET_RANGE).astype(np.float32)
