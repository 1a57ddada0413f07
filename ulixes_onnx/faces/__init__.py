"""Faces in photos: MTCNN detection, dlib's landmarks, alignment to each model's chip, and paste-back."""

from ulixes_onnx.faces.align import (
    CHIP_SPECS,
    AlignedChips,
    BoxChipSpec,
    ChipSpec,
    LandmarkChipSpec,
    ShapePredictorChipSpec,
    chip_spec,
    dlib_chip_matrix,
    extract_chips,
    photo_pixels_per_chip_pixel,
    similarity_transform,
    warp_chips,
)
from ulixes_onnx.faces.face import Face
from ulixes_onnx.faces.mtcnn import MTCNN, detector_from_store, mtcnn_paths
from ulixes_onnx.faces.pasteback import (
    MIN_PHOTO_PIXELS_PER_CHIP_PIXEL,
    DeltaPatch,
    PhotoDelta,
    merge_patches,
)
from ulixes_onnx.faces.shape_predictor import (
    ShapePredictor,
    dlib_landmarks,
    face_rectangle,
    five_point_predictor,
    predict_shapes,
)

__all__ = [
    "CHIP_SPECS",
    "MIN_PHOTO_PIXELS_PER_CHIP_PIXEL",
    "MTCNN",
    "AlignedChips",
    "BoxChipSpec",
    "ChipSpec",
    "DeltaPatch",
    "Face",
    "LandmarkChipSpec",
    "PhotoDelta",
    "ShapePredictor",
    "ShapePredictorChipSpec",
    "chip_spec",
    "detector_from_store",
    "dlib_chip_matrix",
    "dlib_landmarks",
    "extract_chips",
    "face_rectangle",
    "five_point_predictor",
    "merge_patches",
    "mtcnn_paths",
    "photo_pixels_per_chip_pixel",
    "predict_shapes",
    "similarity_transform",
    "warp_chips",
]
