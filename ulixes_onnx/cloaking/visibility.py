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

`Ssimulacra2Reference.score_and_gradient` also gives the exact derivative of the score with respect to
the changed image, written out by hand (no autograd at run time) through every step of the same
forward code: the sRGB curve, the downsampling (its adjoint spreads each pixel over its block), the XYB
map, the blurs (their adjoint folds the mirrored rows back), the error maps, their means and 4-norms
and the trained weights; the cloaking loop climbs it to make a cloak less visible. The loop works on a
face's canvas, which for a large face is the photo shrunk: `first_scale` scores such an image with the
weights of the photo's scales it holds (the scales weigh very differently, and scored as a photo of its
own size a canvas shrunk 3x read a cloak 10 points less visible than the photo showed it).

`colour_shift` measures what SSIMULACRA2 weighs lightly: a coherent shift of colour over a feature (an
iris changing colour), as the largest CIELAB a*b* distance of a change's local mean.
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
    return kernel / kernel.sum()


_KERNEL = _gaussian_kernel()


def _srgb_to_linear_table() -> np.ndarray:
    return _srgb_to_linear(np.arange(256), np.float32)


def _srgb_to_linear(values: np.ndarray, precision: type[np.floating]) -> np.ndarray:
    """sRGB 0..255 to linear 0..1 (in `precision`); values outside 0..255 follow the same two pieces."""
    # The constants are Python floats, so that they take the precision of the values they meet.
    scaled = values.astype(precision) * (1 / 255)
    curve = np.power((np.maximum(scaled, 0.04045) + 0.055) * (1 / 1.055), 2.4)
    return np.where(scaled <= 0.04045, scaled * (1 / 12.92), curve).astype(precision)


def _srgb_to_linear_slope(values: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """The derivative of `_srgb_to_linear` at `values`, given their `linear` values: on the curve,
    d/dv ((v / 255 + 0.055) / 1.055)^2.4 = 2.4 linear / (v + 0.055 * 255)."""
    values = values.astype(linear.dtype)
    curve = values + 0.055 * 255
    np.divide(linear, curve, out=curve)
    curve *= 2.4
    return np.where(values <= 0.04045 * 255, 1 / 12.92 / 255, curve).astype(linear.dtype)


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
    ]
)
_OPSIN_AFFINE = np.hstack([_OPSIN, np.full((3, 1), _OPSIN_BIAS)])


def _linear_rgb(image: np.ndarray, precision: type[np.floating] = np.float32) -> np.ndarray:
    """An RGB (or gray) image in 0..255 units as contiguous linear RGB, HxWx3, in `precision` (the
    precision of all that is computed from it)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.dtype == np.uint8 and precision == np.float32:
        return cv2.LUT(image, _SRGB_TO_LINEAR)
    return _srgb_to_linear(image, precision)


def _cube_roots(linear: np.ndarray) -> np.ndarray:
    """The cube roots of the opsin responses (at least 0) of linear RGB [..., H, W, 3], same shape."""
    mixed = cv2.transform(linear.reshape(-1, linear.shape[-2], 3), _OPSIN_AFFINE)
    np.maximum(mixed, 0, out=mixed)
    return np.cbrt(mixed, out=mixed).reshape(linear.shape)


def _xyb_from_cube_roots(cube_roots: np.ndarray) -> np.ndarray:
    rows = cube_roots.reshape(-1, cube_roots.shape[-2], 3)
    return cv2.transform(rows, _POSITIVE_XYB).reshape(cube_roots.shape)


def _positive_xyb(linear: np.ndarray) -> np.ndarray:
    """Linear RGB [..., H, W, 3] to positive XYB, same shape."""
    return _xyb_from_cube_roots(_cube_roots(linear))


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


_ONE_TAP = np.ones(1)


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
    `share` under 1, of a larger map that this part of it holds all the non-zero values of."""
    means = np.array([cv2.mean(image)[:3] for image in error_map]) * share
    fourth_powers = np.multiply(error_map, error_map)
    np.multiply(fourth_powers, fourth_powers, out=fourth_powers)
    fourth_powers = np.array([cv2.mean(image)[:3] for image in fourth_powers]) * share
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


def _scale_features(maps: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """[N, 3 channels, 2 (mean, 4-norm), 3 (SSIM, artifact, detail lost)] of the error maps."""
    return np.stack([_means_and_4norms(m) for m in maps], axis=3)


@dataclass(frozen=True)
class _ErrorTerms:
    """The candidate's terms behind its error maps, kept for going back through them."""

    mean: np.ndarray  # blurred xyb
    luminance: np.ndarray  # 1 - (mu1 - mu2)^2
    covariance_c2: np.ndarray  # 2 cov + C2
    variances_c2: np.ndarray  # var1 + var2 + C2
    deviation: np.ndarray  # xyb - mean


def _error_maps(
    original: _OriginalScale, xyb: np.ndarray, keep_terms: bool = False
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], _ErrorTerms | None]:
    """The SSIM, artifact and detail-lost maps [N, H, W, 3] of candidates [N, H, W, 3], and with
    `keep_terms` the terms they come from (otherwise computed in place, as the maps are as large as the
    image and scoring needs only the maps)."""
    mean = _blur(xyb)
    # SSIM error 1 - (1 - (mu1 - mu2)^2) (2 cov + C2) / (var1 + var2 + C2), at least 0, with the
    # statistics from blurred products.
    covariance_c2 = _blur(xyb * original.xyb)
    covariance_c2 -= mean * original.mean
    covariance_c2 *= 2.0
    covariance_c2 += _C2
    # Identical images give exactly equal numerator and denominator, so an error of exactly 0.
    variances_c2 = _blur(xyb * xyb)
    variances_c2 -= mean * mean
    variances_c2 += original.variance
    variances_c2 += _C2
    luminance = original.mean - mean
    luminance *= luminance
    np.subtract(1.0, luminance, out=luminance)
    ssim_error = np.multiply(luminance, covariance_c2, out=None if keep_terms else luminance)
    ssim_error /= variances_c2
    np.subtract(1.0, ssim_error, out=ssim_error)
    np.maximum(ssim_error, 0.0, out=ssim_error)
    # Edge ratio (1 + |x2 - mu2|) / (1 + |x1 - mu1|) - 1: above 0 the change added edges (artifact),
    # below 0 it removed them (detail lost).
    deviation = np.subtract(xyb, mean, out=None if keep_terms else mean)
    edge_ratio = np.abs(deviation, out=None if keep_terms else deviation)
    edge_ratio += 1.0
    edge_ratio /= original.edge
    edge_ratio -= 1.0
    # Scoring writes the detail lost over the covariance, done with.
    detail_lost = np.negative(edge_ratio, out=None if keep_terms else covariance_c2)
    np.maximum(detail_lost, 0.0, out=detail_lost)
    artifact = np.maximum(edge_ratio, 0.0, out=edge_ratio)
    maps = (ssim_error, artifact, detail_lost)
    if not keep_terms:
        return maps, None
    return maps, _ErrorTerms(mean, luminance, covariance_c2, variances_c2, deviation)


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
    maps, _ = _error_maps(_original_scale(_positive_xyb(original[crop])), _positive_xyb(changed[crop]))
    return np.stack([_means_and_4norms(m[near], share) for m in maps], axis=3)


_WEIGHTED_SCALE = 0.9562382616834844
# The raw distance is a cubic in the weighted sum (coefficients of its 1st, 2nd and 3rd powers).
_RAW_CUBIC = (2.326765642916932, -0.020884521182843837, 6.248496625763138e-05)
_SCORE_EXPONENT = 0.6276336467831387


def _feature_weights(features: np.ndarray, first_scale: float = 0.0) -> np.ndarray:
    """The weights of features [N, 3, scales, 2, 3] whose first scale is SSIMULACRA2's `first_scale`,
    shaped as one image's features; between two scales, the weights of both blended in proportion."""
    whole = int(first_scale)
    part = first_scale - whole
    weights = _weights_from(features, whole)
    if part:
        weights = (1 - part) * weights + part * _weights_from(features, whole + 1)
    return weights


def _weights_from(features: np.ndarray, first_scale: int) -> np.ndarray:
    """`_feature_weights` at a whole scale. Scales past SSIMULACRA2's six weigh nothing, and an image
    with fewer than six scales takes the first weights in order (libjxl's rule), as many as all its
    scales from the first have features."""
    channels, scales, pools, maps = features.shape[1:]
    weighted = min(first_scale + scales, SCALES)
    measured = _WEIGHTS[: channels * weighted * pools * maps]
    measured = measured.reshape(channels, weighted, pools, maps)[:, first_scale:]
    return np.pad(measured, ((0, 0), (0, scales - measured.shape[1]), (0, 0), (0, 0)))


def _weighted_and_raw(features: np.ndarray, first_scale: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The weighted sums [N] of features [N, 3, scales, 2, 3] and the raw distances made of them."""
    weights = _feature_weights(features, first_scale).ravel()
    weighted = np.abs(features).reshape(len(features), -1) @ weights * _WEIGHTED_SCALE
    first, second, third = _RAW_CUBIC
    return weighted, first * weighted + second * weighted**2 + third * weighted**3


def _score(features: np.ndarray, first_scale: float = 0.0) -> np.ndarray:
    """Scores of features [N, 3, scales, 2, 3]."""
    raw = _weighted_and_raw(features, first_scale)[1]
    return np.where(raw > 0, 100.0 - 10.0 * np.maximum(raw, 0.0) ** _SCORE_EXPONENT, 100.0)


def _score_slope(features: np.ndarray, first_scale: float = 0.0) -> np.ndarray:
    """d score / d features for features [1, 3, scales, 2, 3], same shape; 0 where the score is 100."""
    weighted, raw = (float(value[0]) for value in _weighted_and_raw(features, first_scale))
    if raw <= 0:
        return np.zeros_like(features)
    first, second, third = _RAW_CUBIC
    raw_slope = first + 2 * second * weighted + 3 * third * weighted**2
    slope = -10.0 * _SCORE_EXPONENT * raw ** (_SCORE_EXPONENT - 1) * raw_slope * _WEIGHTED_SCALE
    return slope * _feature_weights(features, first_scale)[None] * np.sign(features)


def _map_slopes(
    maps: tuple[np.ndarray, np.ndarray, np.ndarray], features: np.ndarray, feature_slope: np.ndarray
) -> list[np.ndarray]:
    """d score / d each error map [1, H, W, 3] of one scale, from the scale's features [3, 2, 3] and
    d score / d them: a mean's derivative is 1 / n per pixel, a 4-norm's m^3 / (n norm^3) (0 for a map
    that is 0 throughout)."""
    pixels = maps[0][0, :, :, 0].size
    slopes = []
    for index, error_map in enumerate(maps):
        norms = features[:, 1, index]
        cubed_norms = norms**3 * pixels
        norm_factor = np.divide(
            feature_slope[:, 1, index], cubed_norms, out=np.zeros(3), where=cubed_norms > 0
        ).astype(error_map.dtype)
        slope = np.multiply(error_map, error_map)
        slope *= error_map
        slope *= norm_factor
        slope += (feature_slope[:, 0, index] / pixels).astype(error_map.dtype)
        slopes.append(slope)
    return slopes


def _blur_adjoint(stack: np.ndarray) -> np.ndarray:
    """The adjoint (transpose) of `_blur` on [N, H, W, 3]. A symmetric blur with zeros beyond the image
    is its own adjoint (the rule left and right). Above and below, the blur reads mirrored rows, so its
    adjoint blurs with zeros beyond the image and folds what lands on the R rows past each edge back
    onto the rows they mirror; those depend only on the R rows at that edge."""
    radius = _BLUR_RADIUS
    blurred = np.empty_like(stack)
    for image, out in zip(stack, blurred, strict=True):
        cv2.sepFilter2D(image, -1, _KERNEL, _KERNEL, dst=out, borderType=cv2.BORDER_CONSTANT)
        zeros = np.zeros((radius, *image.shape[1:]), image.dtype)
        above = cv2.sepFilter2D(
            np.concatenate([zeros, image[:radius]]), -1, _KERNEL, _KERNEL, borderType=cv2.BORDER_CONSTANT
        )
        below = cv2.sepFilter2D(
            np.concatenate([image[-radius:], zeros]), -1, _KERNEL, _KERNEL, borderType=cv2.BORDER_CONSTANT
        )
        # BORDER_REFLECT reads row k for row -1 - k, and row H - 1 - k for row H + k.
        out[:radius] += above[radius - 1 :: -1]
        out[-radius:] += below[: radius - 1 : -1]
    return blurred


def _downsample_adjoint(halved: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The adjoint of `_downsample` from [1, H/2, W/2, 3] to the [1, H, W, 3] of `shape`: each pixel
    spreads a quarter to its 2x2 block, and a replicated odd last row or column folds back onto the
    row or column it copies."""
    height, width = shape
    spread = cv2.resize(
        halved[0], (2 * halved.shape[2], 2 * halved.shape[1]), interpolation=cv2.INTER_NEAREST_EXACT
    )
    spread *= 0.25
    if height % 2:
        spread[height - 1] += spread[height]
    if width % 2:
        spread[:, width - 1] += spread[:, width]
    return np.ascontiguousarray(spread[None, :height, :width])


def _error_maps_adjoint(
    original: _OriginalScale,
    xyb: np.ndarray,
    maps: tuple[np.ndarray, np.ndarray, np.ndarray],
    terms: _ErrorTerms,
    map_slopes: list[np.ndarray],
) -> np.ndarray:
    """d score / d xyb [1, H, W, 3] from d score / d each error map (`_error_maps` backwards)."""
    ssim_slope, artifact_slope, detail_slope = map_slopes
    ssim_error, artifact, detail_lost = maps
    # The SSIM error is 1 - q, q = luminance covariance / variances = L N / D, where the clamp lets it
    # through: dq/dL = N / D, dq/dN = L / D, dq/dD = -q / D. `over_variances` is d score / d error / D.
    over_variances = np.divide(ssim_slope, terms.variances_c2, out=ssim_slope)
    over_variances *= ssim_error > 0
    # d score / d the blurs of x2, x2 * x2 (twice it) and x2 * x1, blurred back together below.
    blurred_slopes = np.empty((3, *xyb.shape), xyb.dtype)
    mean_slope, twice_squares_slope, product_slope = blurred_slopes
    np.multiply(over_variances, terms.luminance, out=product_slope)
    product_slope *= -2.0  # N = 2 (blur(x2 x1) - mu1 mu2) + C2
    np.subtract(1.0, ssim_error, out=twice_squares_slope)  # q, where the clamp lets it through
    twice_squares_slope *= over_variances
    twice_squares_slope *= 2.0  # D = blur(x2 x2) - mu2^2 + var1 + C2
    # The mean enters L = 1 - (mu1 - mu2)^2, N (-2 mu1 mu2) and D (-mu2^2).
    np.subtract(original.mean, terms.mean, out=mean_slope)
    mean_slope *= terms.covariance_c2
    mean_slope *= over_variances
    mean_slope *= -2.0
    product = np.multiply(product_slope, original.mean)
    mean_slope -= product
    mean_slope -= np.multiply(twice_squares_slope, terms.mean, out=product)
    # The edge ratio r = (1 + |x2 - mu2|) / edge1 - 1, split into max(r, 0) and max(-r, 0).
    deviation_slope = artifact_slope
    deviation_slope *= artifact > 0
    detail_slope *= detail_lost > 0
    deviation_slope -= detail_slope
    deviation_slope *= np.sign(terms.deviation, out=product)
    deviation_slope /= original.edge
    mean_slope -= deviation_slope
    blurred = _blur_adjoint(blurred_slopes.reshape(3, *xyb.shape[1:]))
    xyb_slope = deviation_slope
    xyb_slope += blurred[0]
    xyb_slope += np.multiply(xyb, blurred[1], out=product)
    xyb_slope += np.multiply(original.xyb, blurred[2], out=product)
    return xyb_slope


# Below this cube root (an opsin response of 1e-18, reached only by colours far below black) the cube
# root's slope is held, so that it stays finite.
_SMALLEST_CUBE_ROOT = 1e-6


def _linear_slope(cube_roots: np.ndarray, xyb_slope: np.ndarray) -> np.ndarray:
    """d score / d linear RGB [1, H, W, 3] from d score / d XYB (`_positive_xyb` backwards)."""
    width = xyb_slope.shape[2]
    root_slope = cv2.transform(xyb_slope.reshape(-1, width, 3), np.ascontiguousarray(_POSITIVE_XYB[:, :3].T))
    # d cbrt(m) / dm = 1 / (3 cbrt(m)^2); 0 where the clamp at 0 bites.
    squares = np.maximum(cube_roots.reshape(root_slope.shape), _SMALLEST_CUBE_ROOT)
    squares *= squares
    squares *= 3.0
    root_slope /= squares
    root_slope *= cube_roots.reshape(root_slope.shape) > 0
    return cv2.transform(root_slope, np.ascontiguousarray(_OPSIN_AFFINE[:, :3].T)).reshape(xyb_slope.shape)


def _checked_image(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"{name} must be an RGB image HxWx3 or gray HxW, got shape {image.shape}")
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"{name} must hold integers or floats in 0..255 units, got {image.dtype}")
    return image


@dataclass(frozen=True)
class _KeptScale:
    """What the way back through one scale needs from the way forward."""

    shape: tuple[int, int]
    cube_roots: np.ndarray
    xyb: np.ndarray
    maps: tuple[np.ndarray, np.ndarray, np.ndarray]
    terms: _ErrorTerms


class Ssimulacra2Reference:
    """An original image prepared once (its pyramid and local statistics) for scoring changed copies
    of it: the cloaking loop scores every candidate against the same original face region.

    `precision` is that of all the maps: float32 (fast) or float64 (for checking the gradient against
    finite differences, which float32 rounding drowns).

    `first_scale` k in [0, 6) scores an image that stands for a larger one shrunk 2^k times (a face's
    canvas for the photo's face region): its scales are the larger image's from the k-th on, scored
    with their weights (a fractional k blends the two nearest scales' weights), and the larger image's
    finest scales, which the smaller one cannot show, count as unchanged."""

    def __init__(
        self, original: np.ndarray, precision: type[np.floating] = np.float32, first_scale: float = 0.0
    ) -> None:
        if not 0 <= first_scale < SCALES:
            raise ValueError(f"the first scale must be in [0, {SCALES}), not {first_scale}")
        original = _checked_image(original, "original")
        self.shape = original.shape[:2]
        self._original = original
        self._precision = precision
        self._first_scale = first_scale
        self._scales: list[_OriginalScale] = []
        linear = _linear_rgb(original, precision)[None]
        for index in range(SCALES - int(first_scale)):
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
        images = [self._checked_changed(image) for image in changed]
        if not images:
            return np.zeros(0)
        if not self._scales:
            return np.array([self._unmeasured_score(image) for image in images])
        linear = np.stack([_linear_rgb(image, self._precision) for image in images])
        return _score(self._features(linear)[0], self._first_scale)

    def score_and_gradient(self, changed: np.ndarray) -> tuple[float, np.ndarray]:
        """SSIMULACRA2 of one changed copy (as `score`) and its derivative with respect to the copy's
        values, float32 in the copy's shape (a gray copy's sums its three channels'): the exact
        derivative of the score as computed, with the slope of max(., 0) and |.| at their kinks taken
        as 0. It is 0 where the score is 100, and for images too small for any scale (whose score only
        says whether anything changed). Takes 2.5 to 3 times as long as `score` (600x600 pixels: 30 ms
        and 80 ms) and about 270 bytes per pixel of memory (`score`: 100)."""
        image = self._checked_changed(changed)
        no_slope = np.zeros(image.shape, np.float32)
        if not self._scales:
            return self._unmeasured_score(image), no_slope
        linear = _linear_rgb(image, self._precision)
        features, kept = self._features(linear[None], keep_terms=True)
        score = float(_score(features, self._first_scale)[0])
        feature_slope = _score_slope(features, self._first_scale)[0]
        if not feature_slope.any():
            return score, no_slope
        # Back from the coarsest scale: each scale's linear RGB feeds its own maps and the next scale.
        linear_slope = None
        for index in reversed(range(len(self._scales))):
            scale = kept.pop()
            map_slopes = _map_slopes(scale.maps, features[0, :, index], feature_slope[:, index])
            xyb_slope = _error_maps_adjoint(
                self._scales[index], scale.xyb, scale.maps, scale.terms, map_slopes
            )
            scale_slope = _linear_slope(scale.cube_roots, xyb_slope)
            if linear_slope is not None:
                scale_slope += _downsample_adjoint(linear_slope, scale.shape)
            linear_slope = scale_slope
        linear_slope = linear_slope[0]
        if image.ndim == 2:  # the gray value feeds all three channels
            linear, linear_slope = linear[:, :, 0], linear_slope.sum(axis=2)
        return score, (linear_slope * _srgb_to_linear_slope(image, linear)).astype(np.float32)

    def _features(self, linear: np.ndarray, keep_terms: bool = False) -> tuple[np.ndarray, list[_KeptScale]]:
        """The features [N, 3, scales, 2, 3] of candidates' linear RGB [N, H, W, 3], and with
        `keep_terms` what the way back needs at each scale."""
        features, kept = [], []
        for index, original in enumerate(self._scales):
            if index:
                linear = _downsample(linear)
            cube_roots = _cube_roots(linear)
            xyb = _xyb_from_cube_roots(cube_roots)
            maps, terms = _error_maps(original, xyb, keep_terms)
            features.append(_scale_features(maps))
            if keep_terms:
                kept.append(_KeptScale(linear.shape[1:3], cube_roots, xyb, maps, terms))
        return np.stack(features, axis=2), kept

    def _unmeasured_score(self, image: np.ndarray) -> float:
        """The score of an image too small for any scale: only whether anything changed."""
        return 100.0 if np.array_equal(image, self._original) else 0.0

    def _checked_changed(self, image: np.ndarray) -> np.ndarray:
        image = _checked_image(image, "changed image")
        if image.shape[:2] != self.shape or image.ndim != self._original.ndim:
            raise ValueError(f"changed image has shape {image.shape}, the original {self._original.shape}")
        return image


def _checked_pair(original: np.ndarray, changed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both images checked (`_checked_image`), and of one shape."""
    original, changed = _checked_image(original, "original"), _checked_image(changed, "changed image")
    if original.shape != changed.shape:
        raise ValueError(f"images differ in shape: original {original.shape}, changed {changed.shape}")
    return original, changed


def ssimulacra2(original: np.ndarray, changed: np.ndarray) -> float:
    """SSIMULACRA2 of `changed` against `original` (RGB HxWx3 or gray HxW, integers or floats in 0..255
    units, equal shapes): 100 when identical, lower the more visible the change. Images under 8 pixels
    on a side have no scale to measure: 100 when unchanged, 0 otherwise."""
    original, changed = _checked_pair(original, changed)
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


def loss_shares(original: np.ndarray, changed: np.ndarray) -> np.ndarray:
    """Where SSIMULACRA2 sees a change: each feature's share of the weighted sum the score falls with,
    [3 channels (X, Y, B), scales (1x, 2x, 4x, ...), 2 pools (mean, 4-norm), 3 maps (SSIM error,
    artifact, detail lost)], summing to 1; all 0 when nothing changed or the images are too small for
    any scale. Arguments as `ssimulacra2`."""
    original, changed = _checked_pair(original, changed)
    reference = Ssimulacra2Reference(original)
    if not reference._scales:
        return np.zeros((3, 0, 2, 3))
    features, _ = reference._features(_linear_rgb(changed, reference._precision)[None])
    weighted = np.abs(features[0]) * _feature_weights(features)
    total = float(weighted.sum())
    return weighted / total if total > 0 else weighted


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


# A colour shift is judged on the change's local mean over this share of the face's width (about an
# iris): a coherent shift of a feature's colour shows where noise of the same size averages out.
COLOUR_WINDOW = 1 / 30


def colour_shift(original: np.ndarray, changed: np.ndarray, face_width: float) -> float:
    """The largest local colour shift of a change: the CIELAB a*b* distance of its mean over a square
    window `COLOUR_WINDOW` of the face's width wide (at least 3 pixels), at its largest in the image.
    About 2.3 is just noticeable, and an eye whose iris shifts by 5 has visibly changed colour. Images
    as `ssimulacra2` takes them (a gray pair has no colour to shift: 0)."""
    original, changed = _checked_pair(original, changed)
    if original.ndim == 2:
        return 0.0
    window = max(3, round(face_width * COLOUR_WINDOW)) | 1
    shift = _lab(changed) - _lab(original)
    local_a = cv2.blur(shift[:, :, 1], (window, window))
    local_b = cv2.blur(shift[:, :, 2], (window, window))
    return float(np.sqrt(local_a * local_a + local_b * local_b).max())


def _lab(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.asarray(image, np.float32) * np.float32(1 / 255), cv2.COLOR_RGB2Lab)


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
