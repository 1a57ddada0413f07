"""Cloaking photo files: find the inputs, cloak each file, write the copy, verify the written file.

The original is never modified. The copy is written atomically next to it (or in an output folder)
as `<stem><suffix><ext>`, never over an existing file unless asked. During cloaking, every candidate is
encoded exactly as it will be written and decoded again, so the closed loop judges what a recogniser
will see in the saved file; after writing, the file itself is read back and measured once more.
"""

from __future__ import annotations

import contextlib
import glob
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ulixes_onnx.errors import ImageError, UlixesError
from ulixes_onnx.faces.pasteback import PhotoDelta
from ulixes_onnx.imageio import (
    DEFAULT_MAX_PIXELS,
    Photo,
    decode_photo,
    encode_photo,
    output_path,
    read_photo,
    write_encoded,
    write_photo,
)
from ulixes_onnx.pipeline import Cloaker, CloakResult, FaceReport, PhotoInput

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
NO_FACE_ACTIONS = ("skip", "copy")


@dataclass(frozen=True)
class FileReport:
    """What happened to one input file."""

    source: Path
    output: Path | None = None
    error: str | None = None
    faces: list[FaceReport] = field(default_factory=list)
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def status(self) -> str:
        if self.error is not None:
            return "error"
        if not self.faces:
            return "no face"
        # Faces too small to cloak are listed in the report but do not count: at that size (under
        # about 45 pixels) they are too small for a recogniser to match reliably as well.
        cloaked = [face for face in self.faces if face.skipped is None]
        return "protected" if all(face.protected for face in cloaked) else "not protected"


@dataclass(frozen=True)
class InputPhoto:
    """A photo to cloak; `subfolder` is its folder relative to a folder given on the command line,
    mirrored under the output folder so that equal names in different folders never collide."""

    path: Path
    subfolder: Path = Path()


def expand_inputs(arguments: Iterable[str], *, exclude_suffix: str | None = None) -> list[InputPhoto]:
    """Files named directly, photos inside folders (recursively) and glob matches, in order, once.

    Photos in folders whose stem already ends with `exclude_suffix` (earlier outputs) are left out.
    """
    found: dict[Path, InputPhoto] = {}
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            for candidate in sorted(path.rglob("*")):
                if (
                    candidate.is_file()
                    and candidate.suffix.lower() in PHOTO_SUFFIXES
                    and not (exclude_suffix and candidate.stem.endswith(exclude_suffix))
                ):
                    found.setdefault(candidate, InputPhoto(candidate, candidate.parent.relative_to(path)))
        elif glob.has_magic(argument) and not path.exists():
            for match in sorted(glob.glob(argument, recursive=True)):
                if Path(match).is_file():
                    found.setdefault(Path(match), InputPhoto(Path(match)))
        else:
            found.setdefault(path, InputPhoto(path))
    return list(found.values())


@dataclass(frozen=True)
class OutputOptions:
    """Where and how cloaked copies are written (see `cloak_files`)."""

    output_dir: Path | None = None
    suffix: str = "_cloaked"
    overwrite: bool = False
    quality: int | None = None
    keep_exif: bool = False
    no_face: str = "skip"


# A batch holds at most this many photos and this many decoded pixels: enough faces to fill the
# loop's batches, without holding many large photos in memory at once.
BATCH_PHOTOS = 8
BATCH_PIXELS = 8_000_000


def cloak_files(
    cloaker: Cloaker,
    sources: Sequence[InputPhoto],
    options: OutputOptions = OutputOptions(),
    *,
    batch_photos: int = BATCH_PHOTOS,
    batch_pixels: int = BATCH_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[FileReport]:
    """Cloak photo files, yielding one report per file in order; errors become `FileReport.error`
    (one line), never exceptions. Photos of more than `max_pixels` are refused unread (a guard against
    decompression bombs).

    Photos are cloaked in batches (`Cloaker.cloak_many`), and the next photo is decoded in a thread
    while the current batch is cloaked.
    """
    with ThreadPoolExecutor(max_workers=1) as reader:
        upcoming = iter(sources)
        prefetched = _read_next(reader, upcoming, options, max_pixels)
        batch: list[_Pending] = []
        while prefetched is not None:
            item = prefetched.result()
            prefetched = _read_next(reader, upcoming, options, max_pixels)
            if batch and (len(batch) >= batch_photos or _pixels([*batch, item]) > batch_pixels):
                yield from _cloak_batch(cloaker, batch, options)
                batch = []
            batch.append(item)
        if batch:
            yield from _cloak_batch(cloaker, batch, options)


def cloak_file(
    cloaker: Cloaker,
    source: InputPhoto,
    options: OutputOptions = OutputOptions(),
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> FileReport:
    """Cloak one photo file (see `cloak_files`)."""
    return next(cloak_files(cloaker, [source], options, max_pixels=max_pixels))


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


def _pixels(batch: list[_Pending]) -> int:
    return sum(pending.photo.height * pending.photo.width for pending in batch if pending.photo is not None)


def _read_next(
    reader: ThreadPoolExecutor, upcoming: Iterator[InputPhoto], options: OutputOptions, max_pixels: int
) -> Future[_Pending] | None:
    source = next(upcoming, None)
    return None if source is None else reader.submit(_read, source, options, max_pixels)


def _read(source: InputPhoto, options: OutputOptions, max_pixels: int) -> _Pending:
    started = time.perf_counter()
    folder = None if options.output_dir is None else options.output_dir / source.subfolder
    with _as_file_error(source.path) as failure:
        destination = output_path(source.path, output_dir=folder, suffix=options.suffix)
        if destination.exists() and not options.overwrite:
            raise ImageError(f"{destination}: already exists; use --overwrite to replace it")
        photo = read_photo(source.path, max_pixels=max_pixels)
        return _Pending(source.path, destination, photo, seconds=time.perf_counter() - started)
    return _Pending(source.path, error=failure.message, seconds=time.perf_counter() - started)


def _cloak_batch(cloaker: Cloaker, batch: list[_Pending], options: OutputOptions) -> Iterator[FileReport]:
    started = time.perf_counter()
    ready = [pending for pending in batch if pending.photo is not None]
    with _as_file_error(ready[0].source if len(ready) == 1 else None) as failure:
        results = cloaker.cloak_many(
            [
                PhotoInput(pending.photo.rgb8, pending.photo.is_gray, _saved_as(pending, options))
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
        if pending.error is not None:
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
    if not result.faces and options.no_face == "skip":
        return FileReport(pending.source, notes=photo.notes, seconds=seconds)
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
        # Measured once more on the file as written: what a recogniser will load.
        faces = cloaker.remeasure(read_photo(destination).rgb8, result.faces)
        seconds += time.perf_counter() - started
        return FileReport(pending.source, destination, None, faces, photo.notes, seconds)
    return FileReport(pending.source, error=failure.message, seconds=seconds + time.perf_counter() - started)


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
