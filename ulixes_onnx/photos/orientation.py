"""EXIF orientation: between the pixel layout a file stores and the upright view of the scene.

Faces are found and cloaked on the upright view, but a phone photo is written back in its stored
layout with its orientation tag unchanged, so that only the face regions change (re-encoding a
rotated JPEG would move every pixel). Each of the eight EXIF 2.32 orientations is, from the upright
view to the stored layout, an optional flip of rows, an optional flip of columns, then an optional
transpose.
"""

from __future__ import annotations

import numpy as np

# orientation -> (flip rows, flip columns, transpose), going from upright to stored.
_UPRIGHT_TO_STORED = {
    1: (False, False, False),
    2: (False, True, False),
    3: (True, True, False),
    4: (True, False, False),
    5: (False, False, True),
    6: (False, True, True),
    7: (True, True, True),
    8: (True, False, True),
}


def is_valid_orientation(orientation: object) -> bool:
    return isinstance(orientation, int) and orientation in _UPRIGHT_TO_STORED


def to_upright(stored: np.ndarray, orientation: int) -> np.ndarray:
    """A view of `stored` (HxW or HxWxC) as the scene is meant to be seen."""
    flip_rows, flip_columns, transpose = _UPRIGHT_TO_STORED[orientation]
    view = stored.swapaxes(0, 1) if transpose else stored
    return view[:: -1 if flip_rows else 1, :: -1 if flip_columns else 1]


def to_stored(upright: np.ndarray, orientation: int) -> np.ndarray:
    """A view of `upright` (or of a patch of it) in the layout the file stores: undoes `to_upright`."""
    flip_rows, flip_columns, transpose = _UPRIGHT_TO_STORED[orientation]
    view = upright[:: -1 if flip_rows else 1, :: -1 if flip_columns else 1]
    return view.swapaxes(0, 1) if transpose else view


def stored_rectangle(
    rectangle: tuple[int, int, int, int], upright_size: tuple[int, int], orientation: int
) -> tuple[int, int, int, int]:
    """Where the upright rectangle (x0, y0, x1, y1; end-exclusive) of a photo whose upright view is
    (height, width) lies in the stored layout."""
    x0, y0, x1, y1 = rectangle
    height, width = upright_size
    flip_rows, flip_columns, transpose = _UPRIGHT_TO_STORED[orientation]
    if flip_columns:
        x0, x1 = width - x1, width - x0
    if flip_rows:
        y0, y1 = height - y1, height - y0
    return (y0, x0, y1, x1) if transpose else (x0, y0, x1, y1)
