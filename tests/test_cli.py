"""The command line: help, version, models list/build, and one-line errors with distinct exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ulixes_onnx import __version__
from ulixes_onnx.store import ModelStore


def run_cli(*args: str, models_dir: Path | None = None) -> subprocess.CompletedProcess:
    prefix = ["--models-dir", str(models_dir)] if models_dir else []
    return subprocess.run(
        [sys.executable, "-m", "ulixes_onnx", *prefix, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_and_version() -> None:
    assert "models" in run_cli("--help").stdout
    assert run_cli("--version").stdout.strip() == f"ulixes-onnx {__version__}"


def test_models_list_json_shows_status(tmp_path: Path) -> None:
    ModelStore(tmp_path).get("mtcnn")
    result = run_cli("models", "list", "--json", models_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["mtcnn"]["status"] == "built"
    assert rows["dlib-resnet"]["status"] == "buildable"
    assert rows["dlib-resnet"]["default"] is True
    assert rows["dlib-resnet"]["licence"] == "CC0-1.0"
    assert rows["dlib-resnet"]["size"] == "-" and rows["dlib-resnet"]["bytes"] is None


def test_models_list_size_counts_the_whole_model_folder(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    built = store.get("mtcnn")
    artifacts = sum(path.stat().st_size for path in built.paths.values())
    # A graph derived from the model (as the gradient and optimised graphs are) counts too.
    store.derived(built, "probe", "test", lambda: bytes(3_000_000))
    folder = sum(path.stat().st_size for path in (tmp_path / "mtcnn").iterdir())
    result = run_cli("models", "list", "--json", models_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    row = {row["name"]: row for row in json.loads(result.stdout)}["mtcnn"]
    assert row["bytes"] == folder > artifacts + 3_000_000
    assert row["size"] == f"{folder / 1e6:.1f} MB"


def test_models_build_then_list_table(tmp_path: Path) -> None:
    built = run_cli("models", "build", "dlib-resnet", models_dir=tmp_path)
    assert built.returncode == 0, built.stderr
    assert "dlib-resnet: built (22.4 MB)" in built.stdout
    table = run_cli("models", "list", models_dir=tmp_path).stdout
    assert "dlib-resnet *" in table and "built" in table


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["models", "build", "no-such-model"], 3, "unknown model 'no-such-model'"),
        (["models", "frobnicate"], 2, "No such command"),
    ],
)
def test_errors_are_one_line_with_exit_codes(args: list[str], code: int, message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_models_dir_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run_cli("models", "build", "mtcnn", models_dir=blocker / "models")
    assert result.returncode == 3
    *announcements, error = result.stderr.strip().splitlines()
    assert announcements == [
        f"ulixes-onnx: building model mtcnn into {blocker / 'models'} (first use; this can take a minute)"
    ]
    assert error.startswith(f"ulixes-onnx: error: cannot write {blocker / 'models' / 'mtcnn'}")
    assert "Not a directory" in error and "--models-dir" in error


def test_models_check_json(store: ModelStore) -> None:
    result = run_cli("models", "check", "--json", models_dir=store.root)
    assert result.returncode == 0, result.stderr
    reports = {report["model"]: report for report in json.loads(result.stdout)}
    dlib = reports["dlib-resnet"]
    assert dlib["ok"] is True
    checks = dlib["checks"]
    assert checks["embedding_size"]["measured"] == 128
    assert max(checks["same_person"]["distances"].values()) < 0.6
    assert checks["other_person"]["distance_astronaut_to_cameraman"] > 0.6
    assert checks["cloak_graph_standard_ops"]["ok"] is True
    assert checks["gradient"]["max_relative_error"] < 0.02
    assert reports["mtcnn"]["checks"]["astronaut_faces"]["found"] == 1
