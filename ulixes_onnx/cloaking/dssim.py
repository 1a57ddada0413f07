"""DSSIM = (1 - SSIM) / 2: how visible a cloak is, for the loop's stopping rule and the reports.

SSIM is scikit-image's `structural_similarity` with its defaults (Wang et al. 2004: a 7x7 uniform
window, sample covariances, K1 = 0.01, K2 = 0.03, averaged over the pixels whose window lies inside the
image, channels averaged), computed with OpenCV's box filter: the cloaking loop measures every candidate
step, and scikit-image's implementation takes about a third of a step's time. Tests hold the two equal.
`DssimReference` keeps the original's half of the work (its local means and variances) for measuring
many changed copies of one original, as the loop does with each face's canvas.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

WINDOW = 7
_K1, _K2 = 0.01, 0.03
# Local variances are sample variances (scikit-image's default).
_SAMPLE = np.float32(WINDOW**2 / (WINDOW**2 - 1))

# Rows of SSIM map computed at a time: a large face region in a photo of many megapixels would
# otherwise need a dozen float32 temporaries of its full size.
_STRIP_ROWS = 256


def _local_mean(planes: np.ndarray, out: np.ndarray) -> np.ndarray:
    # Planes [K, H, W] stacked into one tall image: a window crosses into the next plane only within
    # WINDOW // 2 rows of a plane's edge, and those rows are not averaged.
    count, height, width = planes.shape
    cv2.blur(planes.reshape(count * height, width), (WINDOW, WINDOW), dst=out.reshape(count * height, width))
    return out


class _Maps:
    """Float32 maps of up to one strip's size, reused strip after strip: allocating a dozen maps for
    every measurement took a third of its time."""

    def __init__(self, count: int, planes: int, rows: int, width: int) -> None:
        self._flat = [np.empty(planes * rows * width, np.float32) for _ in range(count)]

    def of_shape(self, shape: tuple[int, ...]) -> list[np.ndarray]:
        size = int(np.prod(shape))
        return [flat[:size].reshape(shape) for flat in self._flat]


@dataclass(frozen=True)
class _OriginalStrip:
    """The original's side of one strip of planes [K, rows, W]: its values, local means and sample
    variances."""

    planes: np.ndarray
    mean: np.ndarray
    variance: np.ndarray


def _original_strip(planes: np.ndarray, maps: list[np.ndarray]) -> _OriginalStrip:
    """The original's side of a strip, in `maps` (four of the strip's shape; the last is scratch)."""
    x, mean, variance, product = maps
    np.copyto(x, planes, casting="unsafe")
    _local_mean(x, out=mean)
    _local_mean(np.square(x, out=product), out=variance)
    variance -= np.square(mean, out=product)
    variance *= _SAMPLE
    return _OriginalStrip(x, mean, variance)


def _ssim_sums(original: _OriginalStrip, changed: np.ndarray, data_range: float, maps: _Maps) -> np.ndarray:
    """Per plane, the sum of the SSIM map over the pixels whose window lies inside [K, H, W]."""
    y, mean_y, covariance, variances, product = maps.of_shape(original.planes.shape)
    np.copyto(y, changed, casting="unsafe")
    _local_mean(y, out=mean_y)
    c1, c2 = np.float32((_K1 * data_range) ** 2), np.float32((_K2 * data_range) ** 2)
    # ((2 mx my + c1) (2 cov + c2)) / ((mx^2 + my^2 + c1) (var_x + var_y + c2)), in place, rounded as
    # the formula written out is (doubling is exact: 2 (mx my) is (2 mx) my).
    _local_mean(np.multiply(original.planes, y, out=product), out=covariance)
    means_product = np.multiply(original.mean, mean_y, out=product)
    covariance -= means_product
    covariance *= _SAMPLE
    covariance *= 2
    covariance += c2
    _local_mean(np.square(y, out=y), out=variances)
    squared_mean_y = np.square(mean_y, out=mean_y)
    variances -= squared_mean_y
    variances *= _SAMPLE
    variances += original.variance
    variances += c2
    numerator = means_product
    numerator *= 2
    numerator += c1
    numerator *= covariance
    denominator = squared_mean_y
    denominator += np.square(original.mean, out=covariance)
    denominator += c1
    denominator *= variances
    numerator /= denominator
    pad = WINDOW // 2
    return numerator[:, pad:-pad, pad:-pad].sum(axis=(1, 2), dtype=np.float64)


def _check_planes(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.ndim != 3 or min(a.shape[1:]) < WINDOW:
        raise ValueError(f"need two equal [K, H, W] stacks with H, W >= {WINDOW}, got {a.shape}, {b.shape}")


def _strips(height: int) -> Iterator[slice]:
    """The image rows of each strip: its map rows [top, bottom) and the rows within `pad` of them."""
    pad = WINDOW // 2
    for top in range(pad, height - pad, _STRIP_ROWS):
        yield slice(top - pad, min(top + _STRIP_ROWS, height - pad) + pad)


def _strip_maps(count: int, shape: tuple[int, ...]) -> _Maps:
    planes, height, width = shape
    return _Maps(count, planes, min(height, _STRIP_ROWS + 2 * (WINDOW // 2)), width)


def _map_pixels(shape: tuple[int, ...]) -> int:
    """The pixels of a plane of [K, H, W] whose window lies inside it."""
    pad = WINDOW // 2
    return (shape[1] - 2 * pad) * (shape[2] - 2 * pad)


def _mean_of_sums(sums: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return sums / _map_pixels(shape)


def plane_ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> np.ndarray:
    """Mean SSIM of each pair of planes [K, H, W] (H and W at least `WINDOW`), computed in float32
    (as scikit-image does for float32 images) a strip of rows at a time, and only around the pixels
    that differ: a window with no change in it has SSIM exactly 1 (its local statistics are the
    same on both sides), so those pixels count as 1 unmeasured."""
    _check_planes(a, b)
    # A change reaches the SSIM of pixels up to `pad` away, whose windows reach `pad` farther.
    span = changed_span(np.any(a != b, axis=0), 2 * (WINDOW // 2))
    if span is None:
        return np.ones(a.shape[0])
    crop = (slice(None), *span)
    sums = _sums_of_planes(a[crop], b[crop], data_range)
    unmeasured = _map_pixels(a.shape) - _map_pixels(a[crop].shape)
    return _mean_of_sums(sums + unmeasured, a.shape)


def changed_span(differs: np.ndarray, reach: int) -> tuple[slice, slice] | None:
    """The rows and columns of the box around the true pixels of `differs` [H, W], grown by `reach`
    pixels on every side within the image; None when nothing differs."""
    rows, cols = np.flatnonzero(differs.any(axis=1)), np.flatnonzero(differs.any(axis=0))
    if not rows.size:
        return None
    height, width = differs.shape
    return (
        slice(max(int(rows[0]) - reach, 0), min(int(rows[-1]) + 1 + reach, height)),
        slice(max(int(cols[0]) - reach, 0), min(int(cols[-1]) + 1 + reach, width)),
    )


def _sums_of_planes(a: np.ndarray, b: np.ndarray, data_range: float) -> np.ndarray:
    """Per plane, the sum of the SSIM map of [K, H, W] over the pixels whose window lies inside."""
    originals, changed = _strip_maps(4, a.shape), _strip_maps(5, a.shape)
    sums = np.zeros(a.shape[0])
    for rows in _strips(a.shape[1]):
        original = _original_strip(a[:, rows], originals.of_shape(a[:, rows].shape))
        sums += _ssim_sums(original, b[:, rows], data_range, changed)
    return sums


class PlaneReference:
    """Original planes [K, H, W] (H and W at least `WINDOW`) prepared once, their local means and
    variances kept, for the mean SSIM of many changed copies: `ssim(b)` equals `plane_ssim(a, b)`. It
    reuses its scratch maps, so one thread at a time."""

    def __init__(self, planes: np.ndarray, data_range: float) -> None:
        _check_planes(planes, planes)
        self.shape = planes.shape
        self.data_range = data_range
        self._strips = []
        for rows in _strips(planes.shape[1]):
            strip = planes[:, rows]
            maps = [np.empty(strip.shape, np.float32) for _ in range(4)]
            self._strips.append((rows, _original_strip(strip, maps)))
        self._maps = _strip_maps(5, planes.shape)

    def ssim(self, changed: np.ndarray) -> np.ndarray:
        """Mean SSIM of each plane of `changed` [K, H, W] against the original's."""
        if changed.shape != self.shape:
            raise ValueError(f"changed planes have shape {changed.shape}, the original {self.shape}")
        sums = np.zeros(self.shape[0])
        for rows, original in self._strips:
            sums += _ssim_sums(original, changed[:, rows], self.data_range, self._maps)
        return _mean_of_sums(sums, self.shape)


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
        return _changed(a, b)
    return _dssim(plane_ssim(_planes(a), _planes(b), data_range=255.0))


class DssimReference:
    """An original image (HxWx3 or HxW, black at 0 and white at `data_range`) prepared once for the
    DSSIM of many changed copies of it: `dssim(b)` equals `image_dssim` of the two on the 0..255 scale
    (SSIM's constants follow the range; its luminance term is not shift-invariant, so black must be
    0). One thread at a time."""

    def __init__(self, original: np.ndarray, data_range: float = 255.0) -> None:
        self.shape = original.shape
        self._small = original if min(original.shape[:2]) < WINDOW else None
        self._planes = None if self._small is not None else PlaneReference(_planes(original), data_range)

    def dssim(self, changed: np.ndarray) -> float:
        """DSSIM of `changed` (of the original's shape) against the original."""
        if changed.shape != self.shape:
            raise ValueError(f"changed image has shape {changed.shape}, the original {self.shape}")
        if self._planes is None:
            return _changed(self._small, changed)
        return _dssim(self._planes.ssim(_planes(changed)))


def _changed(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.any(np.asarray(a, np.float32) != np.asarray(b, np.float32)))


def _dssim(ssim: np.ndarray) -> float:
    return float((1.0 - ssim.mean()) / 2.0)


def _planes(image: np.ndarray) -> np.ndarray:
    return image[None] if image.ndim == 2 else np.moveaxis(image, 2, 0)
