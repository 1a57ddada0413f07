"""Faces in photos: MTCNN detection, alignment to each model's chip, and paste-back of chip cloaks."""

from ulixes_onnx.faces.align import (
    CHIP_SPECS,
    AlignedChips,
    BoxChipSpec,
    ChipSpec,
    LandmarkChipSpec,
    chip_spec,
    extract_chips,
    photo_pixels_per_chip_pixel,
    similarity_transform,
    warp_chips,
)
from ulixes_onnx.faces.mtcnn import MTCNN, Face, bundled_model_paths
from ulixes_onnx.faces.pasteback import (
    MIN_PHOTO_PIXELS_PER_CHIP_PIXEL,
    DeltaPatch,
    PhotoDelta,
    SkippedFace,
    paste_back,
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
    "SkippedFace",
    "bundled_model_paths",
    "chip_spec",
    "extract_chips",
    "paste_back",
    "photo_pixels_per_chip_pixel",
    "similarity_transform",
    "warp_chips",
]
