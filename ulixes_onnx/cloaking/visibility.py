"""How visible a change to a photo is to people: SSIMULACRA2 on the face region, at the photo's own
resolution.

SSIMULACRA2 (Sneyers, libjxl) scores a changed image against its original: 100 identical, 90 visually
lossless, 70 high quality, 50 medium (a JPEG re-encode at quality 90 of a face scores 85-95). It
compares the two in the XYB colour space (linear RGB through the opsin absorbance matrix and a cube
root) at six scales (2x2 box averages in linear RGB), with local statistics from a Gaussian blur
(sigma 1.5): per scale and channel an SSIM-like error map and two edge maps (edges the change added,
"artifact", and edges it removed, "detail lost"), each summarised by its mean and its 4-norm, weighted
by trained weights and mapped onto the 0-100 scale.

This implementation follows the PyPI package `ssimulacra2` (0.3.0; the tests hold the two within half a
point). Its blur mirrors the image at the top and bottom edges and pads it with zeros left and right
(the package says the opposite but transposes its XYB images). When an image is too small for six
scales (a side under 8 pixels at some scale), the weights are taken in sequence over the scales that
exist, as libjxl does, so small regions score as they do there. It computes in float32 with OpenCV;
`Ssimulacra2Reference` does the original's half of the work once, for scoring many changed copies of
one original (the cloaking loop's candidates); `ssimulacra2`, for one pair, measures only around the
pixels that differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from ulixes_onnx.cloaking.dssim import changed_span, image_dssim

SCALES = 6
# Below this many pixels on a side a scale is not measured (nor are smaller ones).
MIN_SIDE = 8

_BLUR_SIGMA = 1.5
_BLUR_RADIUS = 5  # the reference truncates its Gaussian at 3.33 sigma
_C2 = 0.0009

# Opsin absorbance: rows mix linear R, G, B into the three cone-like responses, plus a bias.
_OPSIN = np.array(
    [
        [0.30, 1.0 - 0.30 - 0.078, 0.078],
        [0.23, 1.0 - 0.23 - 0.078, 0.078],
        [0.24342268924547819, 0.20476744424496821, 1.0 - 0.24342268924547819 - 0.20476744424496821],
    ]
)
_OPSIN_BIAS = 0.0037930732552754493

# The trained weights, indexed [channel X/Y/B, scale, mean/4-norm, SSIM/artifact/detail lost].
_WEIGHTS = np.array(
    [
        [[0.0, 0.0007376606707406586, 0.0], [0.0, 0.0007793481682867309, 0.0]],
        [
            [0.0, 0.0004371155730107379, 0.0],
            [1.1041726426657346, 0.00066284834129271, 0.00015231632783718752],
        ],
        [[0.0, 0.0016406437456599754, 0.0], [1.8422455520539298, 11.441172603757666, 0.0]],
        [[0.0007989109436015163, 0.000176816438078653, 0.0], [1.8787594979546387, 10.94906990605142, 0.0]],
        [
            [0.0007289346991508072, 0.9677937080626833, 0.0],
            [0.00014003424285435884, 0.9981766977854967, 0.00031949755934435053],
        ],
        [[0.0004550992113792063, 0.0, 0.0], [0.0013648766163243398, 0.0, 0.0]],
        [[0.0, 0.0, 0.0], [7.466890328078848, 0.0, 17.445833984131262]],
        [[0.0006235601634041466, 0.0, 0.0], [6.683678146179332, 0.00037724407979611296, 1.027889937768264]],
        [[225.20515300849274, 0.0, 0.0], [19.213238186143016, 0.0011401524586618361, 0.001237755635509985]],
        [[176.39317598450694, 0.0, 0.0], [24.43300999870476, 0.28520802612117757, 0.0004485436923833408]],
        [[0.0, 0.0, 0.0], [34.77906344483772, 44.835625328877896, 0.0]],
        [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        [[0.0, 0.0008680556573291698, 0.0], [0.0, 0.0, 0.0]],
        [[0.0, 0.0005313191874358747, 0.0], [0.00016533814161379112, 0.0, 0.0]],
        [[0.0, 0.0, 0.0], [0.0004179171803251336, 0.0017290828234722833, 0.0]],
        [[0.0020827005846636437, 0.0, 0.0], [8.826982764996862, 23.19243343998926, 0.0]],
        [
            [95.1080498811086, 0.9863978034400682, 0.9834382792465353],
            [0.0012286405048278493, 171.2667255897307, 0.9807858872435379],
        ],
        [[0.0, 0.0, 0.0], [0.0005130064588990679, 0.0, 0.00010854057858411537]],
    ]
).ravel()


def _gaussian_kernel() -> np.ndarray:
    offsets = np.arange(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / _BLUR_SIGMA) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


_KERNEL = _gaussian_kernel()


def _srgb_to_linear_table() -> np.ndarray:
    return _srgb_to_linear(np.arange(256, dtype=np.float32))


def _srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """sRGB 0..255 to linear 0..1 (float32); values outside 0..255 follow the same two pieces."""
    scaled = values.astype(np.float32) * np.float32(1 / 255)
    curve = np.power((np.maximum(scaled, 0.04045) + np.float32(0.055)) * np.float32(1 / 1.055), 2.4)
    return np.where(scaled <= 0.04045, scaled * np.float32(1 / 12.92), curve).astype(np.float32)


_SRGB_TO_LINEAR = _srgb_to_linear_table()

# XYB made positive is affine in the cube roots of the opsin responses (their bias cancels in X and
# B-Y, and Y keeps it): X = 14 * (c0 - c1) / 2 + 0.42, Y = (c0 + c1) / 2 - cbrt(bias) + 0.01,
# B = c2 - (c0 + c1) / 2 + 0.55.
_CBRT_BIAS = float(np.cbrt(_OPSIN_BIAS))
_POSITIVE_XYB = np.array(
    [
        [7.0, -7.0, 0.0, 0.42],
        [0.5, 0.5, 0.0, 0.01 - _CBRT_BIAS],
        [-0.5, -0.5, 1.0, 0.55],
    ],
    dtype=np.float32,
)
_OPSIN_AFFINE = np.hstack([_OPSIN, np.full((3, 1), _OPSIN_BIAS)]).astype(np.float32)


def _linear_rgb(image: np.ndarray) -> np.ndarray:
    """An RGB (or gray) image in 0..255 units as contiguous float32 linear RGB, HxWx3."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.dtype == np.uint8:
        return cv2.LUT(image, _SRGB_TO_LINEAR)
    return _srgb_to_linear(image)


def _positive_xyb(linear: np.ndarray) -> np.ndarray:
    """Linear RGB [..., H, W, 3] to positive XYB, same shape."""
    rows = linear.reshape(-1, linear.shape[-2], 3)
    mixed = cv2.transform(rows, _OPSIN_AFFINE)
    np.maximum(mixed, 0, out=mixed)
    np.cbrt(mixed, out=mixed)
    return cv2.transform(mixed, _POSITIVE_XYB).reshape(linear.shape)


def _downsample(linear: np.ndarray) -> np.ndarray:
    """Halve [N, H, W, 3] by 2x2 averages; an odd last row or column averages the pixels it has."""
    count, height, width, _ = linear.shape
    if height % 2 or width % 2:
        linear = np.pad(linear, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        height, width = linear.shape[1:3]
    # Each image has an even height, so no 2x2 block of the stack crosses two images.
    halved = cv2.resize(
        np.ascontiguousarray(linear).reshape(count * height, width, 3),
        (width // 2, count * height // 2),
        interpolation=cv2.INTER_AREA,
    )
    return halved.reshape(count, height // 2, width // 2, 3)


_ONE_TAP = np.ones(1, np.float32)


def _blur(stack: np.ndarray) -> np.ndarray:
    """Gaussian blur of each image of [N, H, W, 3] with the reference's border rule: zero left and right
    of the image, mirrored above and below."""
    count, height, width, channels = stack.shape
    # Rows are independent in the horizontal pass, so the images go through it as one stack.
    across = cv2.sepFilter2D(
        stack.reshape(count * height, width, channels), -1, _KERNEL, _ONE_TAP, borderType=cv2.BORDER_CONSTANT
    ).reshape(stack.shape)
    blurred = np.empty_like(across)
    for image, out in zip(across, blurred, strict=True):
        cv2.sepFilter2D(image, -1, _ONE_TAP, _KERNEL, dst=out, borderType=cv2.BORDER_REFLECT)
    return blurred


def _means_and_4norms(error_map: np.ndarray, share: float = 1.0) -> np.ndarray:
    """Per image and channel of a map [N, H, W, 3]: its mean and its 4-norm, shape [N, 3, 2]; with a
    `share` under 1, of a larger map that this part of it holds all the non-zero values of. Overwrites
    the map."""
    means = np.array([cv2.mean(image)[:3] for image in error_map]) * share
    np.multiply(error_map, error_map, out=error_map)
    np.multiply(error_map, error_map, out=error_map)
    fourth_powers = np.array([cv2.mean(image)[:3] for image in error_map]) * share
    return np.stack([means, fourth_powers**0.25], axis=2)


@dataclass(frozen=True)
class _OriginalScale:
    xyb: np.ndarray  # [1, H, W, 3]
    mean: np.ndarray  # blurred xyb
    variance: np.ndarray  # blurred xyb^2 - mean^2
    edge: np.ndarray  # 1 + |xyb - mean|


def _original_scale(xyb: np.ndarray) -> _OriginalScale:
    mean = _blur(xyb)
    variance = _blur(xyb * xyb) - mean * mean
    return _OriginalScale(xyb, mean, variance, 1.0 + np.abs(xyb - mean))


def _scale_features(original: _OriginalScale, xyb: np.ndarray) -> np.ndarray:
    """[N, 3 channels, 2 (mean, 4-norm), 3 (SSIM, artifact, detail lost)] for candidates [N, H, W, 3]."""
    return np.stack([_means_and_4norms(m) for m in _error_maps(original, xyb)], axis=3)


def _error_maps(original: _OriginalScale, xyb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The SSIM, artifact and detail-lost maps [N, H, W, 3] of candidates [N, H, W, 3]."""
    mean = _blur(xyb)
    # SSIM error 1 - (1 - (mu1 - mu2)^2) (2 cov + C2) / (var1 + var2 + C2), at least 0, with the
    # statistics from blurred products; in place, as the maps are as large as the image.
    covariance_c2 = _blur(xyb * original.xyb)
    covariance_c2 -= mean * original.mean
    covariance_c2 *= 2.0
    covariance_c2 += np.float32(_C2)
    # Identical images give exactly equal numerator and denominator, so an error of exactly 0.
    variances_c2 = _blur(xyb * xyb)
    variances_c2 -= mean * mean
    variances_c2 += original.variance
    variances_c2 += np.float32(_C2)
    luminance = original.mean - mean
    luminance *= luminance
    np.subtract(1.0, luminance, out=luminance)
    ssim_error = luminance
    ssim_error *= covariance_c2
    ssim_error /= variances_c2
    np.subtract(1.0, ssim_error, out=ssim_error)
    np.maximum(ssim_error, 0.0, out=ssim_error)
    del covariance_c2, variances_c2
    # Edge ratio (1 + |x2 - mu2|) / (1 + |x1 - mu1|) - 1: above 0 the change added edges (artifact),
    # below 0 it removed them (detail lost).
    edge_ratio = np.subtract(xyb, mean, out=mean)
    np.abs(edge_ratio, out=edge_ratio)
    edge_ratio += 1.0
    edge_ratio /= original.edge
    edge_ratio -= 1.0
    detail_lost = np.maximum(-edge_ratio, 0.0)
    artifact = np.maximum(edge_ratio, 0.0, out=edge_ratio)
    return ssim_error, artifact, detail_lost


def _changed_area_features(original: np.ndarray, changed: np.ndarray) -> np.ndarray:
    """`_scale_features` [1, 3, 2, 3] of one scale's linear RGB [1, H, W, 3], computed only around the
    pixels that differ: farther than the blur's radius from them, the two images have identical local
    statistics and every error map is exactly 0. The maps are computed on the changed area grown by
    twice the radius and summed within one radius of it, where the blur sees what it sees in the whole
    image (the image's own borders included)."""
    differs = np.any(original[0] != changed[0], axis=2)
    outer, inner = changed_span(differs, 2 * _BLUR_RADIUS), changed_span(differs, _BLUR_RADIUS)
    if outer is None or inner is None:
        return np.zeros((1, 3, 2, 3))
    crop = (slice(None), *outer)
    # The inner box in the crop's coordinates.
    near = (
        slice(None),
        *(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer, strict=True)),
    )
    share = (inner[0].stop - inner[0].start) * (inner[1].stop - inner[1].start) / differs.size
    maps = _error_maps(_original_scale(_positive_xyb(original[crop])), _positive_xyb(changed[crop]))
    return np.stack([_means_and_4norms(m[near], share) for m in maps], axis=3)


def _score(features: np.ndarray) -> np.ndarray:
    """Scores of features [N, 3, scales, 2, 3] (fewer scales take the first weights in order)."""
    count, _, scales = features.shape[:3]
    weights = _WEIGHTS[: features[0].size].reshape(3, scales, 2, 3)
    raw = np.abs(features).reshape(count, -1) @ weights.ravel() * 0.9562382616834844
    raw = 2.326765642916932 * raw - 0.020884521182843837 * raw**2 + 6.248496625763138e-05 * raw**3
    return np.where(raw > 0, 100.0 - 10.0 * np.maximum(raw, 0.0) ** 0.6276336467831387, 100.0)


def _checked_image(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"{name} must be an RGB image HxWx3 or gray HxW, got shape {image.shape}")
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"{name} must hold integers or floats in 0..255 units, got {image.dtype}")
    return image


class Ssimulacra2Reference:
    """An original image prepared once (its pyramid and local statistics) for scoring changed copies
    of it: the cloaking loop scores every candidate against the same original face region."""

    def __init__(self, original: np.ndarray) -> None:
        original = _checked_image(original, "original")
        self.shape = original.shape[:2]
        self._original = original
        self._scales: list[_OriginalScale] = []
        linear = _linear_rgb(original)[None]
        for index in range(SCALES):
            if index:
                linear = _downsample(linear)
            if min(linear.shape[1:3]) < MIN_SIDE:
                break
            self._scales.append(_original_scale(_positive_xyb(linear)))

    def score(self, changed: np.ndarray) -> float:
        """SSIMULACRA2 of one changed copy (HxWx3 or HxW, integers or floats in 0..255 units)."""
        return float(self.scores([changed])[0])

    def scores(self, changed: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """SSIMULACRA2 of several changed copies at once ([N, H, W, 3] or a sequence of images); memory
        grows with N, about 100 bytes per pixel of each copy."""
        images = [_checked_image(image, "changed image") for image in changed]
        for image in images:
            if image.shape[:2] != self.shape or image.ndim != self._original.ndim:
                raise ValueError(
                    f"changed image has shape {image.shape}, the original {self._original.shape}"
                )
        if not images:
            return np.zeros(0)
        if not self._scales:
            # Too small for any scale: say only whether anything changed.
            return np.array([100.0 if np.array_equal(image, self._original) else 0.0 for image in images])
        linear = np.stack([_linear_rgb(image) for image in images])
        features = []
        for index, original in enumerate(self._scales):
            if index:
                linear = _downsample(linear)
            features.append(_scale_features(original, _positive_xyb(linear)))
        return _score(np.stack(features, axis=2))


def ssimulacra2(original: np.ndarray, changed: np.ndarray) -> float:
    """SSIMULACRA2 of `changed` against `original` (RGB HxWx3 or gray HxW, integers or floats in 0..255
    units, equal shapes): 100 when identical, lower the more visible the change. Images under 8 pixels
    on a side have no scale to measure: 100 when unchanged, 0 otherwise."""
    original, changed = _checked_image(original, "original"), _checked_image(changed, "changed image")
    if original.shape != changed.shape:
        raise ValueError(f"images differ in shape: original {original.shape}, changed {changed.shape}")
    # Measured only around what changed (`_changed_area_features`): a cloak changes part of a face's
    # region. Equal to `Ssimulacra2Reference(original).score(changed)` but for float32 rounding in the
    # maps (OpenCV's filters round a pixel differently at another place in a row): 2e-4 points at most.
    linear = [_linear_rgb(original)[None], _linear_rgb(changed)[None]]
    features = []
    for index in range(SCALES):
        if index:
            linear = [_downsample(image) for image in linear]
        if min(linear[0].shape[1:3]) < MIN_SIDE:
            break
        features.append(_changed_area_features(*linear))
    if not features:
        return 100.0 if np.array_equal(original, changed) else 0.0
    return float(_score(np.stack(features, axis=2))[0])


def face_region(box: Sequence[float], shape: Sequence[int]) -> tuple[slice, slice]:
    """Rows and columns of the face box (x0, y0, x1, y1) grown by a quarter of its size on each side,
    clipped to a photo of `shape` (H, W, ...): the face with its hair, ears and chin, where people
    look."""
    x0, y0, x1, y1 = box
    grow_x, grow_y = (x1 - x0) / 4, (y1 - y0) / 4
    height, width = shape[:2]
    rows = slice(max(0, int(y0 - grow_y)), min(height, int(np.ceil(y1 + grow_y))))
    cols = slice(max(0, int(x0 - grow_x)), min(width, int(np.ceil(x1 + grow_x))))
    return rows, cols


@dataclass(frozen=True)
class Visibility:
    """How visible a change to one face is, on its face region at the photo's resolution."""

    ssimulacra2: float
    dssim: float


def face_visibility(original: np.ndarray, changed: np.ndarray, box: Sequence[float]) -> Visibility:
    """SSIMULACRA2 and DSSIM of a changed photo against its original over one face's region."""
    if original.shape != changed.shape:
        raise ValueError(f"photos differ in shape: original {original.shape}, changed {changed.shape}")
    rows, cols = face_region(box, original.shape)
    before, after = original[rows, cols], changed[rows, cols]
    return Visibility(ssimulacra2=ssimulacra2(before, after), dssim=image_dssim(before, after))
