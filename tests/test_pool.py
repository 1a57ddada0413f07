"""Pools of other people's faces: building, saving and loading them, and the `pool` command."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from tests.test_cli import run_cli
from ulixes_onnx.cloaking.pool import PoolError, build_pool, load_pool, save_pool
from ulixes_onnx.cloaking.settings import DEFAULT_MODELS
from ulixes_onnx.face_model import FaceModel
from ulixes_onnx.faces import detector_from_store
from ulixes_onnx.store import ModelStore


def fake_model(name: str, sha256: str) -> SimpleNamespace:
    """Just what saving and loading a pool read of a model: its name and its weights' sha256."""
    return SimpleNamespace(name=name, built=SimpleNamespace(sha256={"model": sha256}))


@pytest.fixture(scope="module")
def dlib_model(store: ModelStore) -> FaceModel:
    return FaceModel("dlib-resnet", store, threads=2)


@pytest.fixture
def astronaut_file(tmp_path: Path, astronaut: np.ndarray) -> Path:
    path = tmp_path / "people" / "astronaut.png"
    path.parent.mkdir()
    cv2.imwrite(str(path), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    return path


def test_a_built_pool_holds_each_face_once_per_model_and_survives_a_round_trip(
    store: ModelStore, dlib_model: FaceModel, astronaut_file: Path, tmp_path: Path
) -> None:
    pool = build_pool([astronaut_file], [dlib_model], detector_from_store(store))
    assert pool["dlib-resnet"].shape == (1, 128)
    saved = tmp_path / "pool.npz"
    save_pool(pool, [dlib_model], saved)
    np.testing.assert_allclose(load_pool(saved, [dlib_model])["dlib-resnet"], pool["dlib-resnet"], atol=1e-6)


def test_a_pool_without_faces_is_refused(store: ModelStore, dlib_model: FaceModel, tmp_path: Path) -> None:
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    with pytest.raises(PoolError, match="no face was found in the pool photos"):
        build_pool([blank], [dlib_model], detector_from_store(store))


def test_a_pool_is_refused_for_a_model_it_was_not_built_with(tmp_path: Path) -> None:
    path = tmp_path / "pool.npz"
    save_pool({"a": np.zeros((2, 4))}, [fake_model("a", "1" * 64)], path)
    with pytest.raises(PoolError, match="has no embeddings for b; build the pool with that model"):
        load_pool(path, [fake_model("b", "1" * 64)])


def test_a_pool_is_refused_for_other_weights_of_the_same_model(tmp_path: Path) -> None:
    path = tmp_path / "pool.npz"
    save_pool({"a": np.zeros((2, 4))}, [fake_model("a", "1" * 64)], path)
    with pytest.raises(PoolError, match="was built with other a weights"):
        load_pool(path, [fake_model("a", "2" * 64)])


def test_an_unreadable_pool_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "pool.npz"
    path.write_bytes(b"not a pool")
    with pytest.raises(PoolError, match="not a readable pool file"):
        load_pool(path, [fake_model("a", "1" * 64)])


def test_pool_command_writes_the_faces_it_found_and_skips_unreadable_photos(
    astronaut_file: Path, tmp_path: Path, store: ModelStore
) -> None:
    (astronaut_file.parent / "notes.jpg").write_text("not a photo")
    pool_file = tmp_path / "others.npz"
    made = run_cli("pool", str(astronaut_file.parent), "--out", str(pool_file), models_dir=store.root)
    assert made.returncode == 0, made.stderr
    # (a store whose graphs are not yet made for this machine also says so on stderr)
    skipped = [line for line in made.stderr.splitlines() if line.startswith("skipped: ")]
    unreadable = astronaut_file.parent / "notes.jpg"
    assert len(skipped) == 1 and skipped[0].startswith(f"skipped: {unreadable}: not a photo")
    with np.load(pool_file) as saved:
        count = len(saved["dlib-resnet"])
    assert count == 1
    assert made.stdout.strip() == f"{pool_file}: 1 faces from 1 photos, for {', '.join(DEFAULT_MODELS)}"


def test_pool_command_replaces_a_pool_only_with_overwrite(
    astronaut_file: Path, tmp_path: Path, store: ModelStore
) -> None:
    pool_file = tmp_path / "others.npz"
    pool_file.write_bytes(b"kept")
    refused = run_cli("pool", str(astronaut_file), "--out", str(pool_file), models_dir=store.root)
    assert refused.returncode == 2 and "exists already; remove it or use --overwrite" in refused.stderr
    assert pool_file.read_bytes() == b"kept"
    replaced = run_cli(
        "pool", str(astronaut_file), "--out", str(pool_file), "--overwrite", models_dir=store.root
    )
    assert replaced.returncode == 0, replaced.stderr
    with np.load(pool_file) as saved:
        assert saved["dlib-resnet"].shape == (1, 128)


def test_cloak_uses_a_pool_file_made_by_the_pool_command(
    astronaut_file: Path, faces_dev: Path, tmp_path: Path, store: ModelStore
) -> None:
    pool_file = tmp_path / "others.npz"
    made = run_cli("pool", str(faces_dev / "Obama"), "--out", str(pool_file), models_dir=store.root)
    assert made.returncode == 0, made.stderr
    report = tmp_path / "report.json"
    cloaked = run_cli(
        "cloak", str(astronaut_file), "--strategy", "farthest", "--pool", str(pool_file),
        "--json", str(report), models_dir=store.root,
    )  # fmt: skip
    assert cloaked.returncode in (0, 9), cloaked.stderr
    (face,) = json.loads(report.read_text())["faces"]
    assert face["strategy"] == "farthest"
    assert face["per_model"]["dlib-resnet"]["distance"] > 0.3
    assert (astronaut_file.parent / "astronaut_cloaked.png").is_file()


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("pool.txt", "a pool file ends in .npz"),
        ("folder.npz", "is a folder; give the path of a file"),
        ("missing/pool.npz", "does not exist; create it first"),
        ("people/astronaut.npz", "is the input"),
    ],
)
def test_pool_command_refuses_outputs_it_must_not_write(
    out: str, message: str, astronaut_file: Path, tmp_path: Path, store: ModelStore
) -> None:
    (tmp_path / "folder.npz").mkdir()
    photo_named_like_a_pool = astronaut_file.with_suffix(".npz")
    photo_named_like_a_pool.write_bytes(astronaut_file.read_bytes())
    before = photo_named_like_a_pool.read_bytes()
    inputs = [str(astronaut_file), str(photo_named_like_a_pool)]
    result = run_cli("pool", *inputs, "--out", str(tmp_path / out), "--overwrite", models_dir=store.root)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert photo_named_like_a_pool.read_bytes() == before and not (tmp_path / "pool.txt").exists()


def test_pool_command_without_photos_is_a_usage_error(tmp_path: Path, store: ModelStore) -> None:
    result = run_cli("pool", str(tmp_path), "--out", str(tmp_path / "pool.npz"), models_dir=store.root)
    assert result.returncode == 2 and "no photos found" in result.stderr


def test_pool_command_with_an_unknown_model_says_so_in_one_line(
    astronaut_file: Path, tmp_path: Path, store: ModelStore
) -> None:
    result = run_cli(
        "pool",
        str(astronaut_file),
        "--out",
        str(tmp_path / "p.npz"),
        "--models",
        "nosuch",
        models_dir=store.root,
    )
    assert result.returncode == 3 and "nosuch" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "p.npz").exists()


def test_cloak_with_an_unreadable_pool_file_says_so_in_one_line(
    astronaut_file: Path, tmp_path: Path, store: ModelStore
) -> None:
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a pool")
    result = run_cli(
        "cloak", str(astronaut_file), "--strategy", "farthest", "--pool", str(broken), models_dir=store.root
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "not a readable pool file" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (astronaut_file.parent / "astronaut_cloaked.png").exists()
