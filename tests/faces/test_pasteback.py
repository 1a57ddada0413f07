"""Photo deltas: overlapping faces merge without adding up, separate ones stay apart, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from ulixes_onnx.errors import FaceError, ImageError
from ulixes_onnx.faces.pasteback import DeltaPatch, PhotoDelta, merge_patches


def _patch(x0: int, y0: int, value: float, size: int = 150) -> DeltaPatch:
    return DeltaPatch(x0, y0, np.full((size, size, 3), value, np.float32), np.ones((size, size), np.float32))


def test_overlapping_faces_keep_the_largest_change_per_element():
    [patch] = merge_patches([_patch(0, 0, 0.1 * 127.5), _patch(60, 0, -0.2 * 127.5)])
    assert (patch.x0, patch.x1) == (0, 210)
    # Where both patches lie the larger magnitude (-0.2) wins: nothing adds up.
    np.testing.assert_allclose(patch.delta[75, 100], -0.2 * 127.5, rtol=1e-6)
    np.testing.assert_allclose(patch.delta[75, 40], 0.1 * 127.5, rtol=1e-6)
    np.testing.assert_allclose(patch.mask[75, 100], 1.0)


def test_sum_adds_overlapping_changes():
    [patch] = merge_patches([_patch(0, 0, 1.0), _patch(60, 0, 2.0)], "sum")
    assert patch.delta[75, 100, 0] == 3.0 and patch.delta[75, 40, 0] == 1.0


def test_separate_faces_get_separate_patches():
    assert len(merge_patches([_patch(0, 0, 1.0), _patch(400, 300, 1.0)])) == 2


def test_an_unknown_merge_rule_is_refused():
    with pytest.raises(FaceError, match="unknown patch merge rule"):
        merge_patches([_patch(0, 0, 1.0)], "mean")


def test_delta_only_applies_to_its_own_photo(astronaut):
    delta = PhotoDelta(512, 512, (_patch(10, 10, 3.0, 20),))
    cloaked = delta.apply(astronaut)
    assert np.array_equal(cloaked[:10], astronaut[:10])
    assert np.array_equal(cloaked[15, 15], np.clip(astronaut[15, 15].astype(int) + 3, 0, 255))
    with pytest.raises(ImageError, match="512x512"):
        delta.apply(astronaut[:100])
    with pytest.raises(ImageError):
        delta.apply(astronaut.astype(np.float32))
