"""End to end on real faces: cloak a photo, paste back, verify as a recogniser would."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
from PIL import ExifTags, Image

from tests.test_photos import store_with_orientation
from ulixes_onnx.cloaking.files import OutputOptions, PhotoFile, cloak_file, cloak_files
from ulixes_onnx.cloaking.loop import Boost, CanvasCloak
from ulixes_onnx.cloaking.pipeline import (
    BUDGET_GROWTH,
    MAX_TARGET_RAISE,
    TARGET_MARGIN,
    Cloaker,
    FaceReport,
    ModelOutcome,
    PhotoPixels,
    _next_boost,
)
from ulixes_onnx.cloaking.settings import CloakSettings
from ulixes_onnx.cloaking.visibility import face_visibility
from ulixes_onnx.face_model import FaceModel
from ulixes_onnx.faces import Face, detector_from_store, extract_chips
from ulixes_onnx.photos import samples
from ulixes_onnx.photos.decoding import read_photo
from ulixes_onnx.store import ModelStore


@pytest.fixture(scope="module")
def cloaker(store: ModelStore) -> Cloaker:
    return Cloaker(store=store, threads=2)


@pytest.fixture(scope="module")
def astronaut_result(cloaker: Cloaker):
    return cloaker.cloak(samples.astronaut())


def test_the_face_is_protected_within_the_dssim_bound(astronaut_result) -> None:
    (face,) = astronaut_result.faces
    outcome = face.models["dlib-resnet"]
    assert face.protected and face.redetected
    assert outcome.distance > outcome.threshold == 0.6
    assert 0 < face.dssim <= 0.03 and outcome.chip_dssim <= 0.03
    assert 0 < face.ssimulacra2 < 100


def test_a_face_held_by_the_quality_bound_is_reported_not_protected(
    cloaker: Cloaker, astronaut_result
) -> None:
    (free,) = astronaut_result.faces
    floor = free.ssimulacra2 + (100 - free.ssimulacra2) / 2
    bounded = cloaker.with_settings(replace(cloaker.settings, min_quality=floor)).cloak(samples.astronaut())
    (face,) = bounded.faces
    outcome = face.models["dlib-resnet"]
    # one round: a face the bound stopped gets no more change
    assert outcome.stop_reason == "quality-bound" and face.rounds == 1
    assert not face.protected and outcome.distance < free.models["dlib-resnet"].distance
    # judged on the canvas at up to 4x the chip's resolution: the photo's own scores a little apart
    assert face.ssimulacra2 >= floor - 3


def test_a_redetected_face_is_measured_where_it_was_too(
    cloaker: Cloaker, astronaut_result, monkeypatch: pytest.MonkeyPatch
) -> None:
    (report,) = astronaut_result.faces
    # the photo unchanged, but the detector finds its face 15 px to the right, as if a cloak had moved
    # the landmarks: where the face was, a recogniser whose detector nothing moved matches it exactly
    seen = samples.astronaut()
    moved = Face(
        tuple(v + 15 * (i % 2 == 0) for i, v in enumerate(report.face.box)),
        report.face.score,
        report.face.landmarks + np.array([15.0, 0.0]),
    )
    monkeypatch.setattr(Cloaker, "_redetect", lambda self, photo, face: moved)
    distances, redetected = cloaker.verify(seen, [report])
    assert redetected == [True]
    for model in cloaker.models:
        chip = extract_chips(seen, [moved], model.chip_spec).chips
        at_moved = model.distance(model.embed(chip), report.embeddings[model.name][None])[0]
        assert distances[model.name][0] == pytest.approx(0.0, abs=1e-5) and at_moved > 0.005


def test_canvases_at_the_photos_resolution_see_the_face_as_the_saved_file_will(cloaker: Cloaker) -> None:
    calls = []

    def round_trip(region: np.ndarray, x0: int, y0: int) -> np.ndarray:
        calls.append((region.shape, x0, y0))
        return region + 1

    small, large = samples.astronaut(), samples.rescaled(samples.astronaut(), 6.0)
    jobs = [cloaker._prepare(PhotoPixels(photo, round_trip=round_trip)) for photo in (small, large)]
    (canvas,) = jobs[0].canvases.values()
    assert canvas.scale == 1.0
    pixels = np.zeros_like(canvas.image)
    np.testing.assert_array_equal(canvas.as_saved(pixels), pixels + 1)
    assert calls == [(canvas.image.shape, canvas.x0, canvas.y0)]
    # a canvas below the photo's resolution is not where the saved file's blocks are: none
    (shrunk,) = jobs[1].canvases.values()
    assert shrunk.scale < 1.0 and shrunk.as_saved is None
    assert cloaker._prepare(PhotoPixels(small)).canvases[0].as_saved is None


def test_faces_are_realigned_for_the_polish_where_the_detector_finds_them_with_their_change(
    cloaker: Cloaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = cloaker._prepare(PhotoPixels(samples.astronaut()))
    (index,) = job.pending
    canvas = job.canvases[index]
    # ten grey levels brighter over the face's canvas
    change = CanvasCloak(
        np.full_like(canvas.image, 10 / 127.5) * canvas.mask[..., None], None, 30, 0.0, {}, {}
    )
    seen = []

    def moved(self, photo, face):
        seen.append(photo)
        box = tuple(v + 6.0 * (i % 2 == 0) for i, v in enumerate(face.box))
        return replace(face, box=box, landmarks=face.landmarks + np.array([6.0, 0.0]))

    monkeypatch.setattr(Cloaker, "_redetect", moved)
    (realigned,) = cloaker._realigned([(job, index)], "0+1", [0], [change])
    assert job.canvases[index] is realigned and realigned.alignment_count == 2
    (photo,) = seen
    x0, y0, x1, y1 = map(int, job.reports[index].face.box)
    brighter = photo[y0:y1, x0:x1].astype(int) - samples.astronaut()[y0:y1, x0:x1]
    assert np.median(brighter) == 10
    expected = canvas.realigned(
        [
            model.chip_spec.photo_to_chip(photo, moved(None, photo, job.reports[index].face))
            for model in cloaker.models
        ]
    )
    for got, want in zip(realigned.to_chip, expected.to_chip, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-9)
    # sface's chip is placed on the detector's landmarks (dlib-resnet's on its own shape predictor's)
    assert (
        max(np.abs(got - was).max() for got, was in zip(realigned.to_chip, canvas.to_chip, strict=True)) > 3
    )
    np.testing.assert_array_equal(np.array(realigned.original_to_chip), np.array(canvas.to_chip))
    # a face the detector does not find keeps its canvas
    monkeypatch.setattr(Cloaker, "_redetect", lambda self, photo, face: None)
    assert cloaker._realigned([(job, index)], "0+1", [0], [change]) == [realigned]


def test_pixels_outside_the_face_are_unchanged(astronaut_result) -> None:
    original = samples.astronaut()
    cloaked = np.rint(astronaut_result.image).astype(np.uint8)
    changed = np.argwhere((cloaked != original).any(axis=2))
    x0, y0, x1, y1 = astronaut_result.faces[0].box
    width, height = x1 - x0, y1 - y0
    # the chip reaches past the detector's box (hair, chin): allow its footprint, nothing farther
    assert changed[:, 1].min() >= x0 - width and changed[:, 1].max() <= x1 + width
    assert changed[:, 0].min() >= y0 - height and changed[:, 0].max() <= y1 + height
    assert len(changed) > 1000


def test_photos_cloaked_together_get_the_cloak_each_gets_alone(cloaker: Cloaker, astronaut_result) -> None:
    mirrored = np.ascontiguousarray(samples.astronaut()[:, ::-1])
    coffee = np.ascontiguousarray(__import__("skimage.data").data.coffee())
    alone = cloaker.cloak(mirrored)
    together = cloaker.cloak_many(
        [PhotoPixels(samples.astronaut()), PhotoPixels(coffee), PhotoPixels(mirrored)]
    )
    assert together[1].faces == []
    for single, batched in ((astronaut_result, together[0]), (alone, together[2])):
        assert [f.models["dlib-resnet"].steps for f in batched.faces if f.models] == [
            f.models["dlib-resnet"].steps for f in single.faces if f.models
        ]
        assert all(face.protected for face in batched.faces if face.models)
        # Identical up to floating point: batch size can change how onnxruntime sums a convolution.
        assert np.abs(batched.image - single.image).max() <= 1.0


def _report(stop_reason: str, chip_distance: float, distance: float) -> FaceReport:
    outcome = ModelOutcome(
        steps=40,
        stop_reason=stop_reason,
        chip_dssim=0.001,
        chip_distance=chip_distance,
        distance=distance,
        threshold=0.6,
        protect_distance=0.75,
        target=0.8,
    )
    face = Face((0.0, 0.0, 30.0, 30.0), 0.99, np.zeros((5, 2)))
    return FaceReport(0, face, models={"dlib-resnet": outcome}, rounds=1)


@pytest.mark.parametrize(
    ("stop_reason", "chip_distance", "distance", "budget"),
    [
        ("target-reached", 0.81, 0.70, 1.0),  # reached, the saved copy lost some: a higher target only
        ("slow-progress", 0.70, 0.69, BUDGET_GROWTH),  # stopped short: more budget
        ("slow-progress", 0.81, 0.60, BUDGET_GROWTH),  # stalled at the target: held by its budget too
    ],
)
def test_the_next_round_raises_what_the_face_lacked(
    stop_reason: str, chip_distance: float, distance: float, budget: float
) -> None:
    report = _report(stop_reason, chip_distance, distance)
    boost = _next_boost(Boost(), report)
    assert boost.budget == budget
    # the target is raised by what the saved copy lost, with a margin; after the first round, whose
    # loss the re-alignment is meant to recover, by the margin only
    assert boost.target == pytest.approx(0.75 / distance * TARGET_MARGIN, rel=1e-6)
    assert _next_boost(Boost(), report, realigned=True).target == TARGET_MARGIN


def test_a_round_raises_the_target_of_a_face_found_again_by_a_bounded_factor() -> None:
    # the saved copy kept a third of the distance where the detector found the face again: no target
    # three times as far, the bound
    report = replace(_report("target-reached", 0.81, 0.25), redetected=True)
    assert _next_boost(Boost(target=1.1), report).target == pytest.approx(1.1 * MAX_TARGET_RAISE)
    # measured where it was, the loss is rounding and re-encoding: raised by all of it
    lost = replace(report, redetected=False)
    assert _next_boost(Boost(target=1.1), lost).target == pytest.approx(1.1 * 0.75 / 0.25 * TARGET_MARGIN)


def test_photo_without_faces_is_returned_unchanged(cloaker: Cloaker) -> None:
    coffee = np.ascontiguousarray(__import__("skimage.data").data.coffee())
    result = cloaker.cloak(coffee)
    assert result.faces == []
    np.testing.assert_array_equal(result.image, coffee)


def test_gray_photos_get_a_gray_cloak(cloaker: Cloaker) -> None:
    result = cloaker.cloak(samples.cameraman(), gray=True)
    assert result.faces and result.faces[0].models
    image = np.rint(result.image)
    np.testing.assert_array_equal(image[:, :, 0], image[:, :, 1])
    np.testing.assert_array_equal(image[:, :, 1], image[:, :, 2])


def test_saved_file_is_verified_and_protected(cloaker: Cloaker, store: ModelStore, tmp_path) -> None:
    source = tmp_path / "astronaut.jpg"
    Image.fromarray(samples.astronaut()).save(source, quality=90)
    report = cloak_file(cloaker, PhotoFile(source))
    assert report.error is None and report.status == "protected"
    assert report.output == tmp_path / "astronaut_cloaked.jpg"
    saved = read_photo(report.output)
    assert saved.rgb.shape == (512, 512, 3)
    face = report.faces[0]  # the largest; MTCNN also reports the mission patch (29 px), cloaked too
    assert all(other.skipped is None and other.protected for other in report.faces)
    assert face.models["dlib-resnet"].distance > 0.6
    # The reported distance is that of the written file: measured here without the cloaker, as a
    # recogniser would, from a fresh detection in each file (its box and landmarks may move a little).
    model, detector = FaceModel("dlib-resnet", store), detector_from_store(store)
    clean, cloaked = (
        model.embed(extract_chips(photo, detector.detect(photo)[:1], model.chip_spec).chips)
        for photo in (read_photo(source).rgb8, saved.rgb8)
    )
    independent = float(model.distance(clean, cloaked)[0])
    assert independent > 0.6
    assert face.models["dlib-resnet"].distance == pytest.approx(independent, abs=0.02)
    # the face's visibility is that of the file as written, at the photo's resolution
    visibility = face_visibility(read_photo(source).rgb8, saved.rgb8, face.box)
    assert face.ssimulacra2 == pytest.approx(visibility.ssimulacra2, abs=1e-6)
    assert face.dssim == pytest.approx(visibility.dssim, abs=1e-9) and face.dssim <= 0.03


def test_a_folder_is_cloaked_in_batches_with_reports_in_order(cloaker: Cloaker, tmp_path) -> None:
    names = ["a.jpg", "broken.jpg", "b.png", "c.jpg"]
    Image.fromarray(samples.astronaut()).save(tmp_path / names[0], quality=90)
    (tmp_path / names[1]).write_bytes(b"not a photo")
    Image.fromarray(samples.rescaled(samples.astronaut(), 0.8)).save(tmp_path / names[2])
    Image.fromarray(np.ascontiguousarray(samples.astronaut()[:, ::-1])).save(tmp_path / names[3], quality=90)
    output = tmp_path / "out"
    reports = list(
        cloak_files(
            cloaker, [PhotoFile(tmp_path / name) for name in names], OutputOptions(output), batch_photos=2
        )
    )
    assert [report.source.name for report in reports] == names
    assert reports[1].error is not None and "broken.jpg" in reports[1].error
    for report in (reports[0], reports[2], reports[3]):
        assert report.status == "protected" and report.output.parent == output and report.seconds > 0


@pytest.mark.slow  # cloaks the photo in each of the 8 orientations
def test_phone_photos_keep_their_orientation_and_change_only_the_face(cloaker: Cloaker, tmp_path) -> None:
    # Sides that are not multiples of 16, so a flipped or rotated re-encode would move every block.
    upright = Image.fromarray(samples.astronaut()[:500, 60:437])
    sources = []
    for orientation in range(1, 9):
        stored = store_with_orientation(upright, orientation)
        exif = Image.Exif()
        exif[ExifTags.Base.Orientation] = orientation
        sources.append(tmp_path / f"orientation{orientation}.jpg")
        stored.save(sources[-1], quality=90, exif=exif)

    reports = list(cloak_files(cloaker, [PhotoFile(path) for path in sources], batch_photos=8))

    measured = {}
    for orientation, (source, report) in enumerate(zip(sources, reports, strict=True), start=1):
        assert report.status == "protected", report.error
        with Image.open(source) as original, Image.open(report.output) as written:
            assert written.getexif()[ExifTags.Base.Orientation] == orientation
            assert written.size == original.size
        before, after = read_photo(source).rgb, read_photo(report.output).rgb
        face = report.faces[0]
        x0, y0, x1, y1 = face.box
        width, height = x1 - x0, y1 - y0
        outside = np.ones(before.shape[:2], bool)
        outside[max(0, int(y0 - height)) : int(y1 + height), max(0, int(x0 - width)) : int(x1 + width)] = (
            False
        )
        change = np.abs(after - before)
        measured[orientation] = (change[outside].mean(), face_visibility(before, after, face.box).dssim)
    upright_change, upright_dssim = measured.pop(1)
    for orientation, (outside_change, dssim) in measured.items():
        # Re-encode noise as for the upright photo, not the doubled change of a rotated re-encode.
        assert outside_change <= 1.25 * upright_change + 0.02, (orientation, measured, upright_change)
        # The face's own cloak differs a little per orientation (each takes its own rounds of the
        # closed loop); a whole re-encode of the photo made it up to 4.3x the upright one.
        assert dssim <= 2.0 * upright_dssim + 0.0005, (orientation, measured, upright_dssim)


def test_a_polished_large_face_keeps_its_distance_in_the_saved_copy(store: ModelStore) -> None:
    # The astronaut enlarged 5x: a 450-px face, polished, held on a canvas coarser than the photo, its
    # chip cut through two pyramid levels. The polish keeps the distance of the chip the loop cuts from
    # the canvas; when that chip was not the one the recogniser cuts from the photo, this face's saved
    # copy lay 0.70 from its original for 0.80 on the chip (now 0.82 for 0.84), and large faces of
    # faces-dev lost 8-14 % (benchmarks/results/chip-sampling-2026-12-06.md).
    photo = cv2.resize(samples.astronaut(), None, fx=5, fy=5, interpolation=cv2.INTER_CUBIC)
    one_round = Cloaker(CloakSettings(max_rounds=1), store=store, threads=2)
    (face,) = one_round.cloak(photo).faces
    outcome = face.models["dlib-resnet"]
    assert outcome.steps > one_round.settings.polish
    assert outcome.distance > 0.95 * outcome.chip_distance
