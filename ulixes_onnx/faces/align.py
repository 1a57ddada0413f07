"""Alignment: the affine map from a photo to each model's face chip, and chip extraction.

A model card names its chip by a key of `CHIP_SPECS`. Chips are canonical: float32 RGB [N, 3, S, S] in
[-1, 1]. Every 2x3 matrix here maps photo pixel centres to chip pixel centres in OpenCV's convention
(the centre of pixel (row r, column c) is the point (c, r)); `Face` coordinates put that centre at
(c + 0.5, r + 0.5), and the conversion happens only in this module.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from ulixes_onnx.errors import FaceError, ModelError
from ulixes_onnx.faces.face import Face, as_rgb_uint8
from ulixes_onnx.faces.shape_predictor import dlib_landmarks, five_point_predictor
from ulixes_onnx.store import ModelStore


def similarity_transform(
    source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """2x3 matrix of the rotation, uniform scale and translation that maps `source` points closest
    to `target` points in the (weighted) least-squares sense (Umeyama 1991, reflections excluded).
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 2:
        raise ValueError(f"need two [K, 2] point sets, got {source.shape} and {target.shape}")
    weights = np.ones(len(source)) if weights is None else np.asarray(weights, dtype=np.float64)
    weights = weights / weights.sum()
    source_mean, target_mean = weights @ source, weights @ target
    source_centred, target_centred = source - source_mean, target - target_mean
    source_variance = weights @ np.sum(source_centred**2, axis=1)
    if source_variance <= 1e-12:
        raise FaceError("the face landmarks coincide, so the face cannot be aligned")
    covariance = (target_centred * weights[:, None]).T @ source_centred
    u, singular_values, vt = np.linalg.svd(covariance)
    # Flip the weakest axis if the best orthogonal map would be a reflection.
    signs = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ np.diag(signs) @ vt
    scale = (singular_values @ signs) / source_variance
    translation = target_mean - scale * rotation @ source_mean
    return np.concatenate([scale * rotation, translation[:, None]], axis=1)


def photo_pixels_per_chip_pixel(matrix: np.ndarray) -> float:
    """How many photo pixels one chip pixel spans (geometric mean over both axes)."""
    return 1.0 / math.sqrt(abs(np.linalg.det(np.asarray(matrix)[:, :2])))


class ChipSpec(ABC):
    """Where a model wants the face: a square chip of `size` pixels placed relative to the face.

    `dlib_pyramid` says the model was trained on chips cut by dlib (see `warp_chips`).
    """

    name: str
    size: int
    dlib_pyramid: bool

    @abstractmethod
    def photo_to_chip(self, photo: np.ndarray, face: Face) -> np.ndarray:
        """The 2x3 float64 matrix taking pixel centres of `photo` (RGB uint8) to this chip's pixel
        centres for `face`, one of the faces detected in it.
        """


@dataclass(frozen=True, eq=False)
class ShapePredictorChipSpec(ChipSpec):
    """dlib's own face chip (dlib.get_face_chip): dlib's 5-point shape predictor finds the eye corners
    and the base of the nose in the rectangle dlib's detector would give the face, and the chip is
    placed on them as dlib's get_face_chip_details places it, `padding` face widths around the face.
    """

    name: str
    size: int
    padding: float
    dlib_pyramid: bool = True
    store: ModelStore | None = None  # where the landmark model is (default: the default store)

    def photo_to_chip(self, photo: np.ndarray, face: Face) -> np.ndarray:
        landmarks = dlib_landmarks(photo, face, five_point_predictor(self.store))
        return dlib_chip_matrix(landmarks, self.size, self.padding)


# Where get_face_chip_details puts the 5 points of dlib's shape predictor (outer and inner corner of
# the eye on the photo's right, outer and inner corner of the other eye, base of the nose) in an
# unpadded chip, as fractions of its side (dlib/image_transforms/interpolation.h).
DLIB_FIVE_POINT_TEMPLATE = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)


def dlib_chip_matrix(points: np.ndarray, size: int, padding: float) -> np.ndarray:
    """The photo -> chip matrix of dlib's get_face_chip_details(shape, size, padding) for the 5 points
    [5, 2] of dlib's shape predictor (pixel centres at integer coordinates, as in dlib).
    """
    template = (padding + DLIB_FIVE_POINT_TEMPLATE) / (1 + 2 * padding) * size
    chip_to_photo = similarity_transform(template, points)
    scale = math.hypot(chip_to_photo[0, 0], chip_to_photo[1, 0])
    rotation = chip_to_photo[:, :2] / scale
    centre = chip_to_photo @ np.array([size / 2, size / 2, 1.0])
    # dlib turns the fit into a rectangle of size * scale - 1 photo pixels centred on the chip's
    # middle, whose corners are the centres of the chip's corner pixels: so a chip pixel spans
    # slightly less than `scale` photo pixels, and the chip's middle pixel sits on `centre`.
    step = (size * scale - 1) / (size - 1)
    linear = rotation.T / step
    return np.concatenate([linear, ((size - 1) / 2 - linear @ centre)[:, None]], axis=1)


@dataclass(frozen=True, eq=False)
class BoxChipSpec(ChipSpec):
    """FaceNet-style chip: the detector box grown by `margin` times its width and height on every
    side, cropped without rotation and resized to size x size (stretched, as upstream).
    """

    name: str
    size: int
    margin: float
    dlib_pyramid: bool = False

    def photo_to_chip(self, photo: np.ndarray, face: Face) -> np.ndarray:
        x0, y0, x1, y1 = face.box
        grow_x, grow_y = self.margin * (x1 - x0), self.margin * (y1 - y0)
        left, top = x0 - grow_x, y0 - grow_y
        scale_x = self.size / (x1 - x0 + 2 * grow_x)
        scale_y = self.size / (y1 - y0 + 2 * grow_y)
        # Chip edge coordinate = (photo edge coordinate - crop corner) * scale; centres sit 0.5 in.
        return np.array(
            [
                [scale_x, 0.0, scale_x * (0.5 - left) - 0.5],
                [0.0, scale_y, scale_y * (0.5 - top) - 0.5],
            ]
        )


@dataclass(frozen=True, eq=False)
class LandmarkChipSpec(ChipSpec):
    """Chip placed by a similarity transform of the detector's 5 landmarks (eyes, nose, mouth corners,
    as `Face` orders them) onto `template`, given in pixel centres of the chip as insightface and
    OpenCV's FaceRecognizerSF give theirs.
    """

    name: str
    size: int
    template: np.ndarray
    dlib_pyramid: bool = False

    def photo_to_chip(self, photo: np.ndarray, face: Face) -> np.ndarray:
        # Face puts a pixel's centre at (c + 0.5, r + 0.5); the template's convention puts it at (c, r).
        return similarity_transform(face.landmarks - 0.5, self.template)


# Photo-pixel shift per pyramid level between where dlib's chip extractor assumes a level pixel lies
# (2q + (2.5, 1.5)) and where its 5-tap filter centres it (2q + 2), relative to OpenCV's pyrDown.
DLIB_PYRAMID_OFFSET = (0.5, -0.5)

# FaceNet aligns with a 32-pixel margin on 160-pixel chips (davidsandberg/facenet, LFW protocol),
# i.e. the box fills 128 of 160 pixels; as a fraction of the box that is 16 / 128 per side.
FACENET_MARGIN = 16 / 128

# Where ArcFace-family recognizers (insightface, OpenCV's SFace) want the 5 landmarks of a 112 x 112
# chip: left eye, right eye, nose tip, left and right mouth corner, as seen in the photo.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)

CHIP_SPECS: dict[str, ChipSpec] = {
    spec.name: spec
    for spec in (
        ShapePredictorChipSpec(name="dlib-150-pad0.25", size=150, padding=0.25),
        ShapePredictorChipSpec(name="dlib-224-pad0.25", size=224, padding=0.25),
        BoxChipSpec(name="facenet-152-margin", size=152, margin=FACENET_MARGIN),
        BoxChipSpec(name="facenet-160-margin", size=160, margin=FACENET_MARGIN),
        BoxChipSpec(name="facenet-224-margin", size=224, margin=FACENET_MARGIN),
        # The detector's box itself, stretched (memento-face embeds its own detector's boxes so) ...
        BoxChipSpec(name="box-256", size=256, margin=0.0),
        # ... and LightCNN's package embeds facenet-pytorch's MTCNN boxes so.
        BoxChipSpec(name="box-128", size=128, margin=0.0),
        LandmarkChipSpec(name="arcface-112", size=112, template=ARCFACE_TEMPLATE),
    )
}


def chip_spec(name: str, store: ModelStore | None = None) -> ChipSpec:
    """The registered chip layout called `name`, taking any model it needs from `store`."""
    try:
        spec = CHIP_SPECS[name]
    except KeyError:
        known = ", ".join(sorted(CHIP_SPECS))
        raise ModelError(f"unknown face chip layout {name!r}; use one of: {known}") from None
    return replace(spec, store=store) if isinstance(spec, ShapePredictorChipSpec) else spec


@dataclass(frozen=True, eq=False)
class AlignedChips:
    """Canonical chips float32 [N, 3, S, S] in [-1, 1] and their photo -> chip matrices [N, 2, 3]."""

    chips: np.ndarray
    matrices: np.ndarray


def extract_chips(photo: np.ndarray, faces: Sequence[Face], spec: ChipSpec) -> AlignedChips:
    """Align every face in an RGB uint8 photo to `spec`."""
    matrices = np.array([spec.photo_to_chip(photo, face) for face in faces]).reshape(-1, 2, 3)
    chips = warp_chips(photo, matrices, spec.size, dlib_pyramid=spec.dlib_pyramid)
    return AlignedChips(chips=chips, matrices=matrices)


def warp_chips(
    photo: np.ndarray, matrices: np.ndarray, size: int, *, dlib_pyramid: bool = False
) -> np.ndarray:
    """Canonical size x size chips [N, 3, size, size] cut from the photo through `matrices`.

    Resampling follows dlib's chip extraction: bilinear, after halving the photo with a Gaussian
    pyramid while the chip would still be more than 2x smaller than its photo region (so strongly
    shrunk faces are low-passed instead of aliased); parts outside the photo are black.
    `dlib_pyramid` places pyramid levels exactly where dlib does, for chips fed to dlib's network.
    """
    photo = as_rgb_uint8(photo)
    chips = np.empty((len(matrices), size, size, 3), np.float32)
    for chip, matrix in zip(chips, matrices, strict=True):
        chip[:] = _warp_chip(photo, matrix, size, dlib_pyramid)
    return chips.transpose(0, 3, 1, 2) * np.float32(1 / 127.5) - np.float32(1)


def chip_corners_in_photo(matrix: np.ndarray, size: int) -> np.ndarray:
    """[4, 2] photo coordinates (pixel-centre convention) of the chip's outer corners."""
    chip_to_photo = cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))
    edge = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [size - 0.5, size - 0.5], [-0.5, size - 0.5]])
    return edge @ chip_to_photo[:, :2].T + chip_to_photo[:, 2]


def pyramid_halvings(shrink: float) -> int:
    """How many times `warp_chips` halves the photo before sampling a chip `shrink` times coarser."""
    return max(math.ceil(math.log2(shrink)) - 1, 0) if shrink > 1 else 0


def sampled_matrix(matrix: np.ndarray, *, dlib_pyramid: bool) -> np.ndarray:
    """The photo -> chip map of where the content of `warp_chips`' chip pixels comes from: with
    `dlib_pyramid`, each pyramid level places its pixels DLIB_PYRAMID_OFFSET off their filters'
    centres, which moves the whole chip by up to a third of a chip pixel against `matrix`."""
    matrix = np.array(matrix, np.float64)
    if dlib_pyramid:
        levels = 2.0 ** pyramid_halvings(photo_pixels_per_chip_pixel(matrix))
        matrix[:, 2] += matrix[:, :2] @ ((levels - 1) * np.array(DLIB_PYRAMID_OFFSET))
    return matrix


# The variance (pixels squared) of bilinear interpolation's blur, averaged over where it samples.
BILINEAR_VARIANCE = 1 / 6


def sampling_variance(shrink: float) -> float:
    """The variance, in photo pixels squared, of the blur `warp_chips` applies to a chip `shrink`
    times coarser than the photo: its pyramid's 5-tap filters (variance 1 at their own level each) and
    the final bilinear interpolation (1/6 of a level pixel squared, averaged over where it samples)."""
    level = 2.0 ** pyramid_halvings(shrink)
    return (level**2 - 1) / 3 + level**2 * BILINEAR_VARIANCE


def _warp_chip(photo: np.ndarray, matrix: np.ndarray, size: int, dlib_pyramid: bool) -> np.ndarray:
    halvings = pyramid_halvings(photo_pixels_per_chip_pixel(matrix))
    # Work on the chip's footprint only, with room for the pyramid filter's support.
    reach = 2 * 2**halvings + 2
    corners = chip_corners_in_photo(matrix, size)
    height, width = photo.shape[:2]
    x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int) - reach, 0)
    x1 = min(int(np.ceil(corners[:, 0].max())) + reach + 1, width)
    y1 = min(int(np.ceil(corners[:, 1].max())) + reach + 1, height)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((size, size, 3), np.float32)
    patch = photo[y0:y1, x0:x1].astype(np.float32)
    # pyrDown centres level pixel q on pixel 2q of the level below. dlib's chip extractor assumes
    # 2q + (2.5, 1.5) for its own pyramid (half a pixel off its filter's centre in each axis);
    # chips meant for dlib's network reproduce that placement.
    step_offset = np.array(DLIB_PYRAMID_OFFSET if dlib_pyramid else (0.0, 0.0))
    level_to_patch = np.eye(3)
    for _ in range(halvings):
        patch = cv2.pyrDown(patch)
        level_to_patch = level_to_patch @ np.array(
            [[2.0, 0.0, step_offset[0]], [0.0, 2.0, step_offset[1]], [0.0, 0.0, 1.0]]
        )
    patch_to_chip = np.array(matrix, dtype=np.float64)
    patch_to_chip[:, 2] += patch_to_chip[:, :2] @ np.array([x0, y0], dtype=np.float64)
    level_to_chip = patch_to_chip @ level_to_patch
    return cv2.warpAffine(
        patch,
        level_to_chip,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
