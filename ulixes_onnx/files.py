"""Cloaking photo files: find the inputs, cloak each file, write the copy, verify the written file.

The original is never modified. The copy is written atomically next to it (or in an output folder)
as `<stem><suffix><ext>`, never over an existing file unless asked. During cloaking, every candidate is
encoded exactly as it will be written and decoded again, so the closed loop judges what a recogniser
will see in the saved file; after writing, the file itself is read back and measured once more.
"""

from __future__ import annotations

import glob
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ulixes_onnx.errors import ImageError, UlixesError
from ulixes_onnx.imageio import decode_photo, encode_photo, output_path, read_photo, write_photo
from ulixes_onnx.pipeline import Cloaker, FaceReport

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


def cloak_file(
    cloaker: Cloaker,
    source: InputPhoto,
    *,
    output_dir: Path | None = None,
    suffix: str = "_cloaked",
    overwrite: bool = False,
    quality: int | None = None,
    keep_exif: bool = False,
    no_face: str = "skip",
) -> FileReport:
    """Cloak one photo file; errors become `FileReport.error` (one line), never exceptions."""
    started = time.perf_counter()
    folder = None if output_dir is None else output_dir / source.subfolder
    source = source.path
    try:
        destination = output_path(source, output_dir=folder, suffix=suffix)
        if destination.exists() and not overwrite:
            raise ImageError(f"{destination}: already exists; use --overwrite to replace it")
        photo = read_photo(source)

        def as_saved(rgb: np.ndarray) -> np.ndarray:
            return decode_photo(
                encode_photo(photo, rgb, quality=quality, keep_exif=keep_exif), destination
            ).rgb

        result = cloaker.cloak(photo.rgb, gray=photo.is_gray, encode=as_saved)
        if not result.faces and no_face == "skip":
            return FileReport(source, notes=photo.notes, seconds=time.perf_counter() - started)
        destination.parent.mkdir(parents=True, exist_ok=True)
        write_photo(
            photo, result.image, destination, quality=quality, keep_exif=keep_exif, overwrite=overwrite
        )
        # Measured once more on the file as written: what a recogniser will load.
        faces = cloaker.remeasure(read_photo(destination).rgb, result.faces)
    except UlixesError as error:
        return FileReport(source, error=str(error), seconds=time.perf_counter() - started)
    except OSError as error:
        message = f"{error.filename or source}: {error.strerror or error}"
        return FileReport(source, error=message, seconds=time.perf_counter() - started)
    return FileReport(source, destination, None, faces, photo.notes, time.perf_counter() - started)
