"""Taking named files out of a package archive."""

from __future__ import annotations

import io
import tarfile
import zipfile
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


def test_a_wheel_is_read_as_a_zip_archive_without_a_top_folder(tmp_path: Path) -> None:
    wheel = tmp_path / "p-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pkg/w.bin", b"w")
        archive.writestr("pkg/other.bin", b"o")
    extract_files(wheel, "", ["pkg/w.bin"], tmp_path / "cache", "test wheel")
    assert (tmp_path / "cache/pkg/w.bin").read_bytes() == b"w"
    assert not (tmp_path / "cache/pkg/other.bin").exists()


def test_the_one_top_folder_is_found_when_not_given(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "p.tgz", {"p-1.0/a.bin": b"a", "p-1.0/b.bin": b"b"})
    extract_files(archive, None, ["a.bin"], tmp_path / "cache", "test sdist")
    assert (tmp_path / "cache/a.bin").read_bytes() == b"a"


@pytest.mark.parametrize("name", ["p.tgz", "p-1.0-py3-none-any.whl"])
def test_a_damaged_archive_is_a_model_error(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(ModelError, match=r"the test package is damaged \(.+\); try again") as raised:
        extract_files(tmp_path / name, "root", ["a.bin"], tmp_path / "cache", "test package")
    assert "\n" not in str(raised.value)
