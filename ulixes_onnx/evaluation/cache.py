"""Cloaked copies of the dataset's photos, made once and kept on disk.

A cloaked copy is exactly what `ulixes-onnx cloak` would write (it is written by `files.cloak_file`),
so the evaluation measures the files users get. Copies are keyed by the photo's content hash and by
everything that decides the cloak: the resolved cloaking parameters of every model, the models' and
the detector's sha256, the pool of negatives, the package version and the source of the cloaking
code. Each copy is published atomically and its record (a small JSON file, written last) marks it
complete, so an interrupted evaluation resumes where it stopped and other runs with the same
parameters reuse the copies.

Layout: `<cache>/<config key>/config.json` describes the parameters; `<photo sha256>.json` is a
photo's record and `<photo sha256><ext>` its cloaked copy.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from ulixes_onnx import __version__
from ulixes_onnx.atomic import write_atomically
from ulixes_onnx.cloaking.files import OutputOptions, PhotoFile, cloak_file
from ulixes_onnx.cloaking.pipeline import Cloaker
from ulixes_onnx.cloaking.settings import CloakSettings
from ulixes_onnx.evaluation.metrics import psnr
from ulixes_onnx.photos.decoding import read_photo
from ulixes_onnx.store import ModelStore, sha256_of

# Bumped when the record format changes, so older records are made again instead of misread.
RECORD_VERSION = 2
# The code that decides what a cloaked file contains (files and subpackages of ulixes_onnx): editing any
# of it, even within one release, gives new cache keys instead of stale copies.
CLOAK_CODE = ("cloaking", "photos", "face_model.py", "faces", "engine")


@dataclass(frozen=True)
class CloakedFace:
    """One face of a cloaked copy: where it is and what the cloak achieved, as `cloak` reports it."""

    box: tuple[float, float, float, float]
    ssimulacra2: float
    dssim: float
    psnr: float
    protected: bool
    skipped: str | None
    rounds: int
    distances: dict[str, float]


@dataclass(frozen=True)
class CloakedPhoto:
    """The cloaked copy of one dataset photo, or why there is none.

    `status` is `cloak_file`'s: "protected", "not protected", "no face" (nothing written) or "error".
    """

    photo: str
    status: str
    path: Path | None
    faces: list[CloakedFace] = field(default_factory=list)
    psnr: float | None = None
    seconds: float = 0.0
    error: str | None = None


def pool_digest(pool: dict[str, np.ndarray] | None) -> str | None:
    """The sha256 of a pool of negatives (None without a pool): a different pool makes different cloaks."""
    if not pool:
        return None
    digest = hashlib.sha256()
    for name in sorted(pool):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(pool[name], np.float32).tobytes())
    return digest.hexdigest()


def code_without_prose(source: str) -> str:
    """The code of a module without its comments and docstrings (its AST with docstrings removed):
    rewording them changes no cloak, so it must not make the cache re-cloak a dataset."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False)


@cache
def cloak_code_fingerprint() -> str:
    """A digest of the code (not the comments or docstrings) of `CLOAK_CODE`."""
    digest = hashlib.sha256()
    package = resources.files("ulixes_onnx")
    for name in CLOAK_CODE:
        entry = package / name
        sources = sorted(entry.iterdir(), key=lambda item: item.name) if entry.is_dir() else [entry]
        for source in sources:
            if source.name.endswith(".py"):
                digest.update(f"{name}/{source.name}".encode())
                digest.update(code_without_prose(source.read_text()).encode())
    return digest.hexdigest()


def config_description(config: CloakSettings, cloaker: Cloaker, store: ModelStore, pool: str | None) -> dict:
    """Everything that decides a cloak, with the card defaults resolved: the cache key's content."""
    return {
        "ulixes_onnx": __version__,
        "code": cloak_code_fingerprint(),
        "models": {model.name: model.built.sha256 for model in cloaker.models},
        "detector": store.get("mtcnn").sha256,
        "settings": asdict(config),
        "loop": {name: asdict(settings) for name, settings in cloaker.loop.items()},
        "pool": pool,
        "record_version": RECORD_VERSION,
    }


class CloakCache:
    """Cloaked copies of photos under one cloak configuration (see the module docstring)."""

    def __init__(self, root: Path, cloaker: Cloaker, description: dict) -> None:
        self.cloaker = cloaker
        self.description = description
        key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()
        self.directory = root / key[:24]
        self.directory.mkdir(parents=True, exist_ok=True)
        config_file = self.directory / "config.json"
        if not config_file.exists():
            write_atomically(json.dumps(description, indent=2, sort_keys=True).encode(), config_file)

    def get(self, photo: str, source: Path) -> CloakedPhoto:
        """The cloaked copy of `source` (named `photo` in reports), cloaking it on first use."""
        content_hash = sha256_of(source)
        record_path = self._record_path(content_hash)
        found = self._load(record_path, photo)
        if found is not None:
            return found
        # A private staging folder: runs sharing the cache never write the same staging file.
        staging = Path(tempfile.mkdtemp(dir=self.directory, prefix=".staging-"))
        try:
            report = cloak_file(
                self.cloaker, PhotoFile(source), OutputOptions(output_dir=staging, suffix="", overwrite=True)
            )
            output = None
            if report.output is not None:
                output = self.directory / f"{content_hash}{source.suffix.lower()}"
                os.replace(report.output, output)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        photo_psnr = None
        faces = []
        if output is not None:
            original = read_photo(source).rgb
            cloaked = read_photo(output).rgb
            photo_psnr = psnr(original, cloaked)
            faces = [
                CloakedFace(
                    box=tuple(round(float(v), 2) for v in face.box),
                    ssimulacra2=float(face.ssimulacra2),
                    dssim=float(face.dssim),
                    psnr=psnr(*(_box_region(image, face.box) for image in (original, cloaked))),
                    protected=face.protected,
                    skipped=face.skipped,
                    rounds=face.rounds,
                    distances={name: float(outcome.distance) for name, outcome in face.models.items()},
                )
                for face in report.faces
            ]
        record = {
            "record_version": RECORD_VERSION,
            "status": report.status,
            "file": output.name if output else None,
            "psnr": photo_psnr,
            "seconds": report.seconds,
            "faces": [asdict(face) for face in faces],
        }
        # An error (an unreadable photo) is not recorded: the next run tries the photo again.
        if report.error is None:
            write_atomically(json.dumps(record, indent=2).encode(), record_path)
        return CloakedPhoto(photo, report.status, output, faces, photo_psnr, report.seconds, report.error)

    def _record_path(self, content_hash: str) -> Path:
        return self.directory / f"{content_hash}.json"

    def _load(self, record_path: Path, photo: str) -> CloakedPhoto | None:
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            return None
        if record.get("record_version") != RECORD_VERSION:
            return None
        output = self.directory / record["file"] if record["file"] else None
        if output is not None and not output.is_file():
            return None
        faces = [CloakedFace(**{**face, "box": tuple(face["box"])}) for face in record["faces"]]
        return CloakedPhoto(photo, record["status"], output, faces, record["psnr"], record["seconds"])


def _box_region(image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The pixels inside a face's detection box."""
    x0, y0, x1, y1 = box
    return image[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))]
