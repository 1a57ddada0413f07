"""dlib's face landmark shape predictor (Kazemi & Sullivan 2014) as a model file: read from its .dat
file when the store builds it, saved as and loaded from the .npz arrays the store keeps.

A predictor is a mean shape and a cascade of levels; each level samples feature pixels anchored to the
current shape's points and runs a forest of regression trees on them (faces/shape_predictor.py runs it).

File layout (dlib/image_processing/shape_predictor.h, serialised with dlib's primitives): version 1;
the mean shape as a matrix column (x0, y0, x1, y1, ...) in the rectangle's unit square; the cascade's
forests (per level a vector of trees; per tree its splits (pixel index, pixel index, threshold) in
breadth-first order, then its leaves, each a matrix column of shape updates); per level the anchor
point of every feature pixel; per level each feature pixel's offset from its anchor.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ulixes_onnx.zoo.dlib_format import DlibFormatError, DlibStream

_LEVEL_FIELDS = ("anchors", "offsets", "first_pixel", "second_pixel", "thresholds", "leaves")


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
