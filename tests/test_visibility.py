"""SSIMULACRA2 agrees with the reference package on real faces, and the face region's visibility."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from ssimulacra2 import compute_ssimulacra2

from ulixes_onnx.cloaking.dssim import image_dssim
from ulixes_onnx.cloaking.visibility import (
    _WEIGHTS,
    MIN_SIDE,
    Ssimulacra2Reference,
    Visibility,
    _feature_weights,
    colour_shift,
    face_region,
    face_visibility,
    loss_shares,
    ssimulacra2,
)
from ulixes_onnx.faces import detector_from_store
from ulixes_onnx.photos.decoding import read_photo
from ulixes_onnx.store import ModelStore

# The reference computes in float64, this module in float32.
AGREEMENT = 0.5


def _reference(original: np.ndarray, changed: np.ndarray, folder: Path) -> float:
    """The PyPI package's score (it reads files; PNG keeps the pixels exactly)."""
    Image.fromarray(original).save(folder / "original.png")
    Image.fromarray(changed).save(folder / "changed.png")
    return compute_ssimulacra2(folder / "original.png", folder / "changed.png")


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.array(Image.open(buffer).convert("RGB"))


def _clipped(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _distortions(face: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    height, width = face.shape[:2]
    rows, cols = np.mgrid[0:height, 0:width]
    # A smooth pattern a few periods across the face, like a low-frequency cloak.
    wave = 6 * np.sin(2 * np.pi * rows / (height / 3)) * np.cos(2 * np.pi * cols / (width / 2.5))
    tiny = face.copy()
    tiny[height // 2, width // 2] ^= 1
    return {
        "jpeg q90": _jpeg(face, 90),
        "jpeg q50": _jpeg(face, 50),
        "gaussian noise": _clipped(face + rng.normal(0, 5, face.shape)),
        "blur": cv2.GaussianBlur(face, (0, 0), 1.5),
        "low-frequency pattern": _clipped(face + wave[:, :, None]),
        "tiny change": tiny,
    }


@pytest.fixture(scope="module")
def face_crops(astronaut: np.ndarray, faces_dev: Path, store: ModelStore) -> dict[str, np.ndarray]:
    """Face regions of the astronaut and of two development photos, found by the detector."""
    detector = detector_from_store(store)
    crops = {}
    for name, photo in [
        ("astronaut", astronaut),
        ("Angelina/img1", read_photo(faces_dev / "Angelina" / "img1.jpg").rgb8),
        ("Biden/biden", read_photo(faces_dev / "Biden" / "biden.jpg").rgb8),
    ]:
        face = max(detector.detect(photo), key=lambda found: found.width)
        rows, cols = face_region(face.box, photo.shape)
        crops[name] = np.ascontiguousarray(photo[rows, cols])
    return crops


@pytest.mark.parametrize("face_name", ["astronaut", "Angelina/img1", "Biden/biden"])
def test_agrees_with_the_reference_package_under_distortions(
    face_crops: dict[str, np.ndarray], face_name: str, tmp_path: Path
) -> None:
    face = face_crops[face_name]
    scores = {}
    for name, changed in _distortions(face).items():
        expected = _reference(face, changed, tmp_path)
        scores[name] = ssimulacra2(face, changed)
        assert scores[name] == pytest.approx(expected, abs=AGREEMENT), name
    # The tiny change is nearly invisible, and JPEG at q90 better than at q50.
    assert scores["tiny change"] > 95
    assert scores["jpeg q90"] > scores["jpeg q50"]


def test_identical_images_score_100(face_crops: dict[str, np.ndarray]) -> None:
    for face in face_crops.values():
        assert ssimulacra2(face, face.copy()) == pytest.approx(100.0, abs=1e-9)


@pytest.mark.parametrize("shape", [(40, 60), (15, 100), (37, 53), (255, 129), (8, 8)])
def test_regions_too_small_for_six_scales_agree_with_the_reference(
    face_crops: dict[str, np.ndarray], shape: tuple[int, int], tmp_path: Path
) -> None:
    face = cv2.resize(face_crops["astronaut"], shape[::-1], interpolation=cv2.INTER_AREA)
    changed = _clipped(face + np.random.default_rng(1).normal(0, 6, face.shape))
    assert ssimulacra2(face, changed) == pytest.approx(_reference(face, changed, tmp_path), abs=AGREEMENT)


def test_below_the_smallest_scale_only_says_whether_anything_changed() -> None:
    small = np.full((MIN_SIDE - 1, 20, 3), 128, np.uint8)
    assert ssimulacra2(small, small.copy()) == 100.0
    changed = small.copy()
    changed[0, 0, 0] = 129
    assert ssimulacra2(small, changed) == 0.0


def test_gray_images_score_as_their_rgb_copies(face_crops: dict[str, np.ndarray], tmp_path: Path) -> None:
    gray = cv2.cvtColor(face_crops["Biden/biden"], cv2.COLOR_RGB2GRAY)
    changed = _jpeg(gray, 60)[:, :, 0]
    as_rgb = [np.repeat(image[:, :, None], 3, axis=2) for image in (gray, changed)]
    score = ssimulacra2(gray, changed)
    assert score == pytest.approx(ssimulacra2(*as_rgb), abs=1e-9)
    assert score == pytest.approx(_reference(*as_rgb, tmp_path), abs=AGREEMENT)


def test_non_contiguous_and_float_inputs_score_as_contiguous_uint8(face_crops: dict[str, np.ndarray]) -> None:
    face = face_crops["Angelina/img1"]
    changed = _jpeg(face, 70)
    expected = ssimulacra2(face, changed)
    strided = np.zeros((face.shape[0], face.shape[1] * 2, 3), np.uint8)
    strided[:, ::2] = changed
    assert not strided[:, ::2].flags.c_contiguous
    assert ssimulacra2(face, strided[:, ::2]) == pytest.approx(expected, abs=1e-9)
    transposed = np.ascontiguousarray(changed.transpose(1, 0, 2)).transpose(1, 0, 2)
    assert ssimulacra2(face, transposed) == pytest.approx(expected, abs=1e-9)
    as_float = ssimulacra2(face.astype(np.float32), changed.astype(np.float64))
    assert as_float == pytest.approx(expected, abs=1e-3)
    assert ssimulacra2(face.astype(np.int64), changed.astype(np.int16)) == pytest.approx(expected, abs=1e-3)


def test_float_values_between_levels_count(face_crops: dict[str, np.ndarray]) -> None:
    face = face_crops["astronaut"].astype(np.float32)
    nudged = face + np.float32(0.4) * np.sign(np.random.default_rng(2).normal(size=face.shape))
    assert 90 < ssimulacra2(face, nudged) < 100


def test_more_noise_is_more_visible(face_crops: dict[str, np.ndarray]) -> None:
    face = face_crops["astronaut"]
    noise = np.random.default_rng(4).normal(0, 1, face.shape)
    scores = [ssimulacra2(face, _clipped(face + sigma * noise)) for sigma in (1, 3, 9, 27)]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(
    ("original_shape", "changed_shape"), [((30, 40, 3), (30, 41, 3)), ((30, 40, 3), (30, 40))]
)
def test_shape_mismatch_is_a_clear_error(original_shape: tuple, changed_shape: tuple) -> None:
    with pytest.raises(ValueError, match="shape"):
        ssimulacra2(np.zeros(original_shape, np.uint8), np.zeros(changed_shape, np.uint8))


@pytest.mark.parametrize(
    ("image", "message"),
    [(np.zeros((20, 20, 4), np.uint8), "RGB image"), (np.zeros((20, 20, 3), bool), "integers or floats")],
)
def test_bad_images_are_clear_errors(image: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ssimulacra2(image, image)


def test_reference_scores_many_candidates_as_one_by_one(face_crops: dict[str, np.ndarray]) -> None:
    face = face_crops["Biden/biden"]
    candidates = [_jpeg(face, quality) for quality in (30, 60, 90)]
    reference = Ssimulacra2Reference(face)
    together = reference.scores(np.stack(candidates))
    np.testing.assert_allclose(together, [ssimulacra2(face, image) for image in candidates], atol=1e-4)
    assert reference.score(candidates[0]) == pytest.approx(together[0], abs=1e-4)
    assert reference.scores([]).shape == (0,)
    with pytest.raises(ValueError, match="shape"):
        reference.score(face[1:])


@pytest.mark.parametrize("shrink", [1, 2])
def test_a_shrunk_copy_scored_from_its_scale_scores_as_the_full_size_image(
    face_crops: dict[str, np.ndarray], shrink: int
) -> None:
    # A change as smooth as a cloak made on a canvas 2^shrink times smaller than the photo.
    face = face_crops["Biden/biden"].astype(np.float32)
    height, width = face.shape[:2]
    coarse = np.random.default_rng(3).normal(0, 2, (height >> (shrink + 1), width >> (shrink + 1), 3))
    changed = np.clip(face + cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC), 0, 255)
    full_size = ssimulacra2(face, changed)
    size = (width >> shrink, height >> shrink)
    small, small_changed = (
        cv2.resize(image, size, interpolation=cv2.INTER_AREA) for image in (face, changed)
    )
    from_its_scale = Ssimulacra2Reference(small, first_scale=shrink).score(small_changed)
    as_if_full_size = Ssimulacra2Reference(small).score(small_changed)
    assert from_its_scale == pytest.approx(full_size, abs=2.0)
    assert abs(as_if_full_size - full_size) > 2 * abs(from_its_scale - full_size)


@pytest.mark.parametrize("first_scale", [-1, 6, float("nan")])
def test_a_first_scale_outside_the_scales_is_a_clear_error(first_scale: float) -> None:
    with pytest.raises(ValueError, match="first scale"):
        Ssimulacra2Reference(np.zeros((64, 64, 3)), first_scale=first_scale)
    assert len(Ssimulacra2Reference(np.zeros((64, 64, 3)), first_scale=5.999)._scales) == 1


def test_scales_weigh_from_the_first_scale_on_with_fractions_blended() -> None:
    weights = _WEIGHTS.reshape(3, 6, 2, 3)
    features = np.ones((1, 3, 5, 2, 3))
    np.testing.assert_array_equal(_feature_weights(features, 1), weights[:, 1:])
    # A quarter of the way to the next scale: the last scale has no next one and weighs less.
    next_scale = np.concatenate([weights[:, 2:], np.zeros((3, 1, 2, 3))], axis=1)
    np.testing.assert_allclose(_feature_weights(features, 1.25), 0.75 * weights[:, 1:] + 0.25 * next_scale)
    # Fewer scales than six take the first weights in order, the unweighed ones counted from scale 0.
    three = np.ones((1, 3, 3, 2, 3))
    np.testing.assert_array_equal(_feature_weights(three), _WEIGHTS[:54].reshape(3, 3, 2, 3))
    np.testing.assert_array_equal(_feature_weights(three, 2), _WEIGHTS[:90].reshape(3, 5, 2, 3)[:, 2:])


def test_colour_shift_sees_a_coherent_shift_and_not_noise_of_its_size(astronaut: np.ndarray) -> None:
    face = np.ascontiguousarray(astronaut[0:200, 150:350])
    assert colour_shift(face, face, face_width=450) == 0.0
    # A red tint of 6 levels over a 20-pixel patch (an iris of a 450-pixel face), against noise of the
    # same size everywhere.
    tinted = face.astype(np.float32)
    tinted[90:110, 90:110] += np.array([6.0, -3.0, -3.0], np.float32)
    noisy = face + np.random.default_rng(4).choice([-6.0, 6.0], face.shape) * np.array([1.0, -0.5, -0.5])
    tint, noise = (colour_shift(face, np.clip(image, 0, 255), face_width=450) for image in (tinted, noisy))
    assert tint > 2.3  # CIELAB's just noticeable difference
    assert noise < tint / 2
    # Lightness alone is no colour shift.
    brighter = np.clip(face.astype(np.float32) + 6, 0, 255)
    assert colour_shift(face, brighter, face_width=450) < 0.5 * tint
    # A gray pair has no colour; a tiny face is still judged on a 3-pixel window.
    gray = face.mean(axis=2)
    assert colour_shift(gray, np.clip(gray + 6, 0, 255), face_width=450) == 0.0
    assert colour_shift(face, np.clip(tinted, 0, 255), face_width=0) >= tint
    with pytest.raises(ValueError, match="shape"):
        colour_shift(face, face[1:], face_width=450)


def test_face_region_grows_the_box_by_a_quarter_and_stays_in_the_photo() -> None:
    assert face_region((100, 200, 180, 300), (1000, 800, 3)) == (slice(175, 325), slice(80, 200))
    assert face_region((10, 5, 90, 85), (100, 95)) == (slice(0, 100), slice(0, 95))


def test_face_visibility_measures_the_face_region(astronaut: np.ndarray) -> None:
    box = (170.0, 40.0, 290.0, 180.0)
    changed = astronaut.copy()
    rows, cols = face_region(box, astronaut.shape)
    changed[rows, cols] = _jpeg(np.ascontiguousarray(astronaut[rows, cols]), 40)
    # Changes outside the region do not count.
    changed[-50:, -50:] = 0
    visibility = face_visibility(astronaut, changed, box)
    assert visibility == Visibility(
        ssimulacra2=pytest.approx(ssimulacra2(astronaut[rows, cols], changed[rows, cols])),
        dssim=pytest.approx(image_dssim(astronaut[rows, cols], changed[rows, cols])),
    )
    assert visibility.ssimulacra2 < 90 and visibility.dssim > 0
    assert face_visibility(astronaut, astronaut.copy(), box) == Visibility(100.0, 0.0)
    with pytest.raises(ValueError, match="shape"):
        face_visibility(astronaut, astronaut[1:], box)


@pytest.mark.parametrize(
    "rows, cols",
    [
        (slice(40, 90), slice(30, 80)),  # inside
        (slice(0, 12), slice(0, 9)),  # a corner
        (slice(150, 160), slice(100, 130)),  # the bottom and right edges
        (slice(70, 71), slice(50, 51)),  # one pixel
        (slice(0, 160), slice(0, 130)),  # everything
    ],
)
def test_measuring_only_around_the_change_scores_as_the_whole_image(
    face_crops: dict[str, np.ndarray], rows: slice, cols: slice
) -> None:
    face = np.ascontiguousarray(face_crops["Biden/biden"][:160, :130])
    noise = np.random.default_rng(4).normal(0, 6, face.shape)
    changed = face.copy()
    changed[rows, cols] = _clipped(face + noise)[rows, cols]
    # The whole images' maps are summed in another order: equal but for float32 rounding in the maps.
    assert ssimulacra2(face, changed) == pytest.approx(Ssimulacra2Reference(face).score(changed), abs=1e-3)
    assert ssimulacra2(face, changed) < 100


def test_loss_shares_sum_to_one_and_place_fine_and_coarse_changes(astronaut: np.ndarray) -> None:
    face = astronaut[:256, 128:384]
    rng = np.random.default_rng(0)
    # Pixel noise shows at the finest scales; a smooth blob of the same size shows at the coarse ones.
    noise = _clipped(face + rng.normal(0, 4, face.shape))
    blob = np.zeros(face.shape[:2], np.float32)
    blob[128, 128] = 1
    blob = cv2.GaussianBlur(blob, (0, 0), 24)
    smooth = _clipped(face + 12 * (blob / blob.max())[:, :, None])
    fine_shares, coarse_shares = loss_shares(face, noise), loss_shares(face, smooth)
    for shares in (fine_shares, coarse_shares):
        assert shares.shape == (3, 6, 2, 3)
        assert shares.min() >= 0
        assert shares.sum() == pytest.approx(1.0)
    by_scale = [shares.sum(axis=(0, 2, 3)) for shares in (fine_shares, coarse_shares)]
    # (measured: 0.54 against 0.05 at 1x and 2x, 0.15 against 0.71 from 8x on)
    assert by_scale[0][:2].sum() > 4 * by_scale[1][:2].sum()
    assert by_scale[1][3:].sum() > 2 * by_scale[0][3:].sum()
    # A lightness change: most of the loss is in SSIMULACRA2's luma channel Y.
    assert coarse_shares[1].sum() > 0.5


def test_loss_shares_of_an_unchanged_or_tiny_image_are_zero(face_crops: dict[str, np.ndarray]) -> None:
    original = face_crops["astronaut"]
    assert not loss_shares(original, original.copy()).any()
    tiny = np.zeros((MIN_SIDE - 1, MIN_SIDE - 1, 3), np.uint8)
    assert not loss_shares(tiny, tiny + 1).any()
    with pytest.raises(ValueError, match="differ in shape"):
        loss_shares(original, original[1:])
