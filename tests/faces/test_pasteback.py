"""Paste-back: untouched pixels, round trips, borders, tiny and overlapping faces, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from ulixes_onnx.errors import FaceError, ImageError
from ulixes_onnx.faces import chip_spec, extract_chips, paste_back, warp_chips
from ulixes_onnx.faces.pasteback import DEFAULT_FEATHER


def _matrix(scale: float, x0: float, y0: float) -> np.ndarray:
    """Photo -> chip matrix of an unrotated chip whose top-left pixel centre sits at (x0, y0)."""
    return np.array([[1 / scale, 0.0, -x0 / scale], [0.0, 1 / scale, -y0 / scale]])


def _constant(value: float, count: int = 1, size: int = 150) -> np.ndarray:
    return np.full((count, 3, size, size), value, np.float32)


@pytest.fixture(scope="module")
def aligned(detector, astronaut):
    return extract_chips(astronaut, detector.detect(astronaut), chip_spec("dlib-150-pad0.25"))


def test_zero_perturbation_leaves_the_photo_bit_identical(astronaut, aligned):
    delta = paste_back(np.zeros_like(aligned.chips), aligned.matrices, astronaut.shape)
    assert len(delta.patches) == 1 and not delta.skipped
    assert not delta.patches[0].delta.any()
    cloaked = delta.apply(astronaut)
    np.testing.assert_array_equal(cloaked, astronaut)
    inside = delta.patches[0].mask > 0
    patch = delta.patches[0]
    region = (slice(patch.y0, patch.y1), slice(patch.x0, patch.x1))
    error = cloaked[region][inside].astype(float) - astronaut[region][inside]
    psnr = 10 * np.log10(255**2 / max(np.mean(error**2), 1e-12))
    assert psnr > 50


def test_changes_stay_inside_the_chip_footprint(astronaut, aligned):
    delta = paste_back(_constant(0.2), aligned.matrices, astronaut.shape)
    cloaked = delta.apply(astronaut)
    [patch] = delta.patches
    changed = np.any(cloaked != astronaut, axis=2)
    outside_patch = changed.copy()
    outside_patch[patch.y0 : patch.y1, patch.x0 : patch.x1] = False
    assert not outside_patch.any()
    in_patch = changed[patch.y0 : patch.y1, patch.x0 : patch.x1]
    assert not in_patch[patch.mask == 0].any()
    assert not patch.delta[patch.mask == 0].any()
    # The footprint is the chip's, not the photo's: a 150-pixel chip of a 90-pixel face.
    assert patch.delta.shape[0] * patch.delta.shape[1] < 0.3 * astronaut.shape[0] ** 2


def test_constant_perturbation_survives_the_round_trip(astronaut, aligned):
    value = 0.1  # 12.75 grey levels
    delta = paste_back(_constant(value), aligned.matrices, astronaut.shape)
    cloaked = delta.apply(astronaut)
    before = warp_chips(astronaut, aligned.matrices, 150, dlib_pyramid=True)[0]
    after = warp_chips(cloaked, aligned.matrices, 150, dlib_pyramid=True)[0]
    border = int(np.ceil(DEFAULT_FEATHER * 150)) + 2
    interior = (slice(None), slice(border, -border), slice(border, -border))
    unclipped = np.abs(before[interior]) < 0.85
    change = (after - before)[interior][unclipped]
    # Rounding to whole grey levels costs up to half a level; saturated neighbours a few more.
    assert np.abs(change - value).mean() < 0.5 / 127.5
    assert np.percentile(np.abs(change - value), 99) < 1.5 / 127.5


def test_face_at_the_border_is_clipped_to_the_photo():
    photo = np.full((200, 300, 3), 100, np.uint8)
    matrix = _matrix(1.0, -60.0, -40.0)
    delta = paste_back(_constant(-0.1), matrix[None], photo.shape)
    [patch] = delta.patches
    assert (patch.x0, patch.y0) == (0, 0)
    # The chip ends at x = 89.5, y = 109.5: the next column and row are in the patch with mask 0.
    assert (patch.x1, patch.y1) == (91, 111)
    assert not patch.mask[:, 90].any() and patch.mask[55, 89] > 0
    cloaked = delta.apply(photo)
    assert cloaked[50, 50, 0] == 100 - 13 and cloaked[150, 150, 0] == 100


def test_tiny_faces_and_faces_off_the_photo_are_skipped_with_a_reason():
    matrices = np.stack([_matrix(0.3, 10.0, 10.0), _matrix(1.0, 500.0, 500.0), _matrix(1.0, 10.0, 10.0)])
    delta = paste_back(_constant(0.1, 3), matrices, (300, 300, 3))
    assert [skip.index for skip in delta.skipped] == [0, 1]
    assert "too small" in delta.skipped[0].reason and "0.300 photo pixels" in delta.skipped[0].reason
    assert "outside the photo" in delta.skipped[1].reason
    assert len(delta.patches) == 1
    assert not paste_back(
        _constant(0.1), matrices[:1], (300, 300), min_photo_pixels_per_chip_pixel=0.25
    ).skipped


def test_overlapping_faces_keep_the_largest_change_per_element():
    matrices = np.stack([_matrix(1.0, 0.0, 0.0), _matrix(1.0, 60.0, 0.0)])
    perturbations = np.concatenate([_constant(0.1), _constant(-0.2)])
    delta = paste_back(perturbations, matrices, (300, 400, 3))
    [patch] = delta.patches
    assert (patch.x0, patch.x1) == (0, 211)
    # Deep inside both chips both masks are 1: the larger magnitude (-0.2) wins, nothing adds up.
    np.testing.assert_allclose(patch.delta[75, 100], -0.2 * 127.5, rtol=1e-6)
    np.testing.assert_allclose(patch.delta[75, 40], 0.1 * 127.5, rtol=1e-6)
    np.testing.assert_allclose(patch.mask[75, 100], 1.0)


def test_separate_faces_get_separate_patches():
    matrices = np.stack([_matrix(1.0, 0.0, 0.0), _matrix(1.0, 400.0, 300.0)])
    delta = paste_back(_constant(0.1, 2), matrices, (600, 700, 3))
    assert len(delta.patches) == 2


@pytest.mark.parametrize(
    ("perturbations", "matrices", "settings", "message"),
    [
        (np.zeros((1, 150, 150)), np.zeros((1, 2, 3)), {}, r"\[N, 3, S, S\]"),
        (np.zeros((1, 3, 150, 140)), np.zeros((1, 2, 3)), {}, "square"),
        (np.zeros((2, 3, 150, 150)), np.zeros((1, 2, 3)), {}, "one 2x3 matrix"),
        (np.full((1, 3, 150, 150), np.nan), _matrix(1, 0, 0)[None], {}, "NaN"),
        (np.zeros((1, 3, 150, 150)), _matrix(1, 0, 0)[None], {"feather": 0.0}, "feather"),
    ],
)
def test_bad_perturbations_are_refused(perturbations, matrices, settings, message):
    with pytest.raises(FaceError, match=message):
        paste_back(perturbations, matrices, (300, 300), **settings)


def test_delta_only_applies_to_its_own_photo(astronaut, aligned):
    delta = paste_back(np.zeros_like(aligned.chips), aligned.matrices, astronaut.shape)
    with pytest.raises(ImageError, match="512x512"):
        delta.apply(astronaut[:100])
    with pytest.raises(ImageError):
        delta.apply(astronaut.astype(np.float32))
