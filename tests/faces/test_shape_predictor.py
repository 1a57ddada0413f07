"""dlib's 5-point shape predictor: the file reader, the cascade's rules, and agreement with dlib-bin."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.dlib_reference import dlib, reference_models
from tests.test_dlib_format import encode_int, encode_real
from ulixes_onnx.faces import dlib_landmarks, face_rectangle, five_point_predictor
from ulixes_onnx.faces.shape_predictor import _evaluate_forest, predict_shapes
from ulixes_onnx.zoo.dlib_format import DlibFormatError
from ulixes_onnx.zoo.dlib_shape_predictor import ShapePredictor, read_shape_predictor

# A two-point predictor with one level of one depth-1 tree: it compares the pixel under point 0 with
# the pixel under point 1 and moves both points right by 0.1 of the rectangle if the first is
# brighter by more than 20 levels, left otherwise.
MEAN_SHAPE = [[0.25, 0.5], [0.75, 0.5]]
THRESHOLD = 20.0
MOVES = [[0.1, 0.0, 0.1, 0.0], [-0.1, 0.0, -0.1, 0.0]]


def _encode_matrix(values: list[float]) -> bytes:
    return encode_int(-len(values)) + encode_int(-1) + b"".join(_encode_float(v) for v in values)


def _encode_float(value: float) -> bytes:
    mantissa, denominator = float(value).as_integer_ratio()  # the denominator is a power of two
    return encode_real(mantissa, -(denominator.bit_length() - 1))


def _tiny_model(
    splits: int = 1, compared_pixel: int = 1, anchor: int = 1, version: int = 1, trailing: bytes = b""
) -> bytes:
    """The two-point predictor as dlib serialises it (optionally broken in one place)."""
    tree = (
        encode_int(splits) + (encode_int(0) + encode_int(compared_pixel) + _encode_float(THRESHOLD)) * splits
    )
    tree += encode_int(2) + b"".join(_encode_matrix(move) for move in MOVES)
    forests = encode_int(1) + encode_int(1) + tree
    anchors = encode_int(1) + encode_int(2) + encode_int(0) + encode_int(anchor)
    offsets = encode_int(1) + encode_int(2) + _encode_float(0.0) * 4
    mean = _encode_matrix([coordinate for point in MEAN_SHAPE for coordinate in point])
    return encode_int(version) + mean + forests + anchors + offsets + trailing


def _two_tone(left: int, right: int, colour: bool = False) -> np.ndarray:
    photo = np.zeros((100, 100), np.uint8)
    photo[:, :50], photo[:, 50:] = left, right
    return np.repeat(photo[:, :, None], 3, axis=2) if colour else photo


def test_tiny_model_is_read_as_written():
    model = read_shape_predictor(_tiny_model())
    np.testing.assert_array_equal(model.mean_shape, MEAN_SHAPE)
    [level] = model.levels
    assert level.depth == 1 and level.anchors.tolist() == [0, 1]
    assert level.first_pixel.tolist() == [[0]] and level.second_pixel.tolist() == [[1]]
    np.testing.assert_array_equal(level.thresholds, [[THRESHOLD]])
    np.testing.assert_allclose(level.leaves, [MOVES], atol=1e-7)


def test_tree_goes_left_only_when_the_difference_exceeds_the_threshold():
    model = read_shape_predictor(_tiny_model())
    rectangle = np.array([[0.0, 0.0, 99.0, 99.0]])
    brighter = predict_shapes(model, _two_tone(121, 100), rectangle)[0]
    np.testing.assert_allclose(brighter, [[0.35 * 99, 49.5], [0.85 * 99, 49.5]], atol=1e-4)
    # A difference of exactly the threshold is not "more than" it.
    equal = predict_shapes(model, _two_tone(120, 100), rectangle)[0]
    np.testing.assert_allclose(equal[:, 0], [0.15 * 99, 0.65 * 99], atol=1e-4)


def test_every_tree_of_the_bundled_cascade_walks_to_its_own_leaf():
    level = five_point_predictor().levels[3]
    values = np.random.default_rng(5).uniform(0, 255, (3, len(level.anchors))).astype(np.float32)
    updates = _evaluate_forest(level, values)
    splits = level.thresholds.shape[1]
    for face in range(3):
        for tree in range(0, len(level.thresholds), 37):
            node = 0
            while node < splits:
                difference = (
                    values[face, level.first_pixel[tree, node]] - values[face, level.second_pixel[tree, node]]
                )
                node = 2 * node + 1 if difference > level.thresholds[tree, node] else 2 * node + 2
            np.testing.assert_array_equal(updates[face, tree], level.leaves[tree, node - splits])


def test_colour_is_read_as_dlibs_truncated_grey():
    model = read_shape_predictor(_tiny_model())
    photo = np.zeros((100, 100, 3), np.uint8)
    photo[:, :50] = (100, 100, 102)  # (R + G + B) // 3 = 100: grey 100, not 100.67
    photo[:, 50:] = 80
    rectangle = np.array([[0.0, 0.0, 99.0, 99.0]])
    moved = predict_shapes(model, photo, rectangle)[0, 0, 0]
    assert moved == pytest.approx(0.15 * 99, abs=1e-4)
    assert predict_shapes(model, _two_tone(101, 80, colour=True), rectangle)[0, 0, 0] == pytest.approx(
        0.35 * 99, abs=1e-4
    )


def test_pixels_outside_the_photo_read_as_black():
    model = read_shape_predictor(_tiny_model())
    # Point 0 lies left of the photo (black), point 1 on the bright right half: moves left.
    rectangle = np.array([[-60.0, 0.0, 39.0, 99.0]])
    photo = _two_tone(255, 255)
    np.testing.assert_allclose(
        predict_shapes(model, photo, rectangle)[0, :, 0], [-60 + 0.15 * 99, -60 + 0.65 * 99], atol=1e-4
    )


def test_several_rectangles_are_predicted_at_once():
    model = read_shape_predictor(_tiny_model())
    rectangles = np.array([[0.0, 0.0, 99.0, 99.0], [10.0, 0.0, 109.0, 99.0]])
    together = predict_shapes(model, _two_tone(200, 0), rectangles)
    for index, rectangle in enumerate(rectangles):
        np.testing.assert_array_equal(
            together[index], predict_shapes(model, _two_tone(200, 0), rectangle[None])[0]
        )


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (_tiny_model(version=2), "shape_predictor version 2"),
        (_tiny_model()[:-5], "file ends early"),
        (_tiny_model(trailing=b"\x01\x00"), "unexpected bytes after the shape predictor"),
        (_tiny_model(splits=2), "not a complete binary tree"),
        (_tiny_model(compared_pixel=2), "does not sample"),
        (_tiny_model(anchor=5), "shape point that does not exist"),
    ],
)
def test_broken_models_are_refused(model: bytes, message: str):
    with pytest.raises(DlibFormatError, match=message):
        read_shape_predictor(model)


def test_saved_arrays_load_back_to_the_same_predictor(tmp_path):
    model = read_shape_predictor(_tiny_model())
    saved = tmp_path / "tiny.npz"
    saved.write_bytes(model.to_npz())
    assert model.to_npz() == saved.read_bytes()  # the same bytes every time: the store pins its sha256
    loaded = ShapePredictor.from_npz(saved)
    rectangle = np.array([[0.0, 0.0, 99.0, 99.0]])
    for photo in (_two_tone(121, 100), _two_tone(120, 100)):  # one moves right, the other left
        np.testing.assert_array_equal(
            predict_shapes(loaded, photo, rectangle), predict_shapes(model, photo, rectangle)
        )


def test_the_store_keeps_the_parsed_predictor(store):
    built = store.get("dlib-landmarks")
    assert built.paths["predictor"].suffix == ".npz"
    assert five_point_predictor(store) is five_point_predictor(store)


def test_bundled_model_is_dlibs_five_point_cascade():
    model = five_point_predictor()
    assert model.mean_shape.shape == (5, 2) and len(model.levels) == 15
    level = model.levels[0]
    assert level.depth == 4 and level.leaves.shape == (500, 16, 10) and level.anchors.shape == (800,)


def _dlib_face(photo: np.ndarray):
    """The largest of the faces dlib's HOG detector finds (it finds a second, smaller one here)."""
    return max(reference_models()[0](photo, 1), key=lambda box: box.area())


def _astronaut_rectangles(photo: np.ndarray) -> list[tuple[int, int, int, int]]:
    box = _dlib_face(photo)
    left, top, right, bottom = box.left(), box.top(), box.right(), box.bottom()
    side = right - left
    return [
        (left, top, right, bottom),
        (left + side // 7, top - side // 9, right + side // 5, bottom),  # off and stretched
        (left - 2 * side // 3, top, right - 2 * side // 3, bottom),  # half outside the photo
    ]


@pytest.mark.parametrize("variant", ["rgb", "grey", "enlarged"])
def test_points_match_dlibs_predictor_on_the_same_rectangles(astronaut, variant):
    photo = {
        "rgb": astronaut[:, 40:],
        "grey": cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY),
        "enlarged": cv2.resize(astronaut, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC),
    }[variant]
    photo = np.ascontiguousarray(photo)
    predictor = reference_models()[1]
    for rectangle in _astronaut_rectangles(photo):
        theirs = np.array([[p.x, p.y] for p in predictor(photo, dlib.rectangle(*rectangle)).parts()])
        ours = predict_shapes(five_point_predictor(), photo, np.array([rectangle], float))[0]
        # dlib rounds its points to whole pixels; the port is exact up to that rounding.
        np.testing.assert_array_equal(np.floor(ours + 0.5), theirs)


def test_mtcnn_face_gets_dlibs_square_and_points(detector, astronaut):
    face = detector.detect(astronaut)[0]
    box = _dlib_face(astronaut)
    theirs = np.array([box.left(), box.top(), box.right(), box.bottom()], float)
    ours = face_rectangle(face)
    overlap = np.prod(np.minimum(ours[2:], theirs[2:]) - np.maximum(ours[:2], theirs[:2]))
    union = np.prod(ours[2:] - ours[:2]) + np.prod(theirs[2:] - theirs[:2]) - overlap
    assert overlap / union > 0.8
    dlib_points = np.array([[p.x, p.y] for p in reference_models()[1](astronaut, box).parts()])
    eye_distance = np.linalg.norm(dlib_points[0] - dlib_points[2])
    assert np.abs(dlib_landmarks(astronaut, face) - dlib_points).max() < 0.03 * eye_distance
