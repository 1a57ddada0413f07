"""DSSIM with OpenCV's box filter equals scikit-image's SSIM with its defaults."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from ulixes_onnx.cloaking.dssim import (
    WINDOW,
    DssimReference,
    PlaneReference,
    batch_dssim,
    chip_dssim,
    image_dssim,
    plane_ssim,
)


def _skimage_dssim(a: np.ndarray, b: np.ndarray, channel_axis: int, data_range: float) -> float:
    return (1 - structural_similarity(a, b, channel_axis=channel_axis, data_range=data_range)) / 2


@pytest.mark.parametrize("shape", [(3, 3, 32, 32), (2, 3, 150, 150), (1, 1, 7, 9)])
def test_batch_dssim_equals_scikit_image_chip_by_chip(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(5)
    chips = rng.uniform(-1, 1, shape).astype(np.float32)
    noisy = np.clip(chips + rng.normal(0, 0.05, chips.shape), -1, 1).astype(np.float32)
    expected = [_skimage_dssim(a, b, 0, 2.0) for a, b in zip(noisy, chips, strict=True)]
    np.testing.assert_allclose(batch_dssim(noisy, chips), expected, rtol=1e-5, atol=1e-9)
    assert chip_dssim(noisy[0], chips[0]) == pytest.approx(expected[0], rel=1e-5)


def test_identical_chips_have_zero_dssim() -> None:
    chips = np.random.default_rng(1).uniform(-1, 1, (2, 3, 20, 20)).astype(np.float32)
    np.testing.assert_allclose(batch_dssim(chips, chips.copy()), 0.0, atol=1e-12)


def test_image_dssim_equals_scikit_image_on_colour_and_gray_images() -> None:
    rng = np.random.default_rng(2)
    colour = rng.integers(0, 256, (40, 33, 3)).astype(np.float32)
    changed = np.clip(colour + rng.normal(0, 4, colour.shape), 0, 255).astype(np.float32)
    assert image_dssim(colour, changed) == pytest.approx(_skimage_dssim(colour, changed, 2, 255.0), rel=1e-5)
    gray, gray_changed = colour[:, :, 0], changed[:, :, 0]
    expected = (1 - structural_similarity(gray, gray_changed, data_range=255.0)) / 2
    assert image_dssim(gray, gray_changed) == pytest.approx(expected, rel=1e-5)


def test_image_dssim_below_the_window_only_says_whether_anything_changed() -> None:
    small = np.zeros((WINDOW - 1, 20, 3))
    assert image_dssim(small, small) == 0.0
    assert image_dssim(small, small + 1) == 1.0


def test_plane_ssim_refuses_mismatched_or_tiny_planes() -> None:
    with pytest.raises(ValueError, match="equal"):
        plane_ssim(np.zeros((1, 8, 8)), np.zeros((1, 8, 9)), data_range=1.0)
    with pytest.raises(ValueError, match="H, W >= 7"):
        plane_ssim(np.zeros((1, 6, 8)), np.zeros((1, 6, 8)), data_range=1.0)


def test_tall_planes_computed_in_strips_equal_scikit_image() -> None:
    rng = np.random.default_rng(6)
    tall = rng.uniform(0, 255, (700, 40, 3)).astype(np.float32)
    changed = np.clip(tall + rng.normal(0, 6, tall.shape), 0, 255).astype(np.float32)
    assert image_dssim(tall, changed) == pytest.approx(_skimage_dssim(tall, changed, 2, 255.0), rel=1e-5)


def _photo_like(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, list[np.ndarray]]:
    original = rng.integers(0, 256, shape).astype(np.float32)
    changed = [np.clip(original + rng.normal(0, sigma, shape), 0, 255) for sigma in (0.5, 4, 20)]
    return original, changed


@pytest.mark.parametrize("shape", [(40, 33, 3), (600, 37, 3), (30, 20), (9, 7, 3)])
def test_reference_measures_many_copies_as_image_dssim_does(shape: tuple[int, ...]) -> None:
    # 600 rows: several strips, the last a short one.
    original, copies = _photo_like(np.random.default_rng(7), shape)
    reference = DssimReference(original)
    for changed in [*copies, original.copy()]:
        assert reference.dssim(changed) == pytest.approx(image_dssim(original, changed), rel=1e-6, abs=1e-12)
    assert reference.dssim(original) == pytest.approx(0.0, abs=1e-12)


def test_reference_takes_other_dtypes_as_image_dssim_does() -> None:
    original, copies = _photo_like(np.random.default_rng(8), (50, 60, 3))
    original8, changed64 = original.astype(np.uint8), copies[1].astype(np.float64)
    assert DssimReference(original8).dssim(changed64) == pytest.approx(
        image_dssim(original8, changed64), rel=1e-6
    )


def test_reference_below_the_window_only_says_whether_anything_changed() -> None:
    small = np.zeros((WINDOW - 1, 20, 3), np.float32)
    reference = DssimReference(small)
    assert reference.dssim(small.copy()) == 0.0
    assert reference.dssim(small + 1) == 1.0


def test_reference_refuses_a_copy_of_another_shape() -> None:
    with pytest.raises(ValueError, match="shape"):
        DssimReference(np.zeros((20, 20, 3))).dssim(np.zeros((20, 21, 3)))
    with pytest.raises(ValueError, match="shape"):
        PlaneReference(np.zeros((3, 20, 20)), 2.0).ssim(np.zeros((3, 21, 20)))


def test_plane_reference_equals_plane_ssim_and_refuses_tiny_planes() -> None:
    rng = np.random.default_rng(9)
    planes = rng.uniform(-1, 1, (6, 300, 40)).astype(np.float32)
    changed = np.clip(planes + rng.normal(0, 0.05, planes.shape), -1, 1).astype(np.float32)
    reference = PlaneReference(planes, data_range=2.0)
    np.testing.assert_allclose(reference.ssim(changed), plane_ssim(planes, changed, 2.0), rtol=1e-6)
    with pytest.raises(ValueError, match="H, W >= 7"):
        PlaneReference(np.zeros((1, 6, 8)), data_range=1.0)


@pytest.mark.parametrize(
    "rows, cols",
    [(slice(20, 30), slice(15, 35)), (slice(0, 2), slice(0, 3)), (slice(55, 60), slice(40, 50)), (29, 24)],
)
def test_a_change_to_part_of_an_image_measures_as_scikit_image_does(rows: slice, cols: slice) -> None:
    # Only the windows around the change are measured; the others have SSIM 1. Small DSSIMs are
    # differences from 1 in float32 sums: compared with scikit-image in float64, absolutely.
    rng = np.random.default_rng(10)
    image = rng.integers(0, 256, (60, 50, 3)).astype(np.float32)
    changed = image.copy()
    changed[rows, cols] = np.clip(image[rows, cols] + rng.normal(0, 9, image[rows, cols].shape), 0, 255)
    expected = _skimage_dssim(image.astype(np.float64), changed.astype(np.float64), 2, 255.0)
    assert image_dssim(image, changed) == pytest.approx(expected, abs=1e-8)
    # DssimReference measures every window.
    assert image_dssim(image, changed) == pytest.approx(DssimReference(image).dssim(changed), rel=1e-9)
    assert image_dssim(image, changed) > 0
    assert image_dssim(image, image.copy()) == 0.0


def test_reference_on_the_canvas_scale_equals_the_dssim_of_the_8_bit_images() -> None:
    # The loop's canvases span 0..2 once shifted: DSSIM there must use that range's constants.
    rng = np.random.default_rng(7)
    original = rng.uniform(0, 255, (40, 50, 3)).astype(np.float32)
    changed = np.clip(original + rng.normal(0, 6, original.shape), 0, 255).astype(np.float32)
    on_canvas = DssimReference(original / 127.5, data_range=2.0).dssim(changed / 127.5)
    assert on_canvas == pytest.approx(image_dssim(original, changed), rel=1e-4)
    assert on_canvas > 1e-3
