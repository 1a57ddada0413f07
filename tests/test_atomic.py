"""Atomic writes publish whole files and never clobber one unless told to."""

from __future__ import annotations

from pathlib import Path

import pytest

from ulixes_onnx.atomic import write_atomically


def test_replaces_whole_files_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    write_atomically(b"first", target)
    write_atomically(b"second", target)
    assert target.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_refuses_to_replace_without_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    target.write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        write_atomically(b"new", target, overwrite=False)
    assert target.read_bytes() == b"keep"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_applies_the_requested_mode(tmp_path: Path) -> None:
    target = tmp_path / "private.bin"
    write_atomically(b"x", target, mode=0o600)
    assert target.stat().st_mode & 0o777 == 0o600


def test_missing_folder_is_an_error_and_nothing_is_left(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomically(b"x", tmp_path / "missing" / "file.bin")
    assert list(tmp_path.iterdir()) == []
