"""Face canvases: the region of the photo a cloak may change, held at (close to) the photo's resolution.

A cloak is made on the canvas, not on a model's chip: the canvas covers every model's chip footprint of
one face and keeps the photo's own pixels up to `cap` canvas pixels per pixel of the finest chip (a face
larger than that is area-downsampled). Each model's chip is derived from the canvas by a linear
operator (a Gaussian blur, then bilinear sampling through the chip's affine map), whose
exact adjoint carries that model's gradient back onto the canvas. So a perturbation is shaped at the
resolution people look at, instead of being computed on a 150-pixel chip and stretched onto the face.
The operator cuts the chip the recogniser sees: it blurs as much as `warp_chips`' pyramid and
interpolation do (less what the canvas's own resampling already did) and samples where dlib's pyramid
places the chip. With a plain anti-aliasing blur and the nominal placement, a face's chip and its real
chip lay 0.06 apart for dlib-resnet (a tenth of its threshold), and the perceptual polish kept its
distance on that difference: the saved copy of a face the loop left at 0.79 lay 0.68 from its original.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from ulixes_onnx.faces.align import (
    BILINEAR_VARIANCE,
    chip_corners_in_photo,
    photo_pixels_per_chip_pixel,
    sampled_matrix,
    sampling_variance,
)

# How far, as a share of the chip's side, the mask falls from 1 to 0 at the chip's border.
DEFAULT_FEATHER = 0.08
# The variance (canvas pixels squared) of area resampling's box of one canvas pixel.
AREA_VARIANCE = 1 / 12


def feathered_mask(
    region_to_chip: np.ndarray, width: int, height: int, size: int, feather: float
) -> np.ndarray:
    """[height, width] weights: 1 deep inside the chip, 0 outside it, a smoothstep over `feather` x
    `size` chip pixels in between; `region_to_chip` maps the region's pixel centres to the chip's."""
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    (a, b, c), (d, e, f) = np.asarray(region_to_chip, np.float32)
    chip_x = a * xs + b * ys + c
    chip_y = d * xs + e * ys + f
    # Distance (in chip pixels) to the nearest edge of the chip, whose edges sit at -0.5 and S - 0.5.
    inset = np.minimum(np.minimum(chip_x, chip_y), np.minimum(size - 1 - chip_x, size - 1 - chip_y))
    ramp = np.clip((inset + 0.5) / (feather * size), 0, 1)
    return (ramp * ramp * (3 - 2 * ramp)).astype(np.float32)


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2x3 affine map `outer` after `inner`."""
    return np.hstack([outer[:, :2] @ inner[:, :2], (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]])


def anti_alias_sigma(shrink: float) -> float:
    """Gaussian blur (in source pixels) before sampling `shrink` times more coarsely."""
    return max(shrink - 1.0, 0.0) / 2


def symmetric_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """An [H, W, C] image blurred by a Gaussian with a reflected border: self-adjoint up to the
    outermost pixels, so the same blur carries gradients back. Below a sigma of 0.3 it is the image."""
    if sigma < 0.3:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


class ChipOperator:
    """The linear map from a canvas [H, W, 3] to a chip [3, S, S]: blur, then bilinear sampling.

    `forward` cuts the chip; `adjoint` is its exact transpose (the blur is symmetric and applied with
    a reflected border, which is self-adjoint up to the outermost pixels; sampling gathers each chip
    pixel from its four canvas neighbours, and the adjoint scatters back along the same weights).
    The loop builds one operator per step (input diversity jitters the chip), so the neighbours and
    weights are plain arrays, quick to compute, rather than a sparse matrix, whose assembly took 3-7 ms,
    up to twice as long as a forward and adjoint (benchmarks/chip_operator.py).
    """

    def __init__(
        self, canvas_to_chip: np.ndarray, canvas_shape: tuple[int, int], size: int, *, sigma: float
    ) -> None:
        height, width = canvas_shape
        self.size = size
        self.shape = canvas_shape
        self.sigma = sigma
        (a, b, c), (d, e, f) = cv2.invertAffineTransform(np.asarray(canvas_to_chip, np.float64))
        steps = np.arange(size, dtype=np.float64)
        x = (a * steps[None, :] + b * steps[:, None] + c).ravel()
        y = (d * steps[None, :] + e * steps[:, None] + f).ravel()
        left, top = np.floor(x), np.floor(y)
        fx, fy = x - left, y - top
        # Each chip pixel's two neighbouring columns and rows, [2, S * S]; a neighbour outside the
        # canvas counts as zero: weight 0, and its index clipped to one that can be read.
        columns = left.astype(np.intp) + np.array([[0], [1]])
        rows = top.astype(np.intp) + np.array([[0], [1]])
        column_weights = np.stack([1 - fx, fx]) * ((columns >= 0) & (columns < width))
        row_weights = np.stack([1 - fy, fy]) * ((rows >= 0) & (rows < height))
        np.clip(columns, 0, width - 1, out=columns)
        np.clip(rows, 0, height - 1, out=rows)
        # The four neighbours, [4, S * S]: top-left, top-right, bottom-left, bottom-right.
        self.neighbours = (rows[:, None] * width + columns[None]).reshape(4, -1)
        self.weights = (row_weights[:, None] * column_weights[None]).reshape(4, -1).astype(np.float32)
        # Repeated per channel: multiplying the gathered pixels by a broadcast weight is 2-3x slower.
        self.channel_weights = np.repeat(self.weights[:, :, None], 3, axis=2)

    def forward(self, canvas: np.ndarray) -> np.ndarray:
        """A chip [3, S, S] from a canvas [H, W, 3] (same units)."""
        flat = symmetric_blur(np.ascontiguousarray(canvas, np.float32), self.sigma).reshape(-1, 3)
        gathered = np.take(flat, self.neighbours, axis=0)
        gathered *= self.channel_weights
        return np.ascontiguousarray(gathered.sum(axis=0).T).reshape(3, self.size, self.size)

    def adjoint(self, chip: np.ndarray) -> np.ndarray:
        """A canvas [H, W, 3] from a chip-shaped gradient [3, S, S]: the transpose of `forward`."""
        targets = self.neighbours.ravel()
        planes = []
        # One channel at a time: ufunc.at is fast on a one-dimensional target (NumPy >= 1.25).
        for plane in np.asarray(chip, np.float32).reshape(3, -1):
            canvas_plane = np.zeros(self.shape[0] * self.shape[1], np.float32)
            np.add.at(canvas_plane, targets, (self.weights * plane).ravel())
            planes.append(canvas_plane.reshape(self.shape))
        return symmetric_blur(cv2.merge(planes), self.sigma)


@dataclass(frozen=True, eq=False)
class FaceCanvas:
    """One face's canvas: the photo region [y0:y1, x0:x1] at `scale` canvas pixels per photo pixel.

    `image` float32 [H, W, 3] is the original region in 0..255 units at canvas resolution, `mask`
    [H, W] the feathered union of the models' chip footprints (where the cloak may change the photo),
    `to_chip` one canvas -> chip matrix per model (in the order the canvas was made with, placed where
    the model's chips sample the photo), `judged` the canvas rows and columns where people look at the
    face (None: the whole canvas), `dlib_pyramids` which models' chips are cut as dlib cuts them, and
    `resampling_variance` the blur (canvas pixels squared) of resampling the photo to the canvas.
    `original_to_chip` the original alignment's matrices once the face is `realigned` (None before): a
    recogniser whose detector the cloak does not move aligns the face there. `as_saved`, for a canvas
    at the photo's resolution, maps its pixels (0..255 units) to what the saved file decodes them to
    (None: unknown, or only rounded).
    """

    x0: int
    y0: int
    x1: int
    y1: int
    scale: float
    image: np.ndarray
    mask: np.ndarray
    to_chip: tuple[np.ndarray, ...]
    chip_sizes: tuple[int, ...]
    dlib_pyramids: tuple[bool, ...]
    judged: tuple[slice, slice] | None = None
    resampling_variance: float = 0.0
    original_to_chip: tuple[np.ndarray, ...] | None = None
    as_saved: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def photo_to_canvas(self) -> np.ndarray:
        """Region pixel centres (relative to x0, y0) -> canvas pixel centres."""
        s = self.scale
        return np.array([[s, 0.0, 0.5 * s - 0.5], [0.0, s, 0.5 * s - 0.5]])

    @property
    def alignment_count(self) -> int:
        """1 for a face aligned as it was found, 2 once `realigned` (the current and the original)."""
        return 1 if self.original_to_chip is None else 2

    def operator(
        self, model_index: int, jitter: np.ndarray | None = None, alignment: int = 0
    ) -> ChipOperator:
        """The canvas -> chip operator of one model, optionally followed by a chip-space `jitter`;
        `alignment` 0 cuts the chip where the face is aligned now, 1 where it was found in the original."""
        matrix = self._to_chip(model_index, alignment)
        size = self.chip_sizes[model_index]
        sigma = self.chip_blur(model_index, alignment)
        if jitter is not None:
            matrix = compose(jitter, matrix)
        return ChipOperator(matrix, self.image.shape[:2], size, sigma=sigma)

    def plain_operators(self, model_index: int) -> list[ChipOperator]:
        """One model's operators without jitter at each of the face's alignments (the current first)."""
        return [self.operator(model_index, alignment=k) for k in range(self.alignment_count)]

    def _to_chip(self, model_index: int, alignment: int = 0) -> np.ndarray:
        return (self.to_chip if alignment == 0 else self.original_to_chip)[model_index]

    def magnification(self, model_index: int, alignment: int = 0) -> float:
        """How many photo pixels one pixel of a model's chip spans (at one of the face's alignments,
        `operator`): above 1, the photo shows the cloak stretched."""
        return photo_pixels_per_chip_pixel(self._to_chip(model_index, alignment)) / self.scale

    def chip_blur(self, model_index: int, alignment: int = 0) -> float:
        """The Gaussian blur (canvas pixels) that, after the canvas's own resampling and before the
        operator's bilinear sampling, blurs the photo as much as cutting the model's chip from it does
        (at one of the face's alignments, `operator`)."""
        shrink = self.magnification(model_index, alignment)
        variance = sampling_variance(shrink) * self.scale**2 - BILINEAR_VARIANCE - self.resampling_variance
        return math.sqrt(max(variance, 0.0))

    def judging(self, rows: slice, cols: slice) -> FaceCanvas:
        """The same canvas, judged on the photo's `rows` and `cols` (where they overlap it)."""
        height, width = self.image.shape[:2]

        def to_canvas(span: slice, start: int, length: int) -> slice:
            first = min(max(math.floor((span.start - start) * self.scale), 0), length - 1)
            return slice(first, min(max(math.ceil((span.stop - start) * self.scale), first + 1), length))

        return replace(self, judged=(to_canvas(rows, self.y0, height), to_canvas(cols, self.x0, width)))

    def realigned(self, matrices: Sequence[np.ndarray]) -> FaceCanvas:
        """The same canvas with the models' chips cut where new photo -> chip `matrices` put them (the
        alignment a recogniser finds in the cloaked photo); the image and mask stay the original's, and
        the original alignment is kept: the closed loop measures a face at both (`Cloaker.verify`)."""
        to_chip = tuple(
            _canvas_to_chip(matrix, self.x0, self.y0, self.scale, dlib_pyramid=pyramid)
            for matrix, pyramid in zip(matrices, self.dlib_pyramids, strict=True)
        )
        return replace(self, to_chip=to_chip, original_to_chip=self.original_to_chip or self.to_chip)

    def to_photo(self, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A canvas-resolution change [H, W, 3] (already masked) and the mask, resampled to the photo
        region at full resolution: ([h, w, 3], [h, w])."""
        size = (self.x1 - self.x0, self.y1 - self.y0)
        if self.scale == 1.0:
            return delta, self.mask
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        warp = self.photo_to_canvas
        photo_delta = cv2.warpAffine(delta, warp, size, flags=flags, borderMode=cv2.BORDER_REPLICATE)
        photo_mask = cv2.warpAffine(self.mask, warp, size, flags=flags, borderMode=cv2.BORDER_REPLICATE)
        return photo_delta, photo_mask


def _canvas_to_chip(
    photo_to_chip: np.ndarray, x0: int, y0: int, scale: float, *, dlib_pyramid: bool
) -> np.ndarray:
    """The canvas -> chip matrix of a photo -> chip matrix, for a canvas of the photo region from
    (x0, y0) at `scale` canvas pixels per photo pixel, placed where the chip's content comes from
    (`sampled_matrix`)."""
    region_to_chip = sampled_matrix(photo_to_chip, dlib_pyramid=dlib_pyramid)
    region_to_chip[:, 2] += region_to_chip[:, :2] @ np.array([x0, y0], np.float64)
    canvas_to_region = cv2.invertAffineTransform(
        np.array([[scale, 0.0, 0.5 * scale - 0.5], [0.0, scale, 0.5 * scale - 0.5]])
    )
    return compose(region_to_chip, canvas_to_region)


def make_canvas(
    photo: np.ndarray,
    matrices: Sequence[np.ndarray],
    sizes: Sequence[int],
    *,
    cap: float,
    feather: float = DEFAULT_FEATHER,
    dlib_pyramids: Sequence[bool] | None = None,
) -> FaceCanvas | None:
    """The canvas of one face from its photo -> chip matrices (one per model, chips of `sizes`, cut
    as dlib cuts them where `dlib_pyramids` says so; default: none).

    The canvas keeps photo resolution up to `cap` canvas pixels per pixel of the finest chip. Returns
    None when the chips lie outside the photo.
    """
    pyramids = tuple(dlib_pyramids) if dlib_pyramids is not None else (False,) * len(matrices)
    height, width = photo.shape[:2]
    corners = np.concatenate(
        [chip_corners_in_photo(matrix, size) for matrix, size in zip(matrices, sizes, strict=True)]
    )
    x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int), 0)
    x1 = min(int(np.ceil(corners[:, 0].max())) + 1, width)
    y1 = min(int(np.ceil(corners[:, 1].max())) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return None
    finest = min(photo_pixels_per_chip_pixel(matrix) for matrix in matrices)
    scale = min(1.0, cap / finest)
    region = np.asarray(photo[y0:y1, x0:x1], np.float32)
    resampling_variance = 0.0
    if scale < 1.0:
        canvas_size = (max(1, math.ceil((x1 - x0) * scale)), max(1, math.ceil((y1 - y0) * scale)))
        presmoothing = anti_alias_sigma(1 / scale) if scale < 0.5 else 0.0
        resampling_variance = (
            (presmoothing * scale) ** 2 + BILINEAR_VARIANCE if presmoothing else AREA_VARIANCE
        )
        # Exactly the map photo_to_canvas describes (cv2.resize would round the scale to the sizes).
        image = cv2.warpAffine(
            cv2.GaussianBlur(region, (0, 0), presmoothing) if presmoothing else region,
            np.array([[scale, 0.0, 0.5 * scale - 0.5], [0.0, scale, 0.5 * scale - 0.5]]),
            canvas_size,
            flags=cv2.INTER_LINEAR if presmoothing else cv2.INTER_AREA,
            borderMode=cv2.BORDER_REPLICATE,
        )
    else:
        image = region.copy()
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    to_chip = []
    mask = np.zeros(image.shape[:2], np.float32)
    for matrix, size, pyramid in zip(matrices, sizes, pyramids, strict=True):
        canvas_to_chip = _canvas_to_chip(matrix, int(x0), int(y0), scale, dlib_pyramid=pyramid)
        to_chip.append(canvas_to_chip)
        np.maximum(
            mask, feathered_mask(canvas_to_chip, image.shape[1], image.shape[0], size, feather), out=mask
        )
    return FaceCanvas(
        int(x0),
        int(y0),
        int(x1),
        int(y1),
        scale,
        image,
        mask,
        tuple(to_chip),
        tuple(sizes),
        pyramids,
        resampling_variance=resampling_variance,
    )
