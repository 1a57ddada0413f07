"""Atomic writes publish whole files and never clobber one unless told to."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ulixes_onnx.atomic import (
    NAME_MAX_BYTES,
    ProtectedFileError,
    protect_inputs,
    temporary_prefix,
    write_atomically,
)


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


def test_inputs_are_never_written_over_even_through_links(tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"original")
    link = tmp_path / "link.jpg"
    link.symlink_to(photo)
    with protect_inputs([photo]):
        for destination in (photo, link):
            with pytest.raises(ProtectedFileError):
                write_atomically(b"report", destination, overwrite=True)
    assert photo.read_bytes() == b"original"
    write_atomically(b"now allowed", tmp_path / "other.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.jpg", "other.jpg", "photo.jpg"]


def test_a_long_name_gets_a_temporary_name_that_fits(tmp_path: Path) -> None:
    target = tmp_path / ("é" * 120 + ".jpg")  # 244 bytes
    write_atomically(b"x", target)
    assert target.read_bytes() == b"x"
    assert len(temporary_prefix(target).encode()) < NAME_MAX_BYTES - 20


def test_stale_parts_of_dead_writers_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    target = tmp_path / "out.jpg"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{temporary_prefix(target)}{dead.pid}.0badf00d.part"
    live = tmp_path / f"{temporary_prefix(target)}{os.getppid()}.0badf00d.part"
    foreign = tmp_path / ".out.jpg.notours.part"
    for path in (stale, live, foreign):
        path.write_bytes(b"partial")
    write_atomically(b"x", target)
    assert not stale.exists() and live.exists() and foreign.exists()


def test_a_full_disk_leaves_neither_file_nor_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def full(descriptor: int) -> None:
        del descriptor
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(b"x" * 100_000, tmp_path / "report.json")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert list(tmp_path.iterdir()) == []
