"""Alignment: the similarity fit, the chip layouts, and resampling against dlib's chip extractor."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.faces.dlib_chips import dlib_pipeline, to_uint8_chip
from ulixes_onnx.errors import FaceError, ModelError
from ulixes_onnx.faces import (
    CHIP_SPECS,
    Face,
    chip_spec,
    extract_chips,
    photo_pixels_per_chip_pixel,
    similarity_transform,
    warp_chips,
)

POINTS = np.array([[10.0, 12.0], [40.0, 11.0], [25.0, 30.0], [14.0, 45.0], [37.0, 44.0]])


def _similarity(angle: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    cos, sin = np.cos(angle), np.sin(angle)
    return np.array([[scale * cos, -scale * sin, shift[0]], [scale * sin, scale * cos, shift[1]]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_similarity_fit_recovers_a_known_transform():
    truth = _similarity(0.3, 1.7, (5.0, -8.0))
    np.testing.assert_allclose(similarity_transform(POINTS, _apply(truth, POINTS)), truth, atol=1e-9)


def test_zero_weight_points_do_not_pull_the_fit():
    truth = _similarity(-0.2, 0.8, (3.0, 4.0))
    target = _apply(truth, POINTS)
    target[4] += [30.0, -20.0]
    weights = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(similarity_transform(POINTS, target, weights), truth, atol=1e-9)
    assert not np.allclose(similarity_transform(POINTS, target), truth, atol=1e-3)


def test_similarity_fit_never_mirrors():
    mirrored = POINTS * [-1.0, 1.0]
    matrix = similarity_transform(POINTS, mirrored)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_similarity_fit_refuses_degenerate_input():
    with pytest.raises(FaceError, match="coincide"):
        similarity_transform(np.ones((5, 2)), POINTS)
    with pytest.raises(ValueError, match="point sets"):
        similarity_transform(POINTS, POINTS[:4])


def test_dlib_layout_puts_the_landmarks_on_its_template(detector, astronaut):
    face = detector.detect(astronaut)[0]
    spec = chip_spec("dlib-150-pad0.25")
    aligned = extract_chips(astronaut, [face], spec)
    assert aligned.chips.shape == (1, 3, 150, 150) and aligned.chips.dtype == np.float32
    assert aligned.chips.min() >= -1.0 and aligned.chips.max() <= 1.0
    in_chip = _apply(aligned.matrices[0], face.landmarks - 0.5) + 0.5
    eyes_error = np.abs(in_chip[:2] - spec.template[:2] * 150)
    assert eyes_error.max() < 4.0


def test_layouts_of_different_sizes_share_the_geometry(detector, astronaut):
    face = detector.detect(astronaut)[0]
    small = chip_spec("dlib-150-pad0.25").photo_to_chip(face)
    large = chip_spec("dlib-224-pad0.25").photo_to_chip(face)
    # Same placement in edge coordinates (pixel centres + 0.5), scaled by 224 / 150.
    photo_point = np.array([[200.0, 100.0]])
    np.testing.assert_allclose(
        (_apply(small, photo_point) + 0.5) * 224 / 150, _apply(large, photo_point) + 0.5
    )


def test_facenet_layout_crops_the_box_with_a_32_pixel_margin():
    face = Face(box=(100.0, 50.0, 228.0, 210.0), score=1.0, landmarks=np.zeros((5, 2)))
    matrix = chip_spec("facenet-160-margin").photo_to_chip(face)
    box_edges = np.array([[100.0, 50.0], [228.0, 210.0]])
    np.testing.assert_allclose(_apply(matrix, box_edges - 0.5) + 0.5, [[16, 16], [144, 144]])


def test_unknown_layout_names_the_known_ones():
    with pytest.raises(ModelError, match=r"dlib-150-pad0\.25"):
        chip_spec("arcface-112")
    assert all(spec.size in (150, 160, 224) for spec in CHIP_SPECS.values())


def test_no_faces_give_no_chips(astronaut):
    aligned = extract_chips(astronaut, [], chip_spec("facenet-160-margin"))
    assert aligned.chips.shape == (0, 3, 160, 160) and aligned.matrices.shape == (0, 2, 3)


def test_unscaled_warp_copies_pixels_and_blackens_the_outside(astronaut):
    shift = np.array([[1.0, 0.0, -100.0], [0.0, 1.0, -40.0]])
    chip = to_uint8_chip(warp_chips(astronaut, shift[None], 150)[0])
    np.testing.assert_array_equal(chip, astronaut[40:190, 100:250])
    outside = np.array([[1.0, 0.0, 30.0], [0.0, 1.0, 0.0]])
    chip = to_uint8_chip(warp_chips(astronaut, outside[None], 64)[0])
    assert chip[:, :30].max() == 0
    np.testing.assert_array_equal(chip[:, 30:], astronaut[:64, :34])


def test_strong_shrinking_low_passes_instead_of_aliasing():
    # A one-pixel checkerboard shrunk 6x must come out flat grey, not a moire of black and white.
    checkerboard = ((np.indices((900, 900)).sum(axis=0) % 2) * 255).astype(np.uint8)
    photo = np.repeat(checkerboard[:, :, None], 3, axis=2)
    shrink = np.array([[1 / 6, 0.0, 0.0], [0.0, 1 / 6, 0.0]])
    assert photo_pixels_per_chip_pixel(shrink) == pytest.approx(6.0)
    chip = to_uint8_chip(warp_chips(photo, shrink[None], 140)[0])
    assert np.abs(chip[5:-5, 5:-5].astype(int) - 127).max() <= 3


@pytest.mark.parametrize("enlarge", [1, 4])
def test_resampling_matches_dlibs_chip_extractor(astronaut, enlarge):
    # Given dlib's own placement, our warp reproduces dlib.get_face_chip: directly for the original,
    # and through the pyramid (3 halvings) for a 4x enlarged photo.
    photo = cv2.resize(astronaut, None, fx=enlarge, fy=enlarge, interpolation=cv2.INTER_CUBIC)
    [(_, matrix, dlib_chip)] = dlib_pipeline(photo)
    ours = to_uint8_chip(warp_chips(photo, matrix[None], 150, dlib_pyramid=True)[0])
    difference = np.abs(ours.astype(int) - dlib_chip.astype(int))
    assert difference.mean() < 1.0
    if enlarge > 1:
        plain = to_uint8_chip(warp_chips(photo, matrix[None], 150)[0])
        assert np.abs(plain.astype(int) - dlib_chip.astype(int)).mean() > difference.mean()
