"""dlib's 5-point face landmark shape predictor, run in NumPy on the faces MTCNN finds.

The predictor (zoo/dlib_shape_predictor.py reads it) places its mean shape in a face rectangle and
refines it through a cascade of levels. Each level samples a few hundred grayscale pixels at offsets
anchored to the current shape's points, and a forest of regression trees, each split comparing the
difference of two sampled pixels with a threshold, adds up the shape updates stored in the leaves it
reaches.

Coordinates follow dlib: pixel centres sit at integer coordinates (the pixel in row r and column c is
the point (c, r)), and a rectangle (left, top, right, bottom) names the centres of its corner pixels,
as dlib's `rectangle` does. `face_rectangle` converts an MTCNN `Face` into the rectangle the predictor
was trained on.
"""

from __future__ import annotations

import itertools
import math
from functools import cache
from pathlib import Path

import numpy as np

from ulixes_onnx.faces.face import Face, as_rgb_uint8
from ulixes_onnx.store import ModelStore
from ulixes_onnx.zoo.dlib_shape_predictor import CascadeLevel, ShapePredictor

LANDMARK_MODEL = "dlib-landmarks"
# Where dlib's HOG detector puts its square relative to MTCNN's 5 landmarks: the centre is their mean
# moved by RECTANGLE_SHIFT times their RMS distance from it, the side RECTANGLE_SIDE times that
# distance. Fitted by tests/faces/derive_dlib_rectangle.py on half of the faces-dev identities.
RECTANGLE_SHIFT = (-0.02173, 0.02310)
RECTANGLE_SIDE = 3.69682
# dlib's HOG detector reports squares on a grid: one 8-pixel HOG cell apart, a ninth of the side (as
# seen on faces-dev), and one image pyramid level apart in size (pyramid_down<6>: 6/5).
DETECTOR_POSITION_STEP = 1 / 9
DETECTOR_SCALE_STEP = 6 / 5


def predict_shapes(predictor: ShapePredictor, photo: np.ndarray, rectangles: np.ndarray) -> np.ndarray:
    """Landmarks float64 [N, P, 2] for the face in each rectangle [N, 4] (left, top, right, bottom)
    of an RGB or grayscale uint8 photo, unrounded (dlib rounds them to whole pixels).
    """
    rectangles = np.asarray(rectangles, dtype=np.float64).reshape(-1, 4)
    intensity = _intensity_image(photo)
    # The shape lives in the rectangle's unit square; float32 throughout, as dlib computes it.
    shapes = np.broadcast_to(predictor.mean_shape, (len(rectangles), *predictor.mean_shape.shape)).copy()
    origin, extent = rectangles[:, None, :2], rectangles[:, None, 2:] - rectangles[:, None, :2]
    for level in predictor.levels:
        warp = _similarity_linear_part(predictor.mean_shape, shapes).astype(np.float32)
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
    integrated with the two-point Gauss-Legendre rule per coordinate (8 rectangles: the three-point
    rule's 27 gain little accuracy for their time; benchmarks/results/design-measurements-*).
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
    return np.tensordot(rectangle_weights, predict_shapes(predictor, photo, rectangles), axes=1)


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
