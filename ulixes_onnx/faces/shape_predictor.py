"""dlib's face landmark shape predictor (Kazemi & Sullivan 2014) read from its .dat file and run in NumPy.

The predictor places its mean shape in a face rectangle and refines it through a cascade of levels.
Each level samples a few hundred grayscale pixels at offsets anchored to the current shape's points,
and a forest of regression trees, each split comparing the difference of two sampled pixels with a
threshold, adds up the shape updates stored in the leaves it reaches.

Coordinates follow dlib: pixel centres sit at integer coordinates (the pixel in row r and column c is
the point (c, r)), and a rectangle (left, top, right, bottom) names the centres of its corner pixels,
as dlib's `rectangle` does. `face_rectangle` converts an MTCNN `Face` into the rectangle the predictor
was trained on.

File layout (dlib/image_processing/shape_predictor.h, serialised with dlib's primitives): version 1;
the mean shape as a matrix column (x0, y0, x1, y1, ...) in the rectangle's unit square; the cascade's
forests (per level a vector of trees; per tree its splits (pixel index, pixel index, threshold) in
breadth-first order, then its leaves, each a matrix column of shape updates); per level the anchor
point of every feature pixel; per level each feature pixel's offset from its anchor.
"""

from __future__ import annotations

import io
import itertools
import math
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from ulixes_onnx.faces.mtcnn import Face, as_rgb_uint8
from ulixes_onnx.store import ModelStore
from ulixes_onnx.zoo.dlib_format import DlibFormatError, DlibStream

LANDMARK_MODEL = "dlib-landmarks"
_LEVEL_FIELDS = ("anchors", "offsets", "first_pixel", "second_pixel", "thresholds", "leaves")
# Where dlib's HOG detector puts its square relative to MTCNN's 5 landmarks: the centre is their mean
# moved by RECTANGLE_SHIFT times their RMS distance from it, the side RECTANGLE_SIDE times that
# distance. Fitted by tests/faces/derive_dlib_rectangle.py on half of the faces-dev identities.
RECTANGLE_SHIFT = (-0.02173, 0.02310)
RECTANGLE_SIDE = 3.69682
# dlib's HOG detector reports squares on a grid: one 8-pixel HOG cell apart, a ninth of the side (as
# seen on faces-dev), and one image pyramid level apart in size (pyramid_down<6>: 6/5).
DETECTOR_POSITION_STEP = 1 / 9
DETECTOR_SCALE_STEP = 6 / 5


@dataclass(frozen=True, eq=False)
class CascadeLevel:
    """One level of the cascade: where its feature pixels are and the forest that reads them.

    `anchors` [F] is the shape point each feature pixel follows and `offsets` [F, 2] its offset from
    that point in the mean shape's frame; the trees' splits are `first_pixel`, `second_pixel` [T, S]
    (feature indices) and `thresholds` [T, S], stored breadth-first (node i has children 2i+1 and
    2i+2); `leaves` [T, S + 1, 2P] are the shape updates (x0, y0, x1, y1, ...).
    """

    anchors: np.ndarray
    offsets: np.ndarray
    first_pixel: np.ndarray
    second_pixel: np.ndarray
    thresholds: np.ndarray
    leaves: np.ndarray

    @property
    def depth(self) -> int:
        return int(self.thresholds.shape[1] + 1).bit_length() - 1


@dataclass(frozen=True, eq=False)
class ShapePredictor:
    """A dlib shape predictor: `mean_shape` [P, 2] in the unit square of the rectangle, and its levels."""

    mean_shape: np.ndarray
    levels: tuple[CascadeLevel, ...]

    @classmethod
    def from_npz(cls, path: Path) -> ShapePredictor:
        """A predictor saved by `to_npz`."""
        with np.load(path, allow_pickle=False) as arrays:
            count = sum(1 for name in arrays.files if name.endswith("/anchors"))
            levels = tuple(
                CascadeLevel(*(arrays[f"level{index}/{field}"] for field in _LEVEL_FIELDS))
                for index in range(count)
            )
            return cls(arrays["mean_shape"], levels)

    def to_npz(self) -> bytes:
        """The predictor's arrays in NumPy's .npz format; the same predictor always gives the same bytes."""
        arrays = {"mean_shape": self.mean_shape}
        for index, level in enumerate(self.levels):
            arrays |= {f"level{index}/{field}": getattr(level, field) for field in _LEVEL_FIELDS}
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for name, array in arrays.items():
                # A fixed timestamp (numpy.savez stamps the current time), so the sha256 can be pinned.
                entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with archive.open(entry, "w") as stream:
                    np.lib.format.write_array(stream, np.ascontiguousarray(array), allow_pickle=False)
        return buffer.getvalue()

    def predict(self, photo: np.ndarray, rectangles: np.ndarray) -> np.ndarray:
        """Landmarks float64 [N, P, 2] for the face in each rectangle [N, 4] (left, top, right, bottom)
        of an RGB or grayscale uint8 photo, unrounded (dlib rounds them to whole pixels).
        """
        rectangles = np.asarray(rectangles, dtype=np.float64).reshape(-1, 4)
        intensity = _intensity_image(photo)
        # The shape lives in the rectangle's unit square; float32 throughout, as dlib computes it.
        shapes = np.broadcast_to(self.mean_shape, (len(rectangles), *self.mean_shape.shape)).copy()
        origin, extent = rectangles[:, None, :2], rectangles[:, None, 2:] - rectangles[:, None, :2]
        for level in self.levels:
            warp = _similarity_linear_part(self.mean_shape, shapes).astype(np.float32)
            unit_points = level.offsets @ warp.transpose(0, 2, 1) + shapes[:, level.anchors]
            pixels = np.floor(origin + unit_points * extent + 0.5).astype(np.int64)
            values = _sample(intensity, pixels)
            updates = _evaluate_forest(level, values)
            # dlib adds the trees' updates one after another in float32; a running sum keeps that order.
            running = np.cumsum(np.concatenate([shapes.reshape(len(shapes), 1, -1), updates], 1), 1)
            shapes = running[:, -1].reshape(shapes.shape)
        return origin + shapes.astype(np.float64) * extent


def five_point_predictor(store: ModelStore | None = None) -> ShapePredictor:
    """dlib's 5-point face landmark model from the store (the default one unless given), loaded once
    per process and store."""
    return _stored_predictor((store or ModelStore()).root)


@cache
def _stored_predictor(root: Path) -> ShapePredictor:
    return ShapePredictor.from_npz(ModelStore(root).get(LANDMARK_MODEL).paths["predictor"])


def landmark_centre_and_spread(face: Face) -> tuple[np.ndarray, float]:
    """The mean of an MTCNN face's landmarks in dlib's pixel-centre coordinates, and their RMS
    distance from it: the face's position and size, whatever its pose.
    """
    landmarks = face.landmarks - 0.5  # Face's pixel-edge coordinates -> dlib's pixel centres
    centre = landmarks.mean(axis=0)
    return centre, math.sqrt(np.mean(np.sum((landmarks - centre) ** 2, axis=1)))


def face_rectangle(face: Face) -> np.ndarray:
    """The rectangle (left, top, right, bottom) dlib's HOG face detector would give, on average, for
    an MTCNN face: the kind of square the 5-point predictor was trained on.
    """
    centre, spread = landmark_centre_and_spread(face)
    centre = centre + spread * np.asarray(RECTANGLE_SHIFT)
    half_side = RECTANGLE_SIDE * spread / 2
    return np.concatenate([centre - half_side, centre + half_side])


def dlib_landmarks(photo: np.ndarray, face: Face, predictor: ShapePredictor | None = None) -> np.ndarray:
    """The 5 points [5, 2] (dlib's pixel-centre coordinates) that dlib's HOG detector and 5-point
    predictor would give, on average, for an MTCNN face in an RGB or grayscale uint8 photo.

    The predictor's output moves with the rectangle it starts from, and dlib's detector reports
    rectangles on a grid (see DETECTOR_POSITION_STEP), so the points are averaged over rectangles
    spread like that grid's rounding error: uniform over one step in size and in each direction,
    integrated with the two-point Gauss-Legendre rule per coordinate (8 rectangles; the three-point
    rule's 27 measured 0.041 instead of 0.043 mean descriptor error against dlib's own pipeline, for
    3.4 times the time).
    """
    rectangle = face_rectangle(face)
    centre, side = (rectangle[:2] + rectangle[2:]) / 2, rectangle[2] - rectangle[0]
    # Gauss-Legendre nodes and weights for the uniform distribution on [-1/2, 1/2].
    nodes = np.array([-1.0, 1.0]) / (2 * math.sqrt(3))
    weights = np.array([0.5, 0.5])
    grid = np.array(list(itertools.product(range(2), repeat=3)))  # size, x, y node of each rectangle
    sides = side * DETECTOR_SCALE_STEP ** nodes[grid[:, :1]]
    centres = centre + side * DETECTOR_POSITION_STEP * nodes[grid[:, 1:]]
    rectangles = np.concatenate([centres - sides / 2, centres + sides / 2], axis=1)
    rectangle_weights = weights[grid].prod(axis=1)
    predictor = predictor or five_point_predictor()
    return np.tensordot(rectangle_weights, predictor.predict(photo, rectangles), axes=1)


def read_shape_predictor(data: bytes) -> ShapePredictor:
    """Deserialise a dlib `shape_predictor` (the bytes of a .dat file)."""
    stream = DlibStream(data)
    stream.expect_version("shape_predictor", 1)
    mean_column = stream.matrix()
    if mean_column.shape[1] != 1 or mean_column.size % 2 or mean_column.size == 0:
        raise DlibFormatError(f"the mean shape is a {mean_column.shape} matrix, not a column of (x, y)")
    mean_shape = mean_column.reshape(-1, 2).astype(np.float32)
    forests = [_read_forest(stream, mean_column.size) for _ in range(_count(stream, "cascade levels"))]
    anchor_sets = [stream.integers(_count(stream, "feature pixels")) for _ in range(_count(stream, "levels"))]
    offset_sets = [
        stream.reals(2 * _count(stream, "feature pixels")).reshape(-1, 2).astype(np.float32)
        for _ in range(_count(stream, "levels"))
    ]
    if not stream.at_end:
        raise DlibFormatError(f"{len(data) - stream.offset} unexpected bytes after the shape predictor")
    if not len(forests) == len(anchor_sets) == len(offset_sets):
        raise DlibFormatError("the shape predictor's forests and feature pixels disagree on the cascade")
    levels = []
    for (first, second, thresholds, leaves), anchors, offsets in zip(
        forests, anchor_sets, offset_sets, strict=True
    ):
        if (
            len(anchors) != len(offsets)
            or anchors.min(initial=0) < 0
            or anchors.max(initial=0) >= len(mean_shape)
        ):
            raise DlibFormatError("a feature pixel is anchored to a shape point that does not exist")
        if (
            max(first.max(initial=0), second.max(initial=0)) >= len(anchors)
            or min(first.min(initial=0), second.min(initial=0)) < 0
        ):
            raise DlibFormatError("a tree compares a feature pixel that its cascade level does not sample")
        levels.append(CascadeLevel(anchors, offsets, first, second, thresholds, leaves))
    return ShapePredictor(mean_shape, tuple(levels))


def _count(stream: DlibStream, what: str, limit: int = 1 << 24) -> int:
    count = stream.integer()
    if not 0 <= count <= limit:
        raise DlibFormatError(f"implausible number of {what}: {count} at {stream.offset}")
    return count


def _read_forest(stream: DlibStream, shape_size: int) -> tuple[np.ndarray, ...]:
    """The trees of one level as arrays (first pixel, second pixel, threshold [T, S], leaves [T, L, D]).

    dlib trees are complete binary trees and a model's trees all share one depth, so a level is a
    fixed-length run of integers per tree: it is decoded in one go and checked to have that layout.
    """
    tree_count = _count(stream, "trees")
    if tree_count == 0:
        raise DlibFormatError(f"a cascade level without trees at {stream.offset}")
    split_count = _count(stream, "tree splits")
    leaf_count = split_count + 1
    if leaf_count & split_count:
        raise DlibFormatError(f"a tree with {split_count} splits is not a complete binary tree")
    # Per tree: split count, (pixel, pixel, mantissa, exponent) per split, leaf count, then per leaf
    # its rows, its columns and (mantissa, exponent) per shape coordinate.
    leaf_width = 2 + 2 * shape_size
    tree_width = 1 + 4 * split_count + 1 + leaf_count * leaf_width
    trees = np.concatenate([[split_count], stream.integers(tree_count * tree_width - 1)])
    trees = trees.reshape(tree_count, tree_width)
    splits = trees[:, 1 : 1 + 4 * split_count].reshape(tree_count, split_count, 4)
    leaf_header = trees[:, 1 + 4 * split_count]
    leaves = trees[:, 2 + 4 * split_count :].reshape(tree_count, leaf_count, leaf_width)
    if (
        np.any(trees[:, 0] != split_count)
        or np.any(leaf_header != leaf_count)
        or np.any(np.abs(leaves[:, :, 0]) != shape_size)
        or np.any(np.abs(leaves[:, :, 1]) != 1)
    ):
        raise DlibFormatError("the trees of a cascade level differ in size or do not match the shape")
    thresholds = np.ldexp(splits[:, :, 2].astype(np.float64), splits[:, :, 3]).astype(np.float32)
    updates = leaves[:, :, 2:].reshape(tree_count, leaf_count, shape_size, 2)
    update_values = np.ldexp(updates[..., 0].astype(np.float64), updates[..., 1]).astype(np.float32)
    return splits[:, :, 0], splits[:, :, 1], thresholds, update_values


def _intensity_image(photo: np.ndarray) -> np.ndarray:
    """The photo to sample: grayscale as it is, colour as RGB, whose sampled pixels `_sample` turns
    into dlib's grey (R + G + B) // 3 (no grey copy of the whole photo is made).
    """
    if isinstance(photo, np.ndarray) and photo.dtype == np.uint8 and photo.ndim == 2 and photo.size:
        return photo
    return as_rgb_uint8(photo)


def _sample(image: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """float32 intensities at integer (x, y) `pixels` [..., 2]; 0 outside the image, as in dlib."""
    height, width = image.shape[:2]
    x, y = pixels[..., 0], pixels[..., 1]
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    values = image[np.where(inside, y, 0), np.where(inside, x, 0)]
    if values.ndim > inside.ndim:
        values = values.astype(np.uint16).sum(axis=-1) // 3
    return np.where(inside, values, 0).astype(np.float32)


def _evaluate_forest(level: CascadeLevel, values: np.ndarray) -> np.ndarray:
    """Shape updates [N, T, 2P]: every tree of the level run on every face's feature pixels [N, F]."""
    count, features = values.shape
    trees, splits = level.thresholds.shape
    # Gathers from flat arrays (`take`) cost half as much as two-axis fancy indexing of these sizes.
    tree_splits = np.arange(trees) * splits
    face_features = np.arange(count)[:, None] * features
    flat_values = values.ravel()
    first_pixel, second_pixel = level.first_pixel.ravel(), level.second_pixel.ravel()
    thresholds = level.thresholds.ravel()
    node = np.zeros((count, trees), dtype=np.intp)
    for _ in range(level.depth):
        split = tree_splits + node
        first = flat_values.take(face_features + first_pixel.take(split))
        second = flat_values.take(face_features + second_pixel.take(split))
        # Left child (2i + 1) when the difference exceeds the threshold, right child (2i + 2) otherwise.
        node = 2 * node + 1 + (first - second <= thresholds.take(split))
    leaves = level.leaves.reshape(trees * (splits + 1), -1)
    leaf = np.arange(trees) * (splits + 1) + node - splits
    return leaves.take(leaf.ravel(), axis=0).reshape(count, trees, -1)


def _similarity_linear_part(source: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Scale-rotation matrices [N, 2, 2] of the least-squares similarity from `source` [P, 2] to each
    of `targets` [N, P, 2] (Umeyama 1991 without reflections, computed in float64 as dlib does).
    """
    source = source.astype(np.float64)
    targets = targets.astype(np.float64)
    source_centred = source - source.mean(axis=0)
    target_centred = targets - targets.mean(axis=1, keepdims=True)
    source_variance = np.mean(np.sum(source_centred**2, axis=1))
    covariance = target_centred.transpose(0, 2, 1) @ source_centred / len(source)
    u, singular_values, vt = np.linalg.svd(covariance)
    # Turn the weaker axis around when the best orthogonal map would mirror the shape.
    signs = np.ones_like(singular_values)
    signs[:, 1] = np.where(np.linalg.det(u) * np.linalg.det(vt) < 0, -1.0, 1.0)
    rotation = u @ (signs[:, :, None] * vt)
    scale = np.sum(singular_values * signs, axis=1) / source_variance
    return scale[:, None, None] * rotation
