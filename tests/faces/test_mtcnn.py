"""MTCNN detection: the astronaut, grayscale, border and size rules, NMS, and bad input."""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from ulixes_onnx.errors import FaceError, ImageError, ModelError
from ulixes_onnx.faces import MTCNN
from ulixes_onnx.faces.mtcnn import MAX_PYRAMID_PIXELS, non_maximum_suppression


def _iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_astronaut_has_one_face_with_landmarks_in_place(detector, astronaut):
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    face = faces[0]
    x0, y0, x1, y1 = face.box
    assert face.score > 0.99
    # Her face is around x 180..265, y 60..170 in the 512x512 image.
    assert _iou(face.box, (180, 60, 265, 172)) > 0.8
    left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
    assert np.all((face.landmarks >= [x0, y0]) & (face.landmarks <= [x1, y1]))
    assert left_eye[0] < nose[0] < right_eye[0]
    assert mouth_left[0] < nose[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    assert 0.3 < (right_eye[0] - left_eye[0]) / face.width < 0.7


def test_grayscale_photo_finds_the_same_face(detector, astronaut):
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    colour_face = detector.detect(astronaut)[0]
    gray_faces = detector.detect(gray)
    assert len(gray_faces) == 1
    assert _iou(gray_faces[0].box, colour_face.box) > 0.8
    assert detector.detect(gray[:, :, None])[0].box == gray_faces[0].box


def test_face_cut_by_the_border_is_found_and_clipped(detector, astronaut):
    # Cut the photo through the middle of her face: the left half of the face is gone.
    cut = np.ascontiguousarray(astronaut[:, 222:])
    faces = detector.detect(cut)
    assert len(faces) == 1
    assert faces[0].box[0] == 0.0
    assert faces[0].box[2] <= cut.shape[1]
    assert faces[0].landmarks[0, 0] < 10  # the left eye sits at or beyond the border


def test_largest_face_comes_first(detector, astronaut):
    canvas = np.full((700, 900, 3), 128, np.uint8)
    canvas[:512, :512] = astronaut
    small = cv2.resize(astronaut[40:200, 140:300], (110, 110), interpolation=cv2.INTER_AREA)
    canvas[560:670, 700:810] = small
    faces = detector.detect(canvas)
    assert len(faces) == 2
    assert faces[0].width > faces[1].width
    assert faces[1].box[0] > 650


def test_min_face_size_excludes_smaller_faces(model_paths, astronaut):
    # Her face is about 90 pixels wide.
    large_only = MTCNN(*model_paths, min_face_size=200)
    assert large_only.detect(astronaut) == []


def test_photos_without_faces(detector):
    assert detector.detect(np.zeros((10, 10, 3), np.uint8)) == []
    assert detector.detect(np.full((300, 400, 3), 200, np.uint8)) == []


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=float)
    scores = np.array([0.8, 0.9, 0.5])
    assert non_maximum_suppression(boxes, scores, 0.5).tolist() == [1, 2]
    assert non_maximum_suppression(boxes, scores, 0.9).tolist() == [1, 0, 2]


def test_nms_min_overlap_removes_nested_boxes():
    boxes = np.array([[0, 0, 100, 100], [10, 10, 40, 40]], dtype=float)
    scores = np.array([0.9, 0.95])
    assert non_maximum_suppression(boxes, scores, 0.7).tolist() == [1, 0]
    assert non_maximum_suppression(boxes, scores, 0.7, overlap="min").tolist() == [1]
    with pytest.raises(ValueError, match="overlap"):
        non_maximum_suppression(boxes, scores, 0.7, overlap="max")


def test_sessions_can_be_passed_instead_of_paths(model_paths, astronaut):
    sessions = [ort.InferenceSession(str(path)) for path in model_paths]
    assert len(MTCNN(*sessions).detect(astronaut)) == 1


@pytest.mark.parametrize(
    "photo",
    [
        np.zeros((20, 20, 3), np.float32),
        np.zeros((20, 20, 4), np.uint8),
        np.zeros((0, 20, 3), np.uint8),
        [[1, 2], [3, 4]],
    ],
)
def test_bad_photos_are_refused(detector, photo):
    with pytest.raises(ImageError):
        detector.detect(photo)


@pytest.mark.parametrize(
    "settings",
    [
        {"min_face_size": 0},
        {"thresholds": (0.6, 0.7)},
        {"thresholds": (0.6, 0.7, 1.5)},
        {"scale_factor": 1.0},
    ],
)
def test_bad_settings_are_refused(model_paths, settings):
    with pytest.raises(FaceError):
        MTCNN(*model_paths, **settings)


def test_missing_or_broken_model_files(model_paths, tmp_path):
    pnet, rnet, _ = model_paths
    with pytest.raises(ModelError, match="not found"):
        MTCNN(pnet, rnet, tmp_path / "onet.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx graph")
    with pytest.raises(ModelError, match="cannot be loaded"):
        MTCNN(pnet, rnet, broken)
    with pytest.raises(ModelError, match="no output of width"):
        MTCNN(pnet, rnet, rnet)


def test_pnet_never_sees_more_than_the_pyramid_budget(detector, monkeypatch):
    seen = []
    pnet_run = detector._pnet.run
    monkeypatch.setattr(detector._pnet, "run", lambda batch: seen.append(batch.shape) or pnet_run(batch))
    detector.detect(np.full((3000, 4000, 3), 128, np.uint8))
    largest = max(height * width for _, height, width, _ in seen)
    assert MAX_PYRAMID_PIXELS * 0.99 < largest <= MAX_PYRAMID_PIXELS * 1.01


def test_min_face_size_can_be_raised_for_one_call(detector, astronaut):
    assert detector.detect(astronaut)
    assert detector.detect(astronaut, min_face_size=200) == []
