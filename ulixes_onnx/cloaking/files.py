"""Cloaking photo files: find the inputs, cloak each file, write the copy, verify the written file.

The original is never modified. The copy is written atomically next to it (or in an output folder)
as `<stem><suffix><ext>`, never over an existing file unless asked. During cloaking, every candidate is
encoded exactly as it will be written and decoded again, so the closed loop judges what a recogniser
will see in the saved file; after writing, the file itself is read back and measured once more.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ulixes_onnx.atomic import protect_inputs, remove_stale_parts, same_file
from ulixes_onnx.cloaking.pipeline import Cloaker, CloakResult, FaceReport, PhotoPixels
from ulixes_onnx.errors import ImageError, UlixesError, UsageError
from ulixes_onnx.faces.pasteback import PhotoDelta
from ulixes_onnx.photos.decoding import DEFAULT_MAX_PIXELS, decode_photo, file_kind, read_photo
from ulixes_onnx.photos.encoding import (
    encode_photo,
    jpeg_region_round_trip,
    output_path,
    write_encoded,
    write_photo,
)
from ulixes_onnx.photos.photo import Photo

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
NO_FACE_ACTIONS = ("skip", "copy")


@dataclass(frozen=True)
class FileReport:
    """What happened to one input file (or to an entry left out, with `skipped` saying why)."""

    source: Path
    output: Path | None = None
    error: str | None = None
    faces: list[FaceReport] = field(default_factory=list)
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    skipped: str | None = None

    @property
    def status(self) -> str:
        if self.error is not None:
            return "error"
        if self.skipped is not None:
            return "skipped"
        if not self.faces:
            return "no face"
        # A face too small to cloak can still be recognised (dlib matches faces of 28-40 pixels), so
        # a photo with one is not protected: its own status, as nothing failed to work on it.
        cloaked = [face for face in self.faces if face.skipped is None]
        if not all(face.protected for face in cloaked):
            return "not protected"
        return "protected" if len(cloaked) == len(self.faces) else "face not cloaked"


@dataclass(frozen=True)
class PhotoFile:
    """A photo to cloak; `subfolder` is its folder relative to a folder given on the command line,
    mirrored under the output folder so that equal names in different folders never collide."""

    path: Path
    subfolder: Path = Path()


@dataclass(frozen=True)
class FoundInputs:
    """The photos to cloak, and every entry met on the way that is left out (a report each)."""

    photos: list[PhotoFile]
    skipped: list[FileReport]


def expand_inputs(arguments: Iterable[str], *, exclude_suffix: str | None = None) -> list[PhotoFile]:
    """The photos of `find_inputs`."""
    return find_inputs(arguments, exclude_suffix=exclude_suffix).photos


def find_inputs(arguments: Iterable[str], *, exclude_suffix: str | None = None) -> FoundInputs:
    """Files named directly, photos inside folders (recursively) and glob matches, in order, once.

    A file named directly is always taken (reading it decides). Inside folders and among glob matches,
    only regular files with a photo extension are taken; earlier outputs (stem ending with
    `exclude_suffix`), other files, symlinks to folders, broken symlinks, loops, FIFOs and devices are
    left out, each with a reason.
    """
    photos: dict[Path, PhotoFile] = {}
    skipped: dict[Path, FileReport] = {}

    def consider(candidate: Path, subfolder: Path) -> None:
        reason = _left_out(candidate, exclude_suffix)
        if reason is None:
            photos.setdefault(candidate, PhotoFile(candidate, subfolder))
        else:
            skipped.setdefault(candidate, FileReport(candidate, skipped=reason))

    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            for folder, names in _walk(path):
                for name in names:
                    consider(folder / name, folder.relative_to(path))
        elif glob.has_magic(argument) and not os.path.lexists(path):
            matches = sorted(glob.glob(argument, recursive=True))
            if not matches:
                skipped.setdefault(path, FileReport(path, skipped="the pattern matches nothing"))
            for match in matches:
                consider(Path(match), Path())
        else:
            photos.setdefault(path, PhotoFile(path))
    return FoundInputs(
        list(photos.values()), [report for key, report in skipped.items() if key not in photos]
    )


def _walk(root: Path) -> Iterator[tuple[Path, list[str]]]:
    """Every folder under `root` with its entries (files and links to folders), sorted; symlinked
    folders are listed as entries, never entered (they could loop or lead anywhere)."""
    for folder, folders, files in os.walk(root, followlinks=False):
        linked = [name for name in folders if os.path.islink(os.path.join(folder, name))]
        folders[:] = sorted(name for name in folders if name not in linked)
        yield Path(folder), sorted(files + linked)


def _left_out(candidate: Path, exclude_suffix: str | None) -> str | None:
    """Why a folder entry or glob match is not cloaked, or None to cloak it."""
    try:
        status = candidate.stat()
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symlink loop"
        return "broken symlink" if candidate.is_symlink() else f"cannot be read ({error.strerror})"
    if stat.S_ISDIR(status.st_mode):
        kind = "symlink to a folder" if candidate.is_symlink() else "folder"
        return f"{kind}: not entered"
    if not stat.S_ISREG(status.st_mode):
        return f"{file_kind(status.st_mode)}, not a regular file"
    if candidate.suffix.lower() not in PHOTO_SUFFIXES:
        kind = f"{candidate.suffix} files" if candidate.suffix else "files without an extension"
        return f"{kind} are not cloaked; photo extensions: {' '.join(PHOTO_SUFFIXES)}"
    if exclude_suffix and candidate.stem.endswith(exclude_suffix):
        return f"the name ends with {exclude_suffix}: taken for an earlier output; rename it to cloak it"
    return None


@dataclass(frozen=True)
class OutputOptions:
    """Where and how cloaked copies are written (see `cloak_files`). With `skip_existing`, a photo
    whose copy exists already is skipped (a resumed run), rather than an error."""

    output_dir: Path | None = None
    suffix: str = "_cloaked"
    overwrite: bool = False
    quality: int | None = None
    keep_exif: bool = False
    no_face: str = "skip"
    skip_existing: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class PlannedPhoto:
    """An input with where its copy goes, or why it will not be cloaked (`report`)."""

    source: PhotoFile
    destination: Path | None
    report: FileReport | None = None


def plan_outputs(sources: Sequence[PhotoFile], options: OutputOptions) -> list[PlannedPhoto]:
    """Each input's destination, decided before any work: raises `UsageError` if two inputs would be
    written to the same file or a copy would land on an input; an existing copy makes a report
    (an error, or skipped with `skip_existing`). Leaves no temporary file of an earlier, killed run
    beside a destination."""
    planned = []
    by_destination: dict[str, Path] = {}
    inputs = {os.path.abspath(source.path): source.path for source in sources}
    for source in sources:
        folder = None if options.output_dir is None else options.output_dir / source.subfolder
        try:
            destination = output_path(source.path, output_dir=folder, suffix=options.suffix)
        except ImageError as error:
            planned.append(PlannedPhoto(source, None, FileReport(source.path, error=str(error))))
            continue
        key = os.path.abspath(destination)
        if key in by_destination:
            raise UsageError(
                f"{by_destination[key]} and {source.path} would both be written to {destination}; "
                "rename one, or cloak their folders with --output-dir (which mirrors subfolders)"
            )
        by_destination[key] = source.path
        clash = inputs.get(key) or next((p for p in inputs.values() if same_file(p, destination)), None)
        if clash is not None:
            raise UsageError(
                f"the copy of {source.path} would be written over the input {clash}; "
                "choose another --suffix or --output-dir"
            )
        remove_stale_parts(destination)
        planned.append(PlannedPhoto(source, destination, _existing(source.path, destination, options)))
    return planned


def _existing(source: Path, destination: Path, options: OutputOptions) -> FileReport | None:
    if options.overwrite or not os.path.lexists(destination):
        return None
    if options.skip_existing:
        return FileReport(source, skipped=f"{destination} exists already (--skip-existing)")
    return FileReport(
        source,
        error=f"{destination}: already exists; use --skip-existing to resume, or --overwrite to replace it",
    )


# A batch holds at most this many photos and this many decoded pixels: enough faces to fill the
# loop's batches, without holding many large photos in memory at once.
BATCH_PHOTOS = 8
BATCH_PIXELS = 8_000_000


def cloak_files(
    cloaker: Cloaker,
    sources: Sequence[PhotoFile],
    options: OutputOptions = OutputOptions(),
    *,
    batch_photos: int = BATCH_PHOTOS,
    batch_pixels: int = BATCH_PIXELS,
) -> Iterator[FileReport]:
    """Cloak photo files, yielding one report per file in order; errors become `FileReport.error`
    (one line), never exceptions. Photos of more than `options.max_pixels` are refused unread (a guard
    against decompression bombs).

    Photos are cloaked in batches (`Cloaker.cloak_many`), and the next photo is decoded in a thread
    while the current batch is cloaked.
    """
    planned = plan_outputs(sources, options)
    with protect_inputs([source.path for source in sources]), ThreadPoolExecutor(max_workers=1) as reader:
        upcoming = iter(planned)
        prefetched = _read_next(reader, upcoming, options)
        batch: list[_Pending] = []
        while prefetched is not None:
            item = prefetched.result()
            prefetched = _read_next(reader, upcoming, options)
            if batch and (len(batch) >= batch_photos or _pixels([*batch, item]) > batch_pixels):
                yield from _cloak_batch(cloaker, batch, options)
                batch = []
            batch.append(item)
        if batch:
            yield from _cloak_batch(cloaker, batch, options)


def cloak_file(
    cloaker: Cloaker,
    source: PhotoFile,
    options: OutputOptions = OutputOptions(),
) -> FileReport:
    """Cloak one photo file (see `cloak_files`)."""
    return next(cloak_files(cloaker, [source], options))


@dataclass
class _Pending:
    """A photo read and waiting for its batch, or the error that stopped it; `encoded` keeps the
    latest cloak encoded as the output file (the cloak, then the bytes)."""

    source: Path
    destination: Path | None = None
    photo: Photo | None = None
    error: str | None = None
    seconds: float = 0.0
    encoded: tuple[PhotoDelta, bytes] | None = None
    report: FileReport | None = None


def _pixels(batch: list[_Pending]) -> int:
    return sum(pending.photo.height * pending.photo.width for pending in batch if pending.photo is not None)


def _read_next(
    reader: ThreadPoolExecutor, upcoming: Iterator[PlannedPhoto], options: OutputOptions
) -> Future[_Pending] | None:
    planned = next(upcoming, None)
    return None if planned is None else reader.submit(_read, planned, options)


def _read(planned: PlannedPhoto, options: OutputOptions) -> _Pending:
    source = planned.source.path
    if planned.report is not None:
        return _Pending(source, report=planned.report)
    started = time.perf_counter()
    with _as_file_error(source) as failure:
        photo = read_photo(source, max_pixels=options.max_pixels)
        return _Pending(source, planned.destination, photo, seconds=time.perf_counter() - started)
    return _Pending(source, error=failure.message, seconds=time.perf_counter() - started)


def _cloak_batch(cloaker: Cloaker, batch: list[_Pending], options: OutputOptions) -> Iterator[FileReport]:
    started = time.perf_counter()
    ready = [pending for pending in batch if pending.photo is not None]
    results = []
    with _as_file_error(ready[0].source if len(ready) == 1 else None) as failure:
        if ready:
            results = cloaker.cloak_many(
                [
                    PhotoPixels(
                        pending.photo.rgb8,
                        pending.photo.is_gray,
                        _saved_as(pending, options),
                        jpeg_region_round_trip(pending.photo, options.quality),
                    )
                    for pending in ready
                ]
            )
    if failure.message is not None:
        results = []
        for pending in ready:
            pending.error = failure.message
    # The batch's cloaking time is shared out evenly: its photos were cloaked together.
    share = (time.perf_counter() - started) / max(1, len(ready))
    outcomes = iter(results)
    for pending in batch:
        if pending.report is not None:
            yield pending.report
        elif pending.error is not None:
            yield FileReport(pending.source, error=pending.error, seconds=pending.seconds)
        else:
            yield _write(cloaker, pending, next(outcomes), options, pending.seconds + share)


def _saved_as(pending: _Pending, options: OutputOptions) -> Callable[[PhotoDelta], np.ndarray]:
    def decoded(delta: PhotoDelta) -> np.ndarray:
        data = encode_photo(pending.photo, delta, quality=options.quality, keep_exif=options.keep_exif)
        pending.encoded = (delta, data)
        return decode_photo(data, pending.destination).rgb8

    return decoded


def _write(
    cloaker: Cloaker, pending: _Pending, result: CloakResult, options: OutputOptions, seconds: float
) -> FileReport:
    started = time.perf_counter()
    photo, destination = pending.photo, pending.destination
    if not any(face.models for face in result.faces) and options.no_face == "skip":
        # Nothing was cloaked: a copy named as cloaked would only mislead.
        return FileReport(pending.source, faces=result.faces, notes=photo.notes, seconds=seconds)
    with _as_file_error(pending.source) as failure:
        destination.parent.mkdir(parents=True, exist_ok=True)
        if pending.encoded is not None and pending.encoded[0] is result.delta:
            # The last verification round encoded exactly this file already.
            write_encoded(photo, pending.encoded[1], destination, overwrite=options.overwrite)
        else:
            write_photo(
                photo,
                result.delta,
                destination,
                quality=options.quality,
                keep_exif=options.keep_exif,
                overwrite=options.overwrite,
            )
        faces = _measured_as_written(cloaker, pending, result, destination, options)
        seconds += time.perf_counter() - started
        return FileReport(pending.source, destination, None, faces, photo.notes, seconds)
    return FileReport(pending.source, error=failure.message, seconds=seconds + time.perf_counter() - started)


def _measured_as_written(
    cloaker: Cloaker, pending: _Pending, result: CloakResult, destination: Path, options: OutputOptions
) -> list[FaceReport]:
    """The faces measured on the file as written: what a recogniser will load.

    When the file holds the bytes the last round verified, the faces that round verified keep their
    measurement (the same bytes decode to the same pixels), and only faces that finished in earlier
    rounds, whose pixels the last encoding changed too, are measured again.
    """
    data = destination.read_bytes()
    if pending.encoded is None or pending.encoded[0] is not result.delta or data != pending.encoded[1]:
        return cloaker.remeasure(read_photo(destination, max_pixels=options.max_pixels).rgb8, result.faces)
    last_round = max(face.rounds for face in result.faces)
    earlier = [face for face in result.faces if face.models and face.rounds < last_round]
    if not earlier:
        return result.faces
    seen = decode_photo(data, destination, max_pixels=options.max_pixels).rgb8
    measured = {face.index: face for face in cloaker.remeasure(seen, earlier)}
    return [measured.get(face.index, face) for face in result.faces]


class _Failure:
    message: str | None = None


@contextlib.contextmanager
def _as_file_error(source: Path | None) -> Iterator[_Failure]:
    """Catch a file's error as a one-line message (user errors as they are, OS errors with the path)."""
    failure = _Failure()
    try:
        yield failure
    except UlixesError as error:
        failure.message = str(error)
    except OSError as error:
        failure.message = f"{error.filename or source}: {error.strerror or error}"
    except MemoryError:
        # A photo within the pixel limit that this machine cannot hold: the batch goes on without it.
        failure.message = (
            f"{source or 'a batch of photos'}: not enough memory to cloak; try --batch 1 or --max-pixels"
        )
