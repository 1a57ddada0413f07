"""Builders that turn a model's source files into the ONNX artifacts the store keeps.

A builder takes the model card and the paths of its source files (role -> path, as the card names them)
and returns the bytes of every artifact (artifact name -> bytes). Builders are pure: same source bytes,
same artifact bytes, so the sha256 in a card identifies what a build must produce.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ulixes_onnx.cards import ModelCard
from ulixes_onnx.errors import ModelError
from ulixes_onnx.zoo.dlib_format import DlibFormatError
from ulixes_onnx.zoo.dlib_shape_predictor import read_shape_predictor
from ulixes_onnx.zoo.recipes import RECIPES

Builder = Callable[[ModelCard, dict[str, Path]], dict[str, bytes]]
T = TypeVar("T")

# Bump when a builder's output changes for the same source: derived caches are keyed by it.
BUILDER_VERSION = 1


def _read_dlib_file(card: ModelCard, path: Path, what: str, read: Callable[[bytes], T]) -> T:
    try:
        return read(path.read_bytes())
    except DlibFormatError as error:
        raise ModelError(
            f"{path} is not a readable dlib {what} ({error}); reinstall its package: "
            f"pip install --force-reinstall {card.source.install_name}"
        ) from error


def _build_dlib_resnet(card: ModelCard, sources: dict[str, Path]) -> dict[str, bytes]:
    from ulixes_onnx.zoo.dlib_resnet import build_dlib_resnet

    model = _read_dlib_file(card, sources["weights"], "network", build_dlib_resnet)
    return {"model": model.SerializeToString()}


def _build_dlib_shape_predictor(card: ModelCard, sources: dict[str, Path]) -> dict[str, bytes]:
    predictor = _read_dlib_file(card, sources["predictor"], "shape predictor", read_shape_predictor)
    return {"predictor": predictor.to_npz()}


def _copy_files(card: ModelCard, sources: dict[str, Path]) -> dict[str, bytes]:
    return {role: path.read_bytes() for role, path in sources.items()}


def _convert(card: ModelCard, sources: dict[str, Path]) -> dict[str, bytes]:
    # Imported here: the conversion machinery (and its export toolchain) only matters when building.
    from ulixes_onnx.zoo.conversion import convert

    return {"model": convert(card, sources).model.SerializeToString()}


def _fold_onnx(card: ModelCard, sources: dict[str, Path]) -> dict[str, bytes]:
    from ulixes_onnx.zoo.onnx_source import convert_onnx

    return {"model": convert_onnx(card, sources).model.SerializeToString()}


BUILDERS: dict[str, Builder] = {
    "dlib-resnet": _build_dlib_resnet,
    "dlib-shape-predictor": _build_dlib_shape_predictor,
    "copy": _copy_files,
    "onnx-folded": _fold_onnx,
    **dict.fromkeys(RECIPES, _convert),
}


def builder_for(card: ModelCard) -> Builder:
    if card.builder not in BUILDERS:
        raise ModelError(f"model {card.name!r} names an unknown builder {card.builder!r}")
    return BUILDERS[card.builder]
