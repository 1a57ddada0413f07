"""A photo's cloak as patches over its face regions, and how patches of overlapping faces combine.

Work and memory stay within each face's footprint (the faces' canvases bring their changes to the
photo's resolution, see `canvas`); where footprints overlap, every element keeps the contribution of
largest magnitude (the element-wise MAX rule the Ulixes paper also uses to ensemble models), so
overlapping cloaks never add up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ulixes_onnx.errors import FaceError, ImageError

# Below this the chip is upsampled more than 8x from the photo (a face under ~12 px for a 150 px chip,
# smaller than the detector's smallest): too few photo pixels to carry a cloak. Cloaks are made on
# the photo's own pixels (faces/canvas.py), so small faces down to that are cloaked, and the closed
# loop checks what survives: dlib still matches faces of 28-40 px.
MIN_PHOTO_PIXELS_PER_CHIP_PIXEL = 1 / 8


def too_small_reason(scale: float, minimum: float) -> str:
    """Why a face whose chip pixel covers `scale` photo pixels is under `minimum`: the scale rounded
    down and the minimum rounded up, so the two never print as equal."""
    shown_scale = math.floor(scale * 1000 + 1e-6) / 1000  # the epsilon keeps 0.3 from printing as 0.299
    shown_minimum = math.ceil(minimum * 1000) / 1000
    return f"one chip pixel covers {shown_scale:.3f} photo pixels, less than the {shown_minimum:.3f} needed"


@dataclass(frozen=True, eq=False)
class DeltaPatch:
    """A photo-space change over the rectangle whose top-left pixel is (x0, y0).

    `delta` is float32 [h, w, 3] in 0..255 units (already multiplied by `mask`), `mask` float32 [h, w]
    in [0, 1] is the faces' combined blending weight.
    """

    x0: int
    y0: int
    delta: np.ndarray
    mask: np.ndarray

    @property
    def x1(self) -> int:
        return self.x0 + self.delta.shape[1]

    @property
    def y1(self) -> int:
        return self.y0 + self.delta.shape[0]


@dataclass(frozen=True, eq=False)
class PhotoDelta:
    """The change to one photo: non-overlapping patches over its face regions."""

    height: int
    width: int
    patches: tuple[DeltaPatch, ...]

    def add_to(self, photo: np.ndarray) -> np.ndarray:
        """A float32 copy of the photo (HxWx3, 0..255 units) with the delta added, clipped to 0..255."""
        result = np.array(photo, dtype=np.float32)
        for patch in self.patches:
            region = result[patch.y0 : patch.y1, patch.x0 : patch.x1]
            np.clip(region + patch.delta, 0, 255, out=region)
        return result

    def apply(self, photo: np.ndarray) -> np.ndarray:
        """A copy of the uint8 RGB photo with the delta added and rounded; other pixels are untouched."""
        if photo.dtype != np.uint8 or photo.shape != (self.height, self.width, 3):
            raise ImageError(
                f"the delta was made for a {self.height}x{self.width} RGB uint8 photo, not "
                f"{photo.dtype} {photo.shape}; paste back onto the photo the faces came from"
            )
        result = photo.copy()
        for patch in self.patches:
            region = result[patch.y0 : patch.y1, patch.x0 : patch.x1]
            changed = np.rint(region.astype(np.float32) + patch.delta)
            region[:] = np.clip(changed, 0, 255).astype(np.uint8)
        return result


def merge_patches(patches: Sequence[DeltaPatch], rule: str = "max") -> list[DeltaPatch]:
    """Combine patches whose rectangles overlap (transitively) into one patch each.

    `rule` "max" keeps, per element, the change of largest magnitude (overlapping faces, and the
    paper's Ensemble 2 across models); "sum" adds the changes (the paper's Ensemble 1).
    """
    if rule not in ("max", "sum"):
        raise FaceError(f"unknown patch merge rule {rule!r}; use 'max' or 'sum'")
    groups: list[list[DeltaPatch]] = []
    for patch in patches:
        touching = [group for group in groups if any(_overlap(patch, other) for other in group)]
        merged = [patch] + [member for group in touching for member in group]
        groups = [group for group in groups if group not in touching] + [merged]
    return [group[0] if len(group) == 1 else _combine(group, rule) for group in groups]


def _overlap(a: DeltaPatch, b: DeltaPatch) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _combine(group: list[DeltaPatch], rule: str) -> DeltaPatch:
    x0, y0 = min(p.x0 for p in group), min(p.y0 for p in group)
    x1, y1 = max(p.x1 for p in group), max(p.y1 for p in group)
    delta = np.zeros((y1 - y0, x1 - x0, 3), np.float32)
    mask = np.zeros((y1 - y0, x1 - x0), np.float32)
    for patch in group:
        rows = slice(patch.y0 - y0, patch.y1 - y0)
        cols = slice(patch.x0 - x0, patch.x1 - x0)
        current = delta[rows, cols]
        if rule == "sum":
            current += patch.delta
        else:
            current[:] = np.where(np.abs(patch.delta) > np.abs(current), patch.delta, current)
        np.maximum(mask[rows, cols], patch.mask, out=mask[rows, cols])
    return DeltaPatch(x0, y0, delta, mask)
