"""Cloak every face in a photo: detect, align to each model's chip, cloak, paste back, verify.

`Cloaker` is the Python API. It holds the detector and the models' sessions (reused across photos and
safe to share between threads) and never writes to disk. `Cloaker.cloak(image)` returns the cloak as a
delta over the face regions (and the cloaked pixels on request) and a report per face: work beyond
decoding and encoding never touches the rest of the photo, so time and memory grow with the faces, not
with the photo. `Cloaker.cloak_many` cloaks several photos with their faces in the same batches.

The loop is closed: the cloaked photo is shown to the recognisers the way an attacker would see it
(quantised to 8 bits, or through the caller's `encode` function that round-trips the output file
format), faces are re-detected and re-aligned, and a face counts as protected only if every model then
places it farther than its threshold from the original. Faces that are not protected are cloaked
further, with a raised target, for up to `max_rounds` rounds.

Ensembles (`ensemble`): with "max" and "sum" each model cloaks its own chips and the photo-space
masks are combined per pixel and channel: "max" keeps the change of largest magnitude (the paper's
Ensemble 2, its best), "sum" adds them (Ensemble 1). "joint" (Ensemble 3, Liu et al.) runs one loop
whose every step follows all models' gradients, on the chip that covers the most of the face; the
other models see that chip warped to their own layout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import cv2
import numpy as np

from ulixes_onnx.cards import get_card
from ulixes_onnx.cloak import ChipCloak, CloakSettingsError, LoopSettings, View, cloak_chips
from ulixes_onnx.faces import (
    MIN_PHOTO_PIXELS_PER_CHIP_PIXEL,
    AlignedChips,
    Face,
    detector_from_store,
    extract_chips,
    merge_patches,
    paste_back,
    photo_pixels_per_chip_pixel,
    warp_chips,
)
from ulixes_onnx.faces.pasteback import DeltaPatch, PhotoDelta
from ulixes_onnx.recognition import FaceModel
from ulixes_onnx.store import ModelStore
from ulixes_onnx.visibility import face_visibility

ENSEMBLES = ("max", "sum", "joint")
DEFAULT_MODELS = ("dlib-resnet",)
# Each verification round that finds a face unprotected raises its models' targets by this factor.
TARGET_GROWTH = 1.15
# A re-detected face is the same face when its box overlaps the original's by at least this IoU.
SAME_FACE_IOU = 0.5
# Boxes with that overlap are at least ~0.7 times as large, so re-detection searches down to half size.
REDETECT_MIN_SIZE_RATIO = 0.5

# Maps the photo's cloak to the 8-bit RGB pixels a recogniser would decode from the saved file.
Encoder = Callable[[PhotoDelta], np.ndarray]


@dataclass(frozen=True)
class ModelOutcome:
    """How one model saw one face: loop statistics and the verified distance from the original."""

    steps: int
    stop_reason: str
    chip_dssim: float
    chip_distance: float
    distance: float
    threshold: float

    @property
    def protected(self) -> bool:
        return self.distance > self.threshold


@dataclass(frozen=True)
class FaceReport:
    """One detected face: where it is, what each model measured, and whether it is protected.

    `embeddings` are the original face's embeddings per model, kept so that a saved copy can be
    measured against them again. `ssimulacra2` and `dssim` say how visible the cloak is on the face's
    region (`ulixes_onnx.visibility.face_region`) of the photo as saved, at its own resolution.
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
class PhotoInput:
    """One photo for `Cloaker.cloak_many`: its pixels, whether to keep it gray, and its encoder."""

    image: np.ndarray
    gray: bool = False
    encode: Encoder | None = None


@dataclass(eq=False)
class _PhotoJob:
    """A photo on its way through the rounds: its faces, their reports and the cloak so far."""

    photo: PhotoInput
    original: np.ndarray
    original8: np.ndarray
    aligned: dict[str, AlignedChips]
    reports: list[FaceReport]
    pending: list[int]
    started: float
    total: PhotoDelta | None = None
    seen: np.ndarray | None = None  # what a recogniser sees of the photo with `total` added
    _cloaked8: np.ndarray | None = None

    def cloaked8(self) -> np.ndarray:
        """The photo with `total` added, rounded to 8 bits; made once per round, and only when needed
        (at 12 megapixels it takes 36 MB)."""
        if self.total is None:
            return self.original8
        if self._cloaked8 is None:
            self._cloaked8 = self.total.apply(self.original8)
        return self._cloaked8

    def finish_round(
        self, delta: PhotoDelta, loop_results: list[ChipCloak], round_index: int, cloaker: Cloaker
    ) -> None:
        """Add a round's change, look at the photo as a recogniser would, and update the reports."""
        patches = delta.patches if self.total is None else [*self.total.patches, *delta.patches]
        self.total = replace(delta, patches=tuple(merge_patches(patches, "sum")))
        self._cloaked8 = None
        encode = self.photo.encode
        self.seen = encode(self.total) if encode else self.cloaked8()
        distances, redetected = cloaker.verify(self.seen, [self.reports[i] for i in self.pending])
        for row, index in enumerate(self.pending):
            previous = self.reports[index].models
            result = loop_results[row]
            outcomes = {
                model.name: ModelOutcome(
                    steps=result.steps + (previous[model.name].steps if previous else 0),
                    stop_reason=result.stop_reasons[model.name],
                    chip_dssim=result.dssim,
                    chip_distance=result.distances[model.name],
                    distance=float(distances[model.name][row]),
                    threshold=model.threshold,
                )
                for model in cloaker.models
            }
            self.reports[index] = replace(
                self.reports[index], models=outcomes, rounds=round_index + 1, redetected=redetected[row]
            )
        self.pending = [i for i in self.pending if not self.reports[i].protected]

    def result(self) -> CloakResult:
        height, width = self.original8.shape[:2]
        total = self.total or PhotoDelta(height, width, (), ())
        seen = self.original8 if self.seen is None else self.seen
        reports = [
            replace(report, **asdict(face_visibility(self.original, seen, report.box)))
            if report.models
            else report
            for report in self.reports
        ]
        return CloakResult(self.photo.image, total, reports, time.perf_counter() - self.started)


class Cloaker:
    """Cloak faces in photos with one model or an ensemble (see the module docstring).

    Cloaking parameters left as None take each model's card defaults (`[cloak]` in models/*.toml).
    `pool` maps model names to embeddings of other people's faces, needed by the strategies that
    pick negatives (see `ulixes_onnx.pool`).
    """

    def __init__(
        self,
        models: Sequence[str] = DEFAULT_MODELS,
        *,
        store: ModelStore | None = None,
        strategy: str = "away",
        ensemble: str = "max",
        step: float = 0.01,
        margin: float | None = None,
        target: float | None = None,
        min_progress: float | None = None,
        max_dssim: float = 0.03,
        max_steps: int = 100,
        random_negatives: int = 5,
        max_rounds: int = 3,
        seed: int = 0,
        pool: dict[str, np.ndarray] | None = None,
        min_face_size: float = 20.0,
        threads: int | None = None,
    ) -> None:
        if not models:
            raise CloakSettingsError("give at least one model to cloak with")
        if ensemble not in ENSEMBLES:
            raise CloakSettingsError(f"unknown ensemble {ensemble!r}; use one of: {', '.join(ENSEMBLES)}")
        if max_rounds < 1:
            raise CloakSettingsError("max rounds must be at least 1")
        store = store or ModelStore()
        cards = [get_card(name) for name in dict.fromkeys(models)]
        self.models = [FaceModel(card, store, threads=threads) for card in cards]
        self.detector = detector_from_store(store, min_face_size=min_face_size)
        self.ensemble = ensemble
        self.max_rounds = max_rounds
        self.pool = pool or {}
        self.settings = {
            model.name: LoopSettings(
                strategy=strategy,
                step=step,
                margin=model.card.cloak.margin if margin is None else margin,
                target=model.card.cloak.away_target if target is None else target,
                min_progress=model.card.cloak.min_progress if min_progress is None else min_progress,
                max_dssim=max_dssim,
                max_steps=max_steps,
                random_negatives=random_negatives,
                seed=seed,
            )
            for model in self.models
        }

    def cloak(self, image: np.ndarray, *, gray: bool = False, encode: Encoder | None = None) -> CloakResult:
        """Cloak every face of an RGB image (uint8, or float in 0..255 units).

        `gray` keeps a grayscale photo gray (the cloak changes luminance only). `encode` maps the cloak
        to what a recogniser would decode from the saved file; by default the cloaked pixels are only
        rounded to 8 bits.
        """
        return self.cloak_many([PhotoInput(image, gray, encode)])[0]

    def cloak_many(self, photos: Sequence[PhotoInput]) -> list[CloakResult]:
        """Cloak several photos at once: the faces of all of them advance together through the loop,
        in one batch per model and step, which keeps the cores busier than one face at a time. Each
        photo's result is the one `cloak` gives it alone."""
        jobs = [self._prepare(photo) for photo in photos]
        for round_index in range(self.max_rounds):
            active = [job for job in jobs if job.pending]
            if not active:
                break
            for job, (round_delta, loop_results) in zip(
                active, self._cloak_round(active, round_index), strict=True
            ):
                job.finish_round(round_delta, loop_results, round_index, self)
        return [job.result() for job in jobs]

    def _prepare(self, photo: PhotoInput) -> _PhotoJob:
        """Detect and align a photo's faces and embed the originals."""
        started = time.perf_counter()
        original = _as_rgb(photo.image)
        original8 = _quantised(original)
        faces = self.detector.detect(original8)
        aligned = {model.name: extract_chips(original8, faces, model.chip_spec) for model in self.models}
        skipped = self._too_small(aligned)
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
        return _PhotoJob(photo, original, original8, aligned, reports, pending, started)

    def _cloak_round(
        self, jobs: list[_PhotoJob], round_index: int
    ) -> list[tuple[PhotoDelta, list[ChipCloak]]]:
        """One pass of the loop over the pending faces of every photo; returns, per photo, the change
        to it and, per face, every model's loop outcome (for "max" and "sum" each model cloaks its own
        chips; for "joint" one loop follows all models' gradients on the chip that covers the most of
        the face)."""
        if self.ensemble == "joint":
            by_lead: dict[tuple[str, ...], list[int]] = {}
            for position, job in enumerate(jobs):
                order = sorted(self.models, key=lambda m: -_footprint(job.aligned[m.name], job.pending))
                by_lead.setdefault(tuple(model.name for model in order), []).append(position)
            named = {model.name: model for model in self.models}
            passes = [([named[name] for name in order], members) for order, members in by_lead.items()]
        else:
            passes = [([model], list(range(len(jobs)))) for model in self.models]
        patches: list[list[DeltaPatch]] = [[] for _ in jobs]
        outcomes: list[list[ChipCloak]] = [[] for _ in jobs]
        for group, members in passes:
            chosen = [jobs[position] for position in members]
            results, starts = self._cloak_faces(group, chosen, round_index)
            first = 0
            for position, job in zip(members, chosen, strict=True):
                rows = slice(first, first + len(job.pending))
                first = rows.stop
                outcomes[position] = _merge_outcomes(outcomes[position], results[rows])
                deltas = np.stack([result.chip for result in results[rows]]) - starts[rows]
                matrices = job.aligned[group[0].name].matrices[job.pending]
                patches[position] += paste_back(deltas, matrices, job.original8.shape).patches
        rule = "max" if self.ensemble == "joint" else self.ensemble
        per_photo = []
        for job, photo_patches, photo_outcomes in zip(jobs, patches, outcomes, strict=True):
            height, width = job.original8.shape[:2]
            delta = PhotoDelta(height, width, tuple(merge_patches(photo_patches, rule)), ())
            per_photo.append((_luminance_only(delta) if job.photo.gray else delta, photo_outcomes))
        return per_photo

    def _cloak_faces(
        self, group: list[FaceModel], jobs: list[_PhotoJob], round_index: int
    ) -> tuple[list[ChipCloak], np.ndarray]:
        """Run the loop once on the pending faces of all `jobs`, in the chips of `group[0]`; returns
        the outcomes and the chips the loop started from."""
        lead = group[0]
        originals = np.concatenate([job.aligned[lead.name].chips[job.pending] for job in jobs])
        start = np.concatenate([self._warped(job, lead) for job in jobs]) if round_index else None
        views = [
            View(
                model,
                replace(
                    self.settings[model.name],
                    target=self.settings[model.name].target * TARGET_GROWTH**round_index,
                ),
                warps=None
                if model is lead
                else np.concatenate(
                    [
                        _chip_to_chip(
                            job.aligned[lead.name].matrices[job.pending],
                            job.aligned[model.name].matrices[job.pending],
                        )
                        for job in jobs
                    ]
                ),
                positives=np.stack(
                    [job.reports[i].embeddings[model.name] for job in jobs for i in job.pending]
                ),
                pool=self.pool.get(model.name),
            )
            for model in group
        ]
        # Seeded by each face's index in its own photo: batching photos together changes no cloak.
        face_keys = [index for job in jobs for index in job.pending]
        results = cloak_chips(views, originals, start=start, face_keys=face_keys)
        return results, originals if start is None else start

    def _warped(self, job: _PhotoJob, model: FaceModel) -> np.ndarray:
        """The pending faces' chips for `model`, cut from the photo as cloaked so far."""
        spec = model.chip_spec
        matrices = job.aligned[model.name].matrices[job.pending]
        return warp_chips(job.cloaked8(), matrices, spec.size, dlib_pyramid=spec.dlib_pyramid)

    def verify(
        self, seen: np.ndarray, reports: Sequence[FaceReport]
    ) -> tuple[dict[str, np.ndarray], list[bool]]:
        """Each model's distance from the originals as a recogniser would measure it in `seen`.

        Faces are re-detected near where they were and re-aligned; a face the detector no longer
        finds is measured at its original placement (another detector might still find it).
        """
        seen8 = _quantised(seen)
        matched = [self._redetect(seen8, report.face) for report in reports]
        faces = [found or report.face for found, report in zip(matched, reports, strict=True)]
        distances = {}
        for model in self.models:
            embeddings = model.embed(extract_chips(seen8, faces, model.chip_spec).chips)
            originals = np.stack([report.embeddings[model.name] for report in reports])
            distances[model.name] = model.distance(embeddings, originals)
        return distances, [found is not None for found in matched]

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
                    skipped[index] = (
                        f"face too small for {name}: one chip pixel covers {scale:.2f} photo pixels "
                        f"(minimum {MIN_PHOTO_PIXELS_PER_CHIP_PIXEL:.2f})"
                    )
        return skipped


def _footprint(chips: AlignedChips, faces: list[int]) -> float:
    """Mean side, in photo pixels, of the photo region the chips cover."""
    size = chips.chips.shape[-1]
    return float(np.mean([size * photo_pixels_per_chip_pixel(chips.matrices[i]) for i in faces]))


def _chip_to_chip(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[N, 2, 3] matrices from source-chip pixels to target-chip pixels, given both photo -> chip."""
    warps = []
    for photo_to_source, photo_to_target in zip(source, target, strict=True):
        source_to_photo = cv2.invertAffineTransform(photo_to_source)
        linear = photo_to_target[:, :2] @ source_to_photo[:, :2]
        warps.append(
            np.hstack(
                [linear, (photo_to_target[:, :2] @ source_to_photo[:, 2] + photo_to_target[:, 2])[:, None]]
            )
        )
    return np.array(warps)


def _merge_outcomes(merged: list[ChipCloak], results: list[ChipCloak]) -> list[ChipCloak]:
    """Per face, one outcome with every model's stop reason and distance (the largest DSSIM and step
    count of the separate loops, which is what the combined mask can reach at most)."""
    if not merged:
        return results
    return [
        ChipCloak(
            chip=old.chip,
            steps=max(old.steps, new.steps),
            dssim=max(old.dssim, new.dssim),
            stop_reasons={**old.stop_reasons, **new.stop_reasons},
            distances={**old.distances, **new.distances},
        )
        for old, new in zip(merged, results, strict=True)
    ]


def _luminance_only(delta: PhotoDelta) -> PhotoDelta:
    """The same delta with each pixel's change spread equally over its channels (a gray change)."""
    patches = tuple(
        replace(patch, delta=np.repeat(patch.delta.mean(axis=2, keepdims=True), 3, axis=2))
        for patch in delta.patches
    )
    return replace(delta, patches=patches)
