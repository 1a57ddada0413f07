"""Model cards: what each model is, where its weights come from and how to feed it.

One TOML file per model lives in the repository's `models/` folder (installed as `ulixes_onnx.model_cards`).
A card names the source (files inside a package, installed or fetched from PyPI or npm, or files the user
supplies), the builder that turns it into ONNX, the sha256 of every built artifact (one, or the few
builds known to be right), and for embedding models the input convention, the alignment template, the
embedding size, the distance metric and the threshold.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import PurePosixPath

from ulixes_onnx.errors import ModelError

_PYTHON_VERSION = re.compile(r"^3\.\d+$")


@dataclass(frozen=True)
class SourceSpec:
    """Where a model's weights come from.

    `package` is the import name of an installed data package and `files` maps a role to a path inside
    it; `distribution` is the name to `pip install`. `npm` instead names an npm package with its version
    ("@scope/name@1.2.3"), fetched with `npm pack`; `files` are then paths inside its tarball's package/
    folder. `sdist` names a PyPI source distribution ("name==1.2.3"), fetched with `pip download`;
    `files` are then paths inside its top folder. `wheel` names a PyPI wheel the same way, fetched as
    made for Python `python` ("3.7": a wheel whose package no Python of ours may install); `files`
    are then paths inside the wheel. A card names at most one of `package`, `npm`, `sdist` and
    `wheel`; with none it needs user-supplied files, whose expected names `files` gives. Every path in
    `files` is relative and stays inside its package.
    """

    files: dict[str, str]
    sha256: dict[str, str]
    package: str | None = None
    distribution: str | None = None
    npm: str | None = None
    sdist: str | None = None
    wheel: str | None = None
    python: str | None = None

    def __post_init__(self) -> None:
        kinds = [kind for kind in (self.package, self.npm, self.sdist, self.wheel) if kind is not None]
        if len(kinds) > 1:
            raise ValueError(f"a source is one package, npm package, sdist or wheel, not {len(kinds)}")
        if (self.wheel is None) != (self.python is None):
            raise ValueError("a wheel source names the Python version its wheel is made for, and only it")
        if self.python is not None and not (
            isinstance(self.python, str) and _PYTHON_VERSION.match(self.python)
        ):
            raise ValueError(f'the Python version is a quoted "3.7", not {self.python!r}')
        for name in self.files.values():
            path = PurePosixPath(name)
            if path.is_absolute() or ".." in path.parts:
                raise ValueError(f"{name!r} is not a path inside the package")

    @property
    def install_name(self) -> str | None:
        return self.distribution or self.package or self.npm or self.sdist or self.wheel

    @property
    def from_registry(self) -> bool:
        """Whether the weights come from a package (installed or fetched), not from the user."""
        return self.install_name is not None


@dataclass(frozen=True)
class ModelInput:
    """How canonical chips ([N,3,H,W] RGB in [-1, 1]) map onto the network's own input `tensor`.

    native = canonical * scale + offset per channel (in the native channel order), then the optional
    per-image prewhitening; `normalisation` describes what the ONNX graph itself does after that.
    """

    tensor: str
    size: tuple[int, int]
    layout: str
    channels: str
    scale: tuple[float, float, float]
    offset: tuple[float, float, float]
    prewhiten: bool
    normalisation: str
    alignment: str


@dataclass(frozen=True)
class EmbeddingSpec:
    size: int
    metric: str
    threshold: float


@dataclass(frozen=True)
class CloakDefaults:
    """Per-model cloaking defaults, in the model's distance units, chosen by measurement.

    `margin` is the triplet margin of the negative-example strategies, `away_target` the distance
    from the original at which `away` stops, `protect_distance` the distance from the original the
    saved copy must reach to count as protected (beyond the threshold by about the spread of a
    person's photos), `min_progress` the paper's t: an objective ends when the distance from the
    original grew by less than this in a step. `feature_layer` names an intermediate tensor of the
    model (a mid-level feature map) for the loop's feature-level objective; None: the model has none.
    """

    margin: float
    away_target: float
    protect_distance: float
    min_progress: float
    feature_layer: str | None = None


@dataclass(frozen=True)
class ModelCard:
    name: str
    kind: str
    description: str
    licence: str
    builder: str
    source: SourceSpec
    # Per artifact, the sha256 of every build known to be right: one, or one per export toolchain that
    # has been seen to write other bytes (each of them checked against the source model); empty for a
    # model built from the user's own file, where the store's manifest pins what it built.
    artifacts: dict[str, tuple[str, ...]]
    default: bool = False
    input: ModelInput | None = None
    embedding: EmbeddingSpec | None = None
    cloak: CloakDefaults | None = None
    notes: dict[str, str] = field(default_factory=dict)


_KINDS = ("embedding", "detector", "landmarks")
_METRICS = ("euclidean", "cosine")


def _known_builds(value: str | list[str]) -> tuple[str, ...]:
    """An artifact's known sha256 digests: a card gives one ("" for none) or a list."""
    digests = [value] if isinstance(value, str) else value
    if not isinstance(digests, list) or not all(isinstance(digest, str) for digest in digests):
        raise TypeError(f"an artifact's sha256 must be a string or a list of strings, not {value!r}")
    return tuple(digest for digest in digests if digest)


def parse_card(text: str, origin: str) -> ModelCard:
    try:
        raw = tomllib.loads(text)
        source = raw["source"]
        card = ModelCard(
            name=raw["name"],
            kind=raw["kind"],
            description=raw["description"],
            licence=raw["licence"],
            builder=raw["builder"],
            default=bool(raw.get("default", False)),
            source=SourceSpec(
                files=dict(source["files"]),
                sha256=dict(source.get("sha256", {})),
                package=source.get("package"),
                distribution=source.get("distribution"),
                npm=source.get("npm"),
                sdist=source.get("sdist"),
                wheel=source.get("wheel"),
                python=source.get("python"),
            ),
            artifacts={name: _known_builds(value) for name, value in raw["artifacts"].items()},
            input=_parse_input(raw["input"]) if "input" in raw else None,
            embedding=EmbeddingSpec(**raw["embedding"]) if "embedding" in raw else None,
            cloak=CloakDefaults(**raw["cloak"]) if "cloak" in raw else None,
            notes=dict(raw.get("notes", {})),
        )
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as error:
        raise ModelError(f"model card {origin} is malformed ({error!r})") from error
    if card.kind not in _KINDS:
        raise ModelError(f"model card {origin}: kind {card.kind!r} is not one of {_KINDS}")
    if card.kind == "embedding" and (card.input is None or card.embedding is None or card.cloak is None):
        raise ModelError(f"model card {origin}: an embedding model needs [input], [embedding] and [cloak]")
    if card.embedding and card.embedding.metric not in _METRICS:
        raise ModelError(f"model card {origin}: metric must be one of {_METRICS}")
    return card


def _parse_input(raw: dict) -> ModelInput:
    return ModelInput(
        tensor=raw["tensor"],
        size=(int(raw["size"][0]), int(raw["size"][1])),
        layout=raw["layout"],
        channels=raw["channels"],
        scale=tuple(float(v) for v in raw["scale"]),
        offset=tuple(float(v) for v in raw["offset"]),
        prewhiten=bool(raw["prewhiten"]),
        normalisation=raw["normalisation"],
        alignment=raw["alignment"],
    )


@cache
def all_cards() -> dict[str, ModelCard]:
    """Every model card that ships with the package, by name."""
    cards = {}
    for entry in sorted(resources.files("ulixes_onnx.model_cards").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            card = parse_card(entry.read_text(encoding="utf-8"), entry.name)
            cards[card.name] = card
    return cards


def get_card(name: str) -> ModelCard:
    """The card of model `name`; an unknown name is a `ModelError` that lists the known ones."""
    cards = all_cards()
    if name not in cards:
        known = ", ".join(sorted(cards))
        raise ModelError(f"unknown model {name!r}; known models: {known}")
    return cards[name]
