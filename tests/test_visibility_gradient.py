"""The gradient of SSIMULACRA2: the score as `score` gives it, and the exact derivative of the forward,
checked against central finite differences."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ulixes_onnx.cloaking.visibility import (
    MIN_SIDE,
    Ssimulacra2Reference,
    _blur,
    _blur_adjoint,
    _downsample,
    _downsample_adjoint,
)


@pytest.fixture(scope="module")
def face(astronaut: np.ndarray) -> np.ndarray:
    """The astronaut's face and hair, 200x200 (five scales), as floats."""
    return astronaut[0:200, 150:350].astype(np.float64)


def _noisy(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    # Kept in 0..255 as the loop's pixels are (far below black the cube root bends sharply, and a
    # finite difference would measure that curvature, not the derivative).
    return np.clip(image + np.random.default_rng(seed).normal(0, sigma, image.shape), 0, 255)


def _smooth_change(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    rows, cols = np.mgrid[0:height, 0:width]
    wave = 5 * np.sin(2 * np.pi * rows / (height / 3)) * np.cos(2 * np.pi * cols / (width / 2.5))
    return np.clip(image + wave[:, :, None] * np.array([1.0, 0.6, -0.8]), 0, 255)


def _directional_errors(
    reference: Ssimulacra2Reference, changed: np.ndarray, step: float, along_gradient: float, seed: int
) -> list[float]:
    """Relative differences between <gradient, v> and the central difference along v, for random
    directions v (with a share of the gradient's own direction, so that <gradient, v> stands above
    rounding)."""
    _, gradient = reference.score_and_gradient(changed)
    gradient = gradient.astype(np.float64)
    rng = np.random.default_rng(seed)
    errors = []
    for _ in range(3):
        direction = rng.normal(size=changed.shape)
        direction += along_gradient * np.linalg.norm(direction) * gradient / np.linalg.norm(gradient)
        expected = float(np.sum(gradient * direction))
        ahead, behind = (
            reference.score(changed + step * direction),
            reference.score(changed - step * direction),
        )
        errors.append(abs((ahead - behind) / (2 * step) - expected) / abs(expected))
    return errors


@pytest.mark.parametrize(
    ("rows", "cols", "scales"),
    [
        (slice(0, 264), slice(120, 384), 6),  # the face and around it: all six scales' weights
        (slice(0, 200), slice(150, 350), 5),  # the face
        (slice(50, 95), slice(210, 248), 3),  # 45x38: odd sides at several scales
        (slice(60, 80), slice(210, 240), 2),  # 20x30: two scales
    ],
)
@pytest.mark.parametrize("changes", ["noise", "smooth", "dark noise", "strong"])
def test_gradient_matches_finite_differences_in_float64(
    astronaut: np.ndarray, rows: slice, cols: slice, scales: int, changes: str
) -> None:
    original = astronaut[rows, cols].astype(np.float64)
    if changes == "dark noise":
        # On the sRGB curve's linear piece (below 10.3), and off 0 so that clipping leaves no pixel
        # exactly unchanged (which would put the test on the kinks of the clamps).
        original = 1 + original * 0.035
        changed = _noisy(original, 0.2, seed=1)
    elif changes == "strong":
        # Blurred, darker and tinted: a low score, where the cubic and the luminance term weigh.
        changed = cv2.GaussianBlur(original, (0, 0), 2.0) * 0.7 + np.array([30.0, 10.0, 0.0])
    else:
        changed = _noisy(original, 4, seed=1) if changes == "noise" else _smooth_change(original)
    reference = Ssimulacra2Reference(original, precision=np.float64)
    assert len(reference._scales) == scales
    # In float64 the differences at this step show no rounding (1e-9) nor curvature, and seldom cross a
    # kink of max(., 0) or |.| (seen: 1.2e-4 at most; at a step of 1e-3, 5e-2 from kinks).
    errors = _directional_errors(reference, changed, step=1e-5, along_gradient=0.0, seed=2)
    assert max(errors) < 1e-3, errors


@pytest.mark.parametrize(("first_scale", "scales"), [(1, 5), (1.6, 5), (2, 4)])
def test_gradient_of_a_shrunk_image_matches_finite_differences(
    face: np.ndarray, first_scale: float, scales: int
) -> None:
    reference = Ssimulacra2Reference(face, precision=np.float64, first_scale=first_scale)
    # 200 pixels have five scales of their own; standing for 800 pixels, only the four that weigh.
    assert len(reference._scales) == scales
    errors = _directional_errors(reference, _noisy(face, 4, seed=1), step=1e-5, along_gradient=0.0, seed=2)
    assert max(errors) < 1e-3, errors


def test_gradient_matches_finite_differences_in_float32(face: np.ndarray) -> None:
    changed = _noisy(face, 4, seed=3)
    reference = Ssimulacra2Reference(face)
    # A step large enough to stand above float32 rounding, small enough for the curvature (seen: 0.3 %).
    errors = _directional_errors(reference, changed, step=0.1, along_gradient=0.5, seed=4)
    assert max(errors) < 0.02, errors


def test_float32_gradient_is_close_to_the_float64_one(face: np.ndarray) -> None:
    changed = _smooth_change(face)
    single = Ssimulacra2Reference(face).score_and_gradient(changed)[1]
    double = Ssimulacra2Reference(face, precision=np.float64).score_and_gradient(changed)[1]
    assert single.dtype == np.float32 and single.shape == face.shape
    assert np.linalg.norm(single - double) < 0.01 * np.linalg.norm(double)


@pytest.mark.parametrize("changes", ["noise", "smooth"])
def test_score_is_the_score_of_score(face: np.ndarray, changes: str) -> None:
    changed = _noisy(face, 4, seed=5) if changes == "noise" else _smooth_change(face)
    reference = Ssimulacra2Reference(face.astype(np.uint8))
    score, gradient = reference.score_and_gradient(changed)
    assert score == pytest.approx(reference.score(changed), abs=1e-3)
    assert score < 95 and np.isfinite(gradient).all()
    # A small step along the gradient raises the score.
    step = 0.3 / np.abs(gradient).max()
    assert reference.score(changed + step * gradient) > score


def test_integer_copies_have_the_gradient_of_their_float_values(face: np.ndarray) -> None:
    changed = np.rint(_noisy(face, 4, seed=6))
    reference = Ssimulacra2Reference(face.astype(np.uint8))
    as_uint8 = reference.score_and_gradient(changed.astype(np.uint8))
    as_float = reference.score_and_gradient(changed.astype(np.float32))
    assert as_uint8[0] == pytest.approx(as_float[0], abs=1e-6)
    np.testing.assert_allclose(as_uint8[1], as_float[1], rtol=1e-5, atol=1e-9)


def test_identical_copy_scores_100_with_no_slope(face: np.ndarray) -> None:
    reference = Ssimulacra2Reference(face)
    score, gradient = reference.score_and_gradient(face.copy())
    assert score == pytest.approx(100.0, abs=1e-9)
    assert gradient.shape == face.shape and not gradient.any()


def test_gray_gradient_sums_the_channels_of_its_rgb_copy(face: np.ndarray) -> None:
    gray = face.mean(axis=2)
    changed = _noisy(gray, 4, seed=7)
    score, gradient = Ssimulacra2Reference(gray).score_and_gradient(changed)
    as_rgb = [np.repeat(image[:, :, None], 3, axis=2) for image in (gray, changed)]
    rgb_score, rgb_gradient = Ssimulacra2Reference(as_rgb[0]).score_and_gradient(as_rgb[1])
    assert gradient.shape == gray.shape
    assert score == pytest.approx(rgb_score, abs=1e-6)
    np.testing.assert_allclose(gradient, rgb_gradient.sum(axis=2), rtol=1e-4, atol=1e-9)


def test_regions_too_small_for_any_scale_have_no_slope() -> None:
    small = np.full((MIN_SIDE - 1, 20, 3), 128.0)
    reference = Ssimulacra2Reference(small)
    for changed, expected in [(small.copy(), 100.0), (small + 1, 0.0)]:
        score, gradient = reference.score_and_gradient(changed)
        assert score == expected and gradient.shape == small.shape and not gradient.any()


@pytest.mark.parametrize("shape", [(8, 9), (13, 8), (40, 33), (64, 64)])
def test_blur_adjoint_is_the_transpose_of_the_blur(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(8)
    stack, weights = rng.normal(size=(2, 2, *shape, 3))
    assert np.sum(_blur(stack) * weights) == pytest.approx(np.sum(stack * _blur_adjoint(weights)), rel=1e-12)


@pytest.mark.parametrize("shape", [(8, 8), (9, 8), (8, 9), (45, 37)])
def test_downsample_adjoint_is_the_transpose_of_the_downsampling(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(9)
    image = rng.normal(size=(1, *shape, 3))
    weights = rng.normal(size=(1, (shape[0] + 1) // 2, (shape[1] + 1) // 2, 3))
    adjoint = _downsample_adjoint(weights, shape)
    assert adjoint.shape == image.shape
    assert np.sum(_downsample(image) * weights) == pytest.approx(np.sum(image * adjoint), rel=1e-12)


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        (np.zeros((30, 41, 3)), "shape"),
        (np.zeros((30, 40)), "shape"),
        (np.zeros((30, 40, 4)), "RGB image"),
        (np.zeros((30, 40, 3), bool), "integers or floats"),
    ],
)
def test_bad_changed_images_are_clear_errors(changed: np.ndarray, message: str) -> None:
    reference = Ssimulacra2Reference(np.zeros((30, 40, 3)))
    with pytest.raises(ValueError, match=message):
        reference.score_and_gradient(changed)
