"""Tests for moving pixels and rectangles between a photo's stored layout and its upright view."""

import numpy as np
import pytest

from ulixes_onnx.photos.orientation import is_valid_orientation, stored_rectangle, to_stored, to_upright

ORIENTATIONS = range(1, 9)


@pytest.fixture(scope="module")
def stored() -> np.ndarray:
    # Not square and every value distinct, so any wrong flip or transpose shows.
    return np.arange(5 * 7 * 2).reshape(5, 7, 2)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_to_stored_undoes_to_upright(stored, orientation):
    upright = to_upright(stored, orientation)
    assert upright.shape[:2] == (stored.shape if orientation < 5 else stored.shape[1::-1])[:2]
    assert np.array_equal(to_stored(upright, orientation), stored)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_a_rectangle_lands_where_its_pixels_do(orientation):
    upright_size = (6, 9)
    x0, y0, x1, y1 = 2, 1, 7, 4
    marked = np.zeros(upright_size, bool)
    marked[y0:y1, x0:x1] = True
    rows, columns = np.nonzero(to_stored(marked, orientation))
    expected = (columns.min(), rows.min(), columns.max() + 1, rows.max() + 1)
    assert stored_rectangle((x0, y0, x1, y1), upright_size, orientation) == expected


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_a_patch_moved_with_its_rectangle_matches_the_whole_photo_moved(orientation):
    upright = np.random.default_rng(orientation).integers(0, 255, (6, 9, 3))
    x0, y0, x1, y1 = stored_rectangle((2, 1, 7, 4), (6, 9), orientation)
    assert np.array_equal(
        to_stored(upright[1:4, 2:7], orientation), to_stored(upright, orientation)[y0:y1, x0:x1]
    )


@pytest.mark.parametrize(
    ("value", "valid"), [(1, True), (8, True), (0, False), (9, False), ("6", False), (None, False)]
)
def test_only_the_eight_exif_orientations_are_valid(value, valid):
    assert is_valid_orientation(value) is valid
