"""The written file's measurement: faces the last round verified on the very bytes written keep their
measurement; every other face is measured again on the file (the end-to-end case is in test_pipeline)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ulixes_onnx.cloaking.files import OutputOptions, _measured_as_written, _Pending
from ulixes_onnx.cloaking.pipeline import CloakResult, FaceReport, ModelOutcome
from ulixes_onnx.faces import Face
from ulixes_onnx.faces.pasteback import PhotoDelta
from ulixes_onnx.photos.decoding import read_photo

PIXELS = np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)


class RecordingCloaker:
    """Stands in for `Cloaker.remeasure`: records what it was asked to measure, marks the faces."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, list[int]]] = []

    def remeasure(self, seen: np.ndarray, reports: list[FaceReport]) -> list[FaceReport]:
        self.calls.append((seen, [report.index for report in reports]))
        return [FaceReport(r.index, r.face, models=r.models, rounds=r.rounds, dssim=1.0) for r in reports]


def face_report(index: int, rounds: int) -> FaceReport:
    outcome = ModelOutcome(10, "target", 0.01, 0.8, 0.8, 0.6, 0.75, 0.8)
    face = Face((0.0, 0.0, 8.0, 8.0), 0.99, np.zeros((5, 2)))
    return FaceReport(index, face, models={"dlib-resnet": outcome}, rounds=rounds)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def written(tmp_path: Path, data: bytes, faces: list[FaceReport], verified: bytes | None) -> tuple:
    destination = tmp_path / "out.png"
    destination.write_bytes(data)
    delta = PhotoDelta(16, 16, ())
    pending = _Pending(destination, destination, encoded=None if verified is None else (delta, verified))
    result = CloakResult(PIXELS, delta, faces, 0.0)
    return pending, result, destination


def test_faces_verified_on_the_written_bytes_keep_their_measurement(tmp_path: Path) -> None:
    data = png_bytes(PIXELS)
    faces = [face_report(0, 2), face_report(1, 2)]
    cloaker = RecordingCloaker()
    measured = _measured_as_written(cloaker, *written(tmp_path, data, faces, data), OutputOptions())
    assert cloaker.calls == [] and measured == faces


def test_faces_finished_in_earlier_rounds_are_measured_again_on_the_file(tmp_path: Path) -> None:
    data = png_bytes(PIXELS)
    faces = [face_report(0, 2), face_report(1, 1), face_report(2, 0)]
    faces[2] = FaceReport(2, faces[2].face, skipped="face too small")
    cloaker = RecordingCloaker()
    measured = _measured_as_written(cloaker, *written(tmp_path, data, faces, data), OutputOptions())
    ((seen, indices),) = cloaker.calls
    assert indices == [1] and np.array_equal(seen, PIXELS)
    assert [face.dssim for face in measured] == [0.0, 1.0, 0.0]
    assert measured[0] is faces[0] and measured[2] is faces[2]


@pytest.mark.parametrize("verified", [None, b"other bytes"])
def test_a_file_not_verified_as_written_is_measured_again_whole(
    tmp_path: Path, verified: bytes | None
) -> None:
    data = png_bytes(PIXELS)
    faces = [face_report(0, 2), face_report(1, 1)]
    cloaker = RecordingCloaker()
    pending, result, destination = written(tmp_path, data, faces, verified)
    _measured_as_written(cloaker, pending, result, destination, OutputOptions())
    ((seen, indices),) = cloaker.calls
    assert indices == [0, 1] and np.array_equal(seen, read_photo(destination).rgb8)


def test_a_cloak_other_than_the_verified_one_is_measured_again_whole(tmp_path: Path) -> None:
    data = png_bytes(PIXELS)
    faces = [face_report(0, 1)]
    cloaker = RecordingCloaker()
    pending, result, destination = written(tmp_path, data, faces, data)
    pending.encoded = (PhotoDelta(16, 16, ()), data)  # the bytes of another cloak than the result's
    _measured_as_written(cloaker, pending, result, destination, OutputOptions())
    assert [indices for _, indices in cloaker.calls] == [[0]]
