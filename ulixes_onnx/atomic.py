"""Atomic file writes: readers see the old file or the complete new one, never a partial write.

Every file the tool writes (cloaked photos, reports, model caches) goes through `write_atomically`,
which also refuses to write over any file registered with `protect_inputs`: an input is never replaced,
whatever path, link or `--overwrite` leads to it.

The temporary file is `.<name>.<pid>.<random>.part` beside the destination. It is removed whatever
fails in the writing process; a process killed outright (SIGKILL, power loss) cannot remove it, so every
later write to the same destination first removes the temporary files of writers that are no longer
running (`remove_stale_parts`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

# The longest file name most file systems allow (ext4, XFS, btrfs, APFS, NTFS in UTF-16 units).
NAME_MAX_BYTES = 255
_PART_SUFFIX = ".part"
_PROTECTED: set[tuple[int, int]] = set()


def _read_umask() -> int:
    # os.umask can only be read by setting it: do it once, at import, before any worker threads.
    mask = os.umask(0)
    os.umask(mask)
    return mask


DEFAULT_MODE = 0o666 & ~_read_umask()


class ProtectedFileError(FileExistsError):
    """The destination is one of the inputs (or a link to one): it is never written over."""


@contextlib.contextmanager
def protect_inputs(paths: Iterable[Path]) -> Iterator[None]:
    """While the context is open, `write_atomically` refuses every destination that is one of
    `paths` (compared by device and inode, so links and other spellings of the path are caught)."""
    added = set()
    for path in paths:
        with contextlib.suppress(OSError):
            identity = _identity(path.stat())
            if identity not in _PROTECTED:
                added.add(identity)
    _PROTECTED.update(added)
    try:
        yield
    finally:
        _PROTECTED.difference_update(added)


def is_protected(path: Path) -> bool:
    """True if `path` exists and is a file registered with `protect_inputs`."""
    try:
        return _identity(path.stat()) in _PROTECTED
    except OSError:
        return False


def same_file(first: Path, second: Path) -> bool:
    """True if both paths name the same file: the same inode when both exist, else the same resolved
    path. Never raises (a symlink loop simply compares unequal to other paths)."""
    try:
        return os.path.samefile(first, second)
    except OSError:
        return os.path.realpath(first) == os.path.realpath(second)


def write_atomically(
    data: bytes, destination: Path, *, overwrite: bool = True, mode: int = DEFAULT_MODE
) -> None:
    """Write `data` to a temporary file beside `destination`, fsync it, then publish it.

    Without `overwrite`, an existing destination (even one that appears while writing) raises
    `FileExistsError` and is left alone. A protected input raises `ProtectedFileError` even with
    `overwrite`. The temporary file never survives, whatever fails.
    """
    destination = Path(destination)
    if is_protected(destination):
        raise ProtectedFileError(errno.EEXIST, "refusing to write over an input file", str(destination))
    remove_stale_parts(destination)
    handle, temporary = _create_temporary(destination)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        if is_protected(destination):  # it may have been linked to an input meanwhile
            raise ProtectedFileError(errno.EEXIST, "refusing to write over an input file", str(destination))
        if overwrite:
            os.replace(temporary, destination)
        else:
            _publish_without_replacing(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


def temporary_prefix(destination: Path) -> str:
    """`.<name>.` with the name cut (at a character boundary) so the whole temporary name fits in
    `NAME_MAX_BYTES`; a long destination name would otherwise make an unwritable temporary name."""
    room = NAME_MAX_BYTES - len(f"..{2**22}.{'0' * 8}{_PART_SUFFIX}")
    name = destination.name.encode("utf-8", "surrogateescape")[:room]
    return "." + name.decode("utf-8", "ignore") + "."


def remove_stale_parts(destination: Path) -> list[Path]:
    """Remove the temporary files left beside `destination` by writers that are no longer running;
    return them. Files of running writers, and files that are not ours, are left alone."""
    pattern = re.compile(
        re.escape(temporary_prefix(destination)) + r"(\d+)\.[0-9a-f]{8}" + re.escape(_PART_SUFFIX)
    )
    removed = []
    try:
        entries = list(os.scandir(destination.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and not _running(int(match.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _create_temporary(destination: Path) -> tuple[int, Path]:
    prefix = temporary_prefix(destination)
    while True:
        candidate = destination.parent / f"{prefix}{os.getpid()}.{secrets.token_hex(4)}{_PART_SUFFIX}"
        try:
            return os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), candidate
        except FileExistsError:
            continue


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, but belongs to someone else
    return True


def _identity(status: os.stat_result) -> tuple[int, int]:
    return status.st_dev, status.st_ino


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
