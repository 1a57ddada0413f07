"""`ulixes-onnx cloak` and `demo`: outputs, JSON report, exit codes, bad input never a traceback."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_cli import run_cli
from ulixes_onnx.face_model import FaceModel
from ulixes_onnx.faces import detector_from_store, extract_chips
from ulixes_onnx.photos import samples
from ulixes_onnx.photos.decoding import read_photo
from ulixes_onnx.store import ModelStore


def _write(path: Path, pixels: np.ndarray, **options: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


def test_cloak_writes_a_verified_copy_and_a_json_report(tmp_path: Path, store: ModelStore) -> None:
    photo = _write(tmp_path / "in" / "astronaut.png", samples.astronaut())
    before = photo.read_bytes()
    report_path = tmp_path / "report.json"
    result = run_cli(
        "cloak",
        str(photo),
        "--output-dir",
        str(tmp_path / "out"),
        "--json",
        str(report_path),
        models_dir=store.root,
    )
    assert result.returncode == 0, result.stderr
    output = tmp_path / "out" / "astronaut_cloaked.png"
    assert output.is_file() and photo.read_bytes() == before
    report = json.loads(report_path.read_text())
    (face,) = report["faces"]
    assert face["protected"] is True and face["output"] == str(output)
    outcome = face["per_model"]["dlib-resnet"]
    assert outcome["distance"] > outcome["threshold"] == 0.6
    assert {"steps", "stop_reason", "chip_dssim"} <= set(outcome)
    assert face["strategy"] == "away" and 0 < face["dssim"] <= 0.03
    assert 0 < face["ssimulacra2"] < 100
    # the file's own line and the summary (one decimal there, two in the JSON)
    shown = re.search(r"min SSIMULACRA2 ([\d.]+)", result.stdout)
    assert shown and float(shown.group(1)) == pytest.approx(face["ssimulacra2"], abs=0.051)
    assert "summary" in result.stderr
    mean = re.search(r"SSIMULACRA2 of the cloaked faces as saved: mean ([\d.]+)", result.stderr)
    assert mean and float(mean.group(1)) == pytest.approx(face["ssimulacra2"], abs=0.051)


def test_folders_are_mirrored_under_the_output_dir(tmp_path: Path, store: ModelStore) -> None:
    coffee = np.ascontiguousarray(__import__("skimage.data").data.coffee())
    _write(tmp_path / "photos" / "a" / "x.png", coffee)
    _write(tmp_path / "photos" / "b" / "x.png", coffee)
    result = run_cli(
        "cloak", str(tmp_path / "photos"), "--output-dir", str(tmp_path / "out"), "--no-face", "copy",
        models_dir=store.root,
    )  # fmt: skip
    assert result.returncode == 8, result.stderr  # no face in either photo
    assert (tmp_path / "out" / "a" / "x_cloaked.png").is_file()
    assert (tmp_path / "out" / "b" / "x_cloaked.png").is_file()


def test_no_face_writes_nothing_by_default(tmp_path: Path, store: ModelStore) -> None:
    photo = _write(tmp_path / "coffee.jpg", np.ascontiguousarray(__import__("skimage.data").data.coffee()))
    result = run_cli("cloak", str(photo), models_dir=store.root)
    assert result.returncode == 8
    assert "no face" in result.stdout and "--no-face copy" in result.stdout
    assert sorted(os.listdir(tmp_path)) == ["coffee.jpg"]


def test_bad_files_are_one_line_each_and_others_still_run(tmp_path: Path, store: ModelStore) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    result = run_cli("cloak", str(broken), str(empty), str(tmp_path / "missing.png"), models_dir=store.root)
    assert result.returncode == 5
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stdout.splitlines() if line.startswith("error")]
    assert len(errors) == 3
    assert broken.read_bytes().startswith(b"\xff\xd8") and empty.read_bytes() == b""


def test_existing_output_needs_overwrite(tmp_path: Path, store: ModelStore) -> None:
    photo = _write(tmp_path / "coffee.png", np.ascontiguousarray(__import__("skimage.data").data.coffee()))
    existing = tmp_path / "coffee_cloaked.png"
    existing.write_bytes(b"keep me")
    result = run_cli("cloak", str(photo), models_dir=store.root)
    assert result.returncode == 5 and "already exists; use --skip-existing" in result.stdout
    assert "--overwrite to replace it" in result.stdout
    assert existing.read_bytes() == b"keep me"


def test_bad_options_are_usage_errors(tmp_path: Path) -> None:
    result = run_cli("cloak", str(tmp_path), "--strategy", "closest")
    assert result.returncode == 2 and "'closest' is not one of" in result.stderr
    # The models are checked before the paths: an unknown one is a model error even here.
    result = run_cli("cloak", str(tmp_path / "nothing-here"), "--models", "no-such-model")
    assert result.returncode == 3 and "unknown model 'no-such-model'" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_cloaks_the_sample_photo(tmp_path: Path, store: ModelStore) -> None:
    result = run_cli("demo", "--output-dir", str(tmp_path), models_dir=store.root)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "astronaut.png").is_file() and (tmp_path / "astronaut_cloaked.png").is_file()


def test_reference_photos_are_pushed_away_from_too(tmp_path: Path, store: ModelStore) -> None:
    astronaut = samples.astronaut()
    photo = _write(tmp_path / "astronaut.png", astronaut)
    # The mirrored photo stands in for another photo of the same person.
    reference = _write(tmp_path / "refs" / "mirrored.png", np.ascontiguousarray(astronaut[:, ::-1]))
    report_path = tmp_path / "report.json"
    result = run_cli(
        "cloak", str(photo), "--reference", str(reference.parent), "--json", str(report_path),
        models_dir=store.root,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    outcome = json.loads(report_path.read_text())["faces"][0]["per_model"]["dlib-resnet"]
    # measured independently: the saved copy is far from both the original and the reference
    model = FaceModel("dlib-resnet", store)
    detector = detector_from_store(store)
    cloaked = read_photo(tmp_path / "astronaut_cloaked.png").rgb8

    def embedding(pixels: np.ndarray) -> np.ndarray:
        face = max(detector.detect(pixels), key=lambda found: found.width)
        return model.embed(extract_chips(pixels, [face], model.chip_spec).chips)

    seen = embedding(cloaked)
    to_reference = float(model.distance(seen, embedding(np.ascontiguousarray(astronaut[:, ::-1])))[0])
    to_original = float(model.distance(seen, embedding(astronaut))[0])
    assert min(to_reference, to_original) >= outcome["protect_distance"] - 0.02
    assert outcome["distance"] == pytest.approx(min(to_reference, to_original), abs=0.02)


def test_unusable_reference_photos_stop_before_any_work(tmp_path: Path, store: ModelStore) -> None:
    photo = _write(tmp_path / "astronaut.png", samples.astronaut())
    coffee = _write(tmp_path / "coffee.png", np.ascontiguousarray(__import__("skimage.data").data.coffee()))
    for reference, message in (
        (coffee, "coffee.png: no face found"),
        (tmp_path / "missing.jpg", "missing.jpg"),
        (tmp_path / "empty-folder", "no photos found"),
    ):
        if reference.name == "empty-folder":
            reference.mkdir()
        result = run_cli("cloak", str(photo), "--reference", str(reference), models_dir=store.root)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "astronaut_cloaked.png").exists()
