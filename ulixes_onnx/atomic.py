"""Atomic file writes: readers see the old file or the complete new one, never a partial write."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _read_umask() -> int:
    # os.umask can only be read by setting it: do it once, at import, before any worker threads.
    mask = os.umask(0)
    os.umask(mask)
    return mask


DEFAULT_MODE = 0o666 & ~_read_umask()


def write_atomically(
    data: bytes, destination: Path, *, overwrite: bool = True, mode: int = DEFAULT_MODE
) -> None:
    """Write `data` to a temporary file beside `destination`, fsync it, then publish it.

    Without `overwrite`, an existing destination (even one that appears while writing) raises
    `FileExistsError` and is left alone. The temporary file never survives, whatever fails.
    """
    handle, temporary_name = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
    )
    temporary = Path(temporary_name)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        if overwrite:
            os.replace(temporary, destination)
        else:
            _publish_without_replacing(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


def _publish_without_replacing(temporary: Path, destination: Path) -> None:
    # A hard link fails if the destination appeared meanwhile, unlike a rename, which would replace it.
    try:
        os.link(temporary, destination)
    except FileExistsError:
        raise
    except OSError:
        # File systems without hard links (FAT, exFAT, some network shares): check, then rename.
        if destination.exists():
            raise FileExistsError(destination) from None
        os.replace(temporary, destination)
