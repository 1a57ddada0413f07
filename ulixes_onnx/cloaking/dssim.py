"""DSSIM = (1 - SSIM) / 2: how visible a cloak is, for the loop's stopping rule and the reports.

SSIM is scikit-image's `structural_similarity` with its defaults (Wang et al. 2004: a 7x7 uniform
window, sample covariances, K1 = 0.01, K2 = 0.03, averaged over the pixels whose window lies inside the
image, channels averaged), computed with OpenCV's box filter: the cloaking loop measures every candidate
step, and scikit-image's implementation takes about a third of a step's time. Tests hold the two equal.
"""

from __future__ import annotations

import cv2
import numpy as np

WINDOW = 7
_K1, _K2 = 0.01, 0.03


# Rows of SSIM map computed at a time: a large face region in a photo of many megapixels would
# otherwise need a dozen float32 temporaries of its full size.
_STRIP_ROWS = 256


def _local_mean(planes: np.ndarray) -> np.ndarray:
    # Planes [K, H, W] stacked into one tall image: a window crosses into the next plane only within
    # WINDOW // 2 rows of a plane's edge, and those rows are not averaged.
    count, height, width = planes.shape
    return cv2.blur(planes.reshape(count * height, width), (WINDOW, WINDOW)).reshape(planes.shape)


def _ssim_sums(x: np.ndarray, y: np.ndarray, data_range: float) -> np.ndarray:
    """Per plane, the sum of the SSIM map over the pixels whose window lies inside [K, H, W]."""
    mean_x, mean_y = _local_mean(x), _local_mean(y)
    sample = np.float32(WINDOW**2 / (WINDOW**2 - 1))
    var_x = sample * (_local_mean(x * x) - mean_x * mean_x)
    var_y = sample * (_local_mean(y * y) - mean_y * mean_y)
    cov = sample * (_local_mean(x * y) - mean_x * mean_y)
    c1, c2 = np.float32((_K1 * data_range) ** 2), np.float32((_K2 * data_range) ** 2)
    ssim = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)) / (
        (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    )
    pad = WINDOW // 2
    return ssim[:, pad:-pad, pad:-pad].sum(axis=(1, 2), dtype=np.float64)


def plane_ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> np.ndarray:
    """Mean SSIM of each pair of planes [K, H, W] (H and W at least `WINDOW`), computed in float32
    (as scikit-image does for float32 images) a strip of rows at a time."""
    if a.shape != b.shape or a.ndim != 3 or min(a.shape[1:]) < WINDOW:
        raise ValueError(f"need two equal [K, H, W] stacks with H, W >= {WINDOW}, got {a.shape}, {b.shape}")
    _, height, width = a.shape
    pad = WINDOW // 2
    sums = np.zeros(a.shape[0])
    for top in range(pad, height - pad, _STRIP_ROWS):
        # The map's rows [top, bottom) need the image rows within `pad` of them.
        rows = slice(top - pad, min(top + _STRIP_ROWS, height - pad) + pad)
        sums += _ssim_sums(np.asarray(a[:, rows], np.float32), np.asarray(b[:, rows], np.float32), data_range)
    return sums / ((height - 2 * pad) * (width - 2 * pad))


def batch_dssim(chips: np.ndarray, originals: np.ndarray) -> np.ndarray:
    """DSSIM of each canonical chip [N, C, H, W] (values in [-1, 1]) against its original."""
    count, channels = chips.shape[:2]
    per_plane = plane_ssim(
        chips.reshape(count * channels, *chips.shape[2:]),
        originals.reshape(count * channels, *originals.shape[2:]),
        data_range=2.0,
    )
    return (1.0 - per_plane.reshape(count, channels).mean(axis=1)) / 2.0


def chip_dssim(chip: np.ndarray, original: np.ndarray) -> float:
    """DSSIM between two canonical chips [C, H, W]."""
    return float(batch_dssim(chip[None], original[None])[0])


def image_dssim(a: np.ndarray, b: np.ndarray) -> float:
    """DSSIM between two HxWx3 (or HxW) images in 0..255 units; 0 or 1 (changed) below the window size."""
    if min(a.shape[:2]) < WINDOW:
        return float(np.any(np.asarray(a, np.float32) != np.asarray(b, np.float32)))
    return float((1.0 - plane_ssim(_planes(a), _planes(b), data_range=255.0).mean()) / 2.0)


def _planes(image: np.ndarray) -> np.ndarray:
    return image[None] if image.ndim == 2 else np.moveaxis(image, 2, 0)
