"""Cloak every face in a photo: detect, align, lay out each face's canvas, cloak, paste back, verify.

`Cloaker` is the Python API. It holds the detector and the models' sessions (reused across photos and
safe to share between threads) and never writes to disk. `Cloaker.cloak(image)` returns the cloak as a
delta over the face regions (and the cloaked pixels on request) and a report per face: work beyond
decoding and encoding never touches the rest of the photo, so time and memory grow with the faces, not
with the photo. `Cloaker.cloak_many` cloaks several photos with their faces in the same batches.

The loop is closed: the cloaked photo is shown to the recognisers the way an attacker would see it
(quantised to 8 bits, or through the caller's `encode` function that round-trips the output file
format), faces are re-detected and re-aligned, and a face counts as protected only if every model then
places it at least its protection distance from the original. Faces that are not protected are
cloaked further, with a larger budget or a raised target as their shortfall says, for up to
`max_rounds` rounds.

Ensembles (`ensemble`): with "max" and "sum" each model cloaks the face's canvas on its own and the
changes are combined per pixel and channel: "max" keeps the change of largest magnitude (the paper's
Ensemble 2, its best), "sum" adds them (Ensemble 1). "joint" (Ensemble 3, Liu et al.) runs one loop
whose every step follows all models' gradients on the shared canvas.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ulixes_onnx.cards import get_card
from ulixes_onnx.cloaking.loop import (
    Boost,
    CanvasCloak,
    CloakSettingsError,
    ModelView,
    nearest_of,
)
from ulixes_onnx.cloaking.polish import cloak_canvases
from ulixes_onnx.cloaking.settings import CloakSettings, protect_distance
from ulixes_onnx.cloaking.visibility import face_region, face_visibility
from ulixes_onnx.face_model import FaceModel
from ulixes_onnx.faces import (
    MIN_PHOTO_PIXELS_PER_CHIP_PIXEL,
    AlignedChips,
    Face,
    detector_from_store,
    extract_chips,
    merge_patches,
    photo_pixels_per_chip_pixel,
)
from ulixes_onnx.faces.canvas import FaceCanvas, make_canvas
from ulixes_onnx.faces.pasteback import DeltaPatch, PhotoDelta, too_small_reason
from ulixes_onnx.photos.encoding import RegionRoundTrip
from ulixes_onnx.store import ModelStore

# A face the closed loop finds unprotected gets, in the next round, this much more per-pixel budget
# if its loop stopped short of the target, and a target raised by what the saved copy lost, times
# this margin, if the loop reached it.
BUDGET_GROWTH = 2.0
TARGET_MARGIN = 1.03
# The saved copy keeps the loop's target if it lies at least this share of it from the original:
# rounding, re-encoding and re-alignment take a little of what the loop reached on its own view.
SAVED_TARGET_SHARE = 0.9
# A round raises the target of a face the detector found again by at most this factor. What the saved
# copy lost at a placement the loop has not seen, a higher target does not win back: a face found, once
# cloaked, at landmarks moved by a sixth of its width (George/img40's 601-pixel face at the photo's
# edge: dlib-resnet 0.73 on the loop's placements, 0.28 at that one) asked for a target 2.4 times as
# far, which the loop could not reach and which left the face more visible and less protected than a
# bounded one. A face measured where it was lost its distance to rounding and re-encoding, which a
# higher target does win back (the astronaut's 29-pixel face in its JPEG needed 2.1x).
MAX_TARGET_RAISE = 1.3
# A re-detected face is the same face when its box overlaps the original's by at least this IoU.
SAME_FACE_IOU = 0.5
# Boxes with that overlap are at least ~0.7 times as large, so re-detection searches down to half size.
REDETECT_MIN_SIZE_RATIO = 0.5

# Maps the photo's cloak to the 8-bit RGB pixels a recogniser would decode from the saved file.
Encoder = Callable[[PhotoDelta], np.ndarray]


@dataclass(frozen=True)
class ModelOutcome:
    """How one model saw one face: loop statistics and the verified distance from the original.

    `chip_dssim` and `chip_distance` are the loop's own figures (on the face's canvas and the model's chip
    cut from it, at the nearer of a re-aligned face's two alignments); `distance` is measured in the photo
    as saved (at the nearer of where the face is found in it and where it was found in the original:
    `Cloaker.verify`). The face counts as protected against the model when `distance` reaches
    `protect_distance`: past the `threshold` by about the spread of one person's photos, so that the
    person's other photos do not match it either.
    """

    steps: int
    stop_reason: str
    chip_dssim: float
    chip_distance: float
    distance: float
    threshold: float
    protect_distance: float
    target: float

    @property
    def protected(self) -> bool:
        return self.distance >= self.protect_distance

    @property
    def reached_target(self) -> bool:
        """Whether the saved copy kept the loop's target, up to what saving and re-aligning cost."""
        return self.distance >= SAVED_TARGET_SHARE * self.target


@dataclass(frozen=True)
class FaceReport:
    """One detected face: where it is, what each model measured, and whether it is protected.

    `embeddings` are the original face's embeddings per model, kept so that a saved copy can be
    measured against them again. `ssimulacra2` and `dssim` say how visible the cloak is on the face's
    region (`ulixes_onnx.cloaking.visibility.face_region`) of the photo as saved, at its own resolution.
    """

    index: int
    face: Face
    embeddings: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    models: dict[str, ModelOutcome] = field(default_factory=dict)
    ssimulacra2: float = 100.0
    dssim: float = 0.0
    rounds: int = 0
    redetected: bool = True
    skipped: str | None = None

    @property
    def box(self) -> tuple[float, float, float, float]:
        return self.face.box

    @property
    def protected(self) -> bool:
        return (
            self.skipped is None
            and bool(self.models)
            and all(outcome.protected for outcome in self.models.values())
        )

    @property
    def finished(self) -> bool:
        """Whether the closed loop is done with the face: protected with the target kept, or stopped by
        the quality bound (more change is not allowed)."""
        outcomes = self.models.values()
        if any(outcome.stop_reason == "quality-bound" for outcome in outcomes):
            return True
        return self.protected and all(outcome.reached_target for outcome in outcomes)


@dataclass(frozen=True)
class CloakResult:
    """The cloak of a photo (`delta`, to add to `original`) and one report per detected face."""

    original: np.ndarray = field(repr=False)
    delta: PhotoDelta = field(repr=False)
    faces: list[FaceReport]
    seconds: float

    @property
    def image(self) -> np.ndarray:
        """The cloaked photo: float32 HxWx3 in 0..255 units (a new array on every call)."""
        return self.delta.add_to(_as_rgb(self.original))


def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    overlap = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - overlap
    return overlap / union if union > 0 else 0.0


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise CloakSettingsError(f"expected an RGB image HxWx3 (or gray HxW), got shape {image.shape}")
    return image


def _quantised(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class PhotoPixels:
    """One photo for `Cloaker.cloak_many`: its pixels, whether to keep it gray, its encoder, and what
    the saved file decodes a region of it to (`jpeg_region_round_trip`; None: the pixels rounded)."""

    image: np.ndarray
    gray: bool = False
    encode: Encoder | None = None
    round_trip: RegionRoundTrip | None = None


@dataclass(eq=False)
class _PhotoJob:
    """A photo on its way through the rounds: its faces, their canvases and reports, and the cloak so
    far (per face and per loop pass: the canvas change that pass has made)."""

    photo: PhotoPixels
    original: np.ndarray
    original8: np.ndarray
    canvases: dict[int, FaceCanvas]
    reports: list[FaceReport]
    pending: list[int]
    started: float
    changes: dict[tuple[int, str], CanvasCloak] = field(default_factory=dict)
    boosts: dict[int, Boost] = field(default_factory=dict)
    total: PhotoDelta | None = None
    seen: np.ndarray | None = None  # what a recogniser sees of the photo with `total` added

    def finish_round(self, loop_results: dict[int, CanvasCloak], round_index: int, cloaker: Cloaker) -> None:
        """Paste the faces' changes into the photo, look at it as a recogniser would, update the reports."""
        self.total = cloaker.photo_delta(self)
        encode = self.photo.encode
        self.seen = encode(self.total) if encode else self.total.apply(self.original8)
        distances, redetected, matrices = cloaker._measure(self.seen, [self.reports[i] for i in self.pending])
        for row, index in enumerate(self.pending):
            previous = self.reports[index].models
            result = loop_results[index]
            outcomes = {
                model.name: ModelOutcome(
                    steps=result.steps + (previous[model.name].steps if previous else 0),
                    stop_reason=result.stop_reasons[model.name],
                    chip_dssim=result.dssim,
                    chip_distance=result.distances[model.name],
                    distance=float(distances[model.name][row]),
                    threshold=model.threshold,
                    protect_distance=protect_distance(cloaker.settings, model.card),
                    target=cloaker.loop[model.name].target,
                )
                for model in cloaker.models
            }
            self.reports[index] = replace(
                self.reports[index], models=outcomes, rounds=round_index + 1, redetected=redetected[row]
            )
        row_of = {index: row for row, index in enumerate(self.pending)}
        self.pending = [i for i in self.pending if not self.reports[i].finished]
        for index in self.pending:
            # The next round cuts the chips where a recogniser aligns the cloaked face: the cloak moves
            # the landmarks it is aligned by, and a change made for the old alignment loses distance.
            row = row_of[index]
            self.canvases[index] = self.canvases[index].realigned(
                [matrices[model.name][row] for model in cloaker.models]
            )
            self.boosts[index] = _next_boost(
                self.boosts.get(index, Boost()), self.reports[index], realigned=round_index == 0
            )

    def result(self) -> CloakResult:
        height, width = self.original8.shape[:2]
        total = self.total or PhotoDelta(height, width, ())
        seen = self.original8 if self.seen is None else self.seen
        reports = [
            replace(report, **asdict(face_visibility(self.original, seen, report.box)))
            if report.models
            else report
            for report in self.reports
        ]
        return CloakResult(self.photo.image, total, reports, time.perf_counter() - self.started)


class Cloaker:
    """Cloak faces in photos with one model or an ensemble (see the module docstring), as `settings`
    say. `pool` maps model names to embeddings of other people's faces, needed by the strategies that
    pick negatives (see `ulixes_onnx.cloaking.pool`); `references` maps them to embeddings of other
    photos of the person, which every face is also cloaked away from and measured against (see
    `ulixes_onnx.cloaking.references`).
    """

    def __init__(
        self,
        settings: CloakSettings | None = None,
        *,
        store: ModelStore | None = None,
        pool: dict[str, np.ndarray] | None = None,
        references: dict[str, np.ndarray] | None = None,
        threads: int | None = None,
    ) -> None:
        settings = settings or CloakSettings()
        store = store or ModelStore()
        self.models = [FaceModel(get_card(name), store, threads=threads) for name in settings.models]
        self.detector = detector_from_store(store, min_face_size=settings.min_face_size)
        self.pool = pool or {}
        self.references = references or {}
        self._use(settings)

    def _use(self, settings: CloakSettings) -> None:
        self.settings = settings
        # Each model's loop settings, its card's defaults filled in.
        self.loop = {model.name: settings.loop_settings(model.card) for model in self.models}

    def with_settings(self, settings: CloakSettings) -> Cloaker:
        """A Cloaker for other settings of the same models that shares this one's sessions (loading
        them takes seconds and memory, this takes neither)."""
        if settings.models != self.settings.models or settings.min_face_size != self.settings.min_face_size:
            raise CloakSettingsError("settings for other models or face sizes need a Cloaker of their own")
        variant = copy.copy(self)
        variant._use(settings)
        return variant

    def cloak(self, image: np.ndarray, *, gray: bool = False, encode: Encoder | None = None) -> CloakResult:
        """Cloak every face of an RGB image (uint8, or float in 0..255 units).

        `gray` keeps a grayscale photo gray (the cloak changes luminance only). `encode` maps the cloak
        to what a recogniser would decode from the saved file; by default the cloaked pixels are only
        rounded to 8 bits.
        """
        return self.cloak_many([PhotoPixels(image, gray, encode)])[0]

    def cloak_many(self, photos: Sequence[PhotoPixels]) -> list[CloakResult]:
        """Cloak several photos at once: the faces of all of them advance together through the loop,
        in one batch per model and step, which keeps the cores busier than one face at a time. Each
        photo's result is the one `cloak` gives it alone."""
        jobs = [self._prepare(photo) for photo in photos]
        for round_index in range(self.settings.max_rounds):
            active = [job for job in jobs if job.pending]
            if not active:
                break
            for job, loop_results in zip(active, self._cloak_round(active, round_index), strict=True):
                job.finish_round(loop_results, round_index, self)
        return [job.result() for job in jobs]

    def _prepare(self, photo: PhotoPixels) -> _PhotoJob:
        """Detect and align a photo's faces, embed the originals and lay out each face's canvas."""
        started = time.perf_counter()
        original = _as_rgb(photo.image)
        original8 = _quantised(original)
        faces = self.detector.detect(original8)
        aligned = {model.name: extract_chips(original8, faces, model.chip_spec) for model in self.models}
        skipped = self._too_small(aligned)
        canvases = {}
        for index in range(len(faces)):
            if index in skipped:
                continue
            canvas = make_canvas(
                original8,
                [aligned[model.name].matrices[index] for model in self.models],
                [model.chip_size[0] for model in self.models],
                cap=self.settings.canvas_cap,
                dlib_pyramids=[model.chip_spec.dlib_pyramid for model in self.models],
            )
            if canvas is None:
                skipped[index] = "the face lies outside the photo"
                continue
            if photo.round_trip is not None and canvas.scale == 1.0:
                canvas = replace(
                    canvas, as_saved=functools.partial(photo.round_trip, x0=canvas.x0, y0=canvas.y0)
                )
            canvases[index] = canvas.judging(*face_region(faces[index].box, original8.shape))
        pending = [i for i in range(len(faces)) if i not in skipped]
        embeddings = {
            model.name: model.embed(aligned[model.name].chips[pending]) if pending else None
            for model in self.models
        }
        reports = [
            FaceReport(
                i,
                face,
                embeddings={
                    name: rows[pending.index(i)] for name, rows in embeddings.items() if i in pending
                },
                skipped=skipped.get(i),
            )
            for i, face in enumerate(faces)
        ]
        return _PhotoJob(photo, original, original8, canvases, reports, pending, started)

    def _passes(self) -> list[list[int]]:
        """The loop passes of a round, as positions in `models`: one joint pass, or one per model."""
        if self.settings.ensemble == "joint":
            return [list(range(len(self.models)))]
        return [[position] for position in range(len(self.models))]

    @staticmethod
    def _pass_key(members: list[int]) -> str:
        return "+".join(map(str, members))

    def _cloak_round(self, jobs: list[_PhotoJob], round_index: int) -> list[dict[int, CanvasCloak]]:
        """One pass of the loop per model (or one joint pass) over the pending faces of every photo;
        returns, per photo and face, every model's loop outcome. Each pass continues from the change
        it made in earlier rounds, with its targets raised."""
        outcomes: list[dict[int, CanvasCloak]] = [{} for _ in jobs]
        for members in self._passes():
            key = self._pass_key(members)
            faces = [(job, index) for job in jobs for index in job.pending]
            views = [
                ModelView(
                    self.models[position],
                    self.loop[self.models[position].name],
                    index=position,
                    positives=np.stack(
                        [job.reports[i].embeddings[self.models[position].name] for job, i in faces]
                    ),
                    pool=self.pool.get(self.models[position].name),
                    references=self.references.get(self.models[position].name),
                )
                for position in members
            ]
            starts = [job.changes[(index, key)].state if round_index else None for job, index in faces]
            results = cloak_canvases(
                views,
                [job.canvases[index] for job, index in faces],
                start=starts if round_index else None,
                # Seeded by each face's index in its own photo: batching photos together changes no cloak.
                face_keys=[index for _, index in faces],
                boosts=[job.boosts.get(index, Boost()) for job, index in faces],
                realign=functools.partial(self._realigned, faces, key),
            )
            for (job, index), result in zip(faces, results, strict=True):
                job.changes[(index, key)] = result
                position = jobs.index(job)
                outcomes[position][index] = _merge_outcomes(outcomes[position].get(index), result)
        return outcomes

    def _realigned(
        self,
        faces: list[tuple[_PhotoJob, int]],
        key: str,
        positions: list[int],
        changes: list[CanvasCloak],
    ) -> list[FaceCanvas]:
        """The canvases of the faces at `positions` of `faces`, realigned where the detector finds
        them in their photos with this pass's `changes` pasted in (8-bit, not encoded), which become
        their jobs' canvases; a face the detector does not find keeps its canvas. The changes are
        recorded as the faces' changes so far (the pass's results replace them)."""
        members: dict[_PhotoJob, list[int]] = {}
        for position, change in zip(positions, changes, strict=True):
            job, index = faces[position]
            job.changes[(index, key)] = change
            members.setdefault(job, []).append(index)
        for job, indices in members.items():
            seen8 = self.photo_delta(job).apply(job.original8)
            for index in indices:
                found = self._redetect(seen8, job.reports[index].face)
                if found is not None:
                    matrices = [model.chip_spec.photo_to_chip(seen8, found) for model in self.models]
                    job.canvases[index] = job.canvases[index].realigned(matrices)
        return [job.canvases[index] for job, index in (faces[position] for position in positions)]

    def photo_delta(self, job: _PhotoJob) -> PhotoDelta:
        """The photo-resolution change of every cloaked face of a job, its passes combined by the
        ensemble rule (faces that overlap keep the change of largest magnitude)."""
        rule = "sum" if self.settings.ensemble == "sum" else "max"
        patches = []
        for index, canvas in job.canvases.items():
            changes = [
                job.changes[(index, key)].delta
                for key in map(self._pass_key, self._passes())
                if (index, key) in job.changes
            ]
            if not changes:
                continue
            combined = changes[0]
            for change in changes[1:]:
                combined = (
                    combined + change
                    if rule == "sum"
                    else np.where(np.abs(change) > np.abs(combined), change, combined)
                )
            delta, mask = canvas.to_photo(combined * np.float32(127.5))
            patches.append(DeltaPatch(canvas.x0, canvas.y0, delta, mask))
        height, width = job.original8.shape[:2]
        photo_delta = PhotoDelta(height, width, tuple(merge_patches(patches)))
        return _luminance_only(photo_delta) if job.photo.gray else photo_delta

    def verify(
        self, seen: np.ndarray, reports: Sequence[FaceReport]
    ) -> tuple[dict[str, np.ndarray], list[bool]]:
        """Each model's distance from the originals (or from the nearest reference photo, when that is
        nearer) as a recogniser would measure it in `seen`.

        Faces are re-detected near where they were and re-aligned; a face the detector no longer
        finds is measured at its original placement (another detector might still find it). A face it
        finds is measured at both placements, and the nearer counts: the cloak moves the landmarks our
        detector aligns by, and a recogniser with a detector the cloak does not move aligns the face
        where it was.
        """
        distances, redetected, _ = self._measure(seen, reports)
        return distances, redetected

    def _measure(
        self, seen: np.ndarray, reports: Sequence[FaceReport]
    ) -> tuple[dict[str, np.ndarray], list[bool], dict[str, np.ndarray]]:
        """`verify`, also returning each model's photo -> chip matrices [N, 2, 3] in `seen`."""
        seen8 = _quantised(seen)
        matched = [self._redetect(seen8, report.face) for report in reports]
        faces = [found or report.face for found, report in zip(matched, reports, strict=True)]
        distances, matrices = {}, {}
        # Where the detector found a face again, it is also measured where the original had it.
        again = [row for row, found in enumerate(matched) if found is not None]
        at_original_placement = [reports[row].face for row in again]
        for model in self.models:
            aligned = extract_chips(seen8, faces, model.chip_spec)
            originals = np.stack([report.embeddings[model.name] for report in reports])
            references = self.references.get(model.name)
            distance = nearest_of(model, model.embed(aligned.chips), originals, references)[0]
            if again:
                placed = extract_chips(seen8, at_original_placement, model.chip_spec).chips
                nearer = nearest_of(model, model.embed(placed), originals[again], references)[0]
                distance[again] = np.minimum(distance[again], nearer)
            distances[model.name] = distance
            matrices[model.name] = aligned.matrices
        return distances, [found is not None for found in matched], matrices

    def remeasure(self, seen: np.ndarray, reports: list[FaceReport]) -> list[FaceReport]:
        """The reports with every model's distance measured again in `seen` (e.g. the saved file)."""
        measured = [report for report in reports if report.models]
        if not measured:
            return reports
        distances, redetected = self.verify(seen, measured)
        updated = {
            report.index: replace(
                report,
                redetected=redetected[row],
                models={
                    name: replace(outcome, distance=float(distances[name][row]))
                    for name, outcome in report.models.items()
                },
            )
            for row, report in enumerate(measured)
        }
        return [updated.get(report.index, report) for report in reports]

    def _redetect(self, photo: np.ndarray, face: Face) -> Face | None:
        """The face the detector finds at `face`'s place in `photo`, searching only around it."""
        x0, y0, x1, y1 = face.box
        grow_x, grow_y = (x1 - x0) / 2, (y1 - y0) / 2
        height, width = photo.shape[:2]
        left, top = max(0, int(x0 - grow_x)), max(0, int(y0 - grow_y))
        right, bottom = min(width, int(np.ceil(x1 + grow_x))), min(height, int(np.ceil(y1 + grow_y)))
        # Only faces of about this one's size matter, which keeps the search cheap on large photos.
        smallest = max(self.detector.min_face_size, REDETECT_MIN_SIZE_RATIO * min(x1 - x0, y1 - y0))
        found = self.detector.detect(
            np.ascontiguousarray(photo[top:bottom, left:right]), min_face_size=smallest
        )
        shifted = [
            Face(
                (other.box[0] + left, other.box[1] + top, other.box[2] + left, other.box[3] + top),
                other.score,
                other.landmarks + np.array([left, top]),
            )
            for other in found
        ]
        best = max(shifted, key=lambda other: _box_iou(face.box, other.box), default=None)
        return best if best is not None and _box_iou(face.box, best.box) >= SAME_FACE_IOU else None

    @staticmethod
    def _too_small(aligned: dict[str, AlignedChips]) -> dict[int, str]:
        skipped = {}
        for name, chips in aligned.items():
            for index, matrix in enumerate(chips.matrices):
                scale = photo_pixels_per_chip_pixel(matrix)
                if scale < MIN_PHOTO_PIXELS_PER_CHIP_PIXEL and index not in skipped:
                    reason = too_small_reason(scale, MIN_PHOTO_PIXELS_PER_CHIP_PIXEL)
                    skipped[index] = f"face too small for {name}: {reason}"
        return skipped


def _next_boost(boost: Boost, report: FaceReport, *, realigned: bool = False) -> Boost:
    """How much to raise a face's target and budget for the next round, from why it fell short: a
    loop that stopped short of its target, or whose progress stalled, needs a larger budget; a loop
    that reached it but whose saved copy lost some of the distance (rounding, re-encoding,
    re-alignment) needs a target raised by what was lost (up to MAX_TARGET_RAISE for a face the
    detector found again).

    A stalled loop whose plain view ended just past its target was held by its budget all the same: a
    higher target alone would stall again (a 29-pixel face of the astronaut's JPEG did, three rounds
    short of its protection distance, when its first round ended at the target with larger steps)."""
    outcomes = report.models.values()
    held_by_budget = any(
        outcome.chip_distance < outcome.target * boost.target or outcome.stop_reason == "slow-progress"
        for outcome in outcomes
    )
    lost = (
        1.0
        if realigned
        else max(
            max(outcome.protect_distance, SAVED_TARGET_SHARE * outcome.target) / max(outcome.distance, 1e-6)
            for outcome in outcomes
        )
    )
    factor = max(1.0, lost * TARGET_MARGIN)
    if report.redetected:
        factor = min(factor, MAX_TARGET_RAISE)
    return Boost(
        target=boost.target * factor,
        budget=boost.budget * (BUDGET_GROWTH if held_by_budget else 1.0),
    )


def _merge_outcomes(merged: CanvasCloak | None, result: CanvasCloak) -> CanvasCloak:
    """One outcome per face with every model's stop reason and distance (the largest DSSIM and step
    count of the separate passes, which is what the combined change can reach at most)."""
    if merged is None:
        return result
    return CanvasCloak(
        delta=merged.delta,
        state=merged.state,
        steps=max(merged.steps, result.steps),
        dssim=max(merged.dssim, result.dssim),
        stop_reasons={**merged.stop_reasons, **result.stop_reasons},
        distances={**merged.distances, **result.distances},
    )


def _luminance_only(delta: PhotoDelta) -> PhotoDelta:
    """The same delta with each pixel's change spread equally over its channels (a gray change)."""
    patches = tuple(
        replace(patch, delta=np.repeat(patch.delta.mean(axis=2, keepdims=True), 3, axis=2))
        for patch in delta.patches
    )
    return replace(delta, patches=patches)
