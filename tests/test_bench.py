"""`ulixes-onnx bench` measures what it says (numbers are not asserted: the machine is shared)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.test_cli import run_cli
from ulixes_onnx.bench import (
    forward_pass_ms,
    in_forward_passes,
    machine_description,
    median_ms,
    sample_photos,
)
from ulixes_onnx.cloaking.settings import CloakSettings
from ulixes_onnx.store import ModelStore


def test_median_ms_times_the_call() -> None:
    calls = []

    def sleep_5_ms() -> None:
        calls.append(1)
        time.sleep(0.005)

    # sleep() lasts at least as long as asked; the upper margin allows for a busy shared machine.
    assert 5 <= median_ms(sleep_5_ms, repeats=3) < 500
    assert len(calls) == 3 + 2  # warm-up runs are not timed


def test_seconds_are_counted_in_forward_passes() -> None:
    assert in_forward_passes(0.25, unit_ms=5.0) == pytest.approx(50.0)
    assert in_forward_passes(1.0, unit_ms=3.0) == pytest.approx(333.3)
    assert in_forward_passes(None, unit_ms=5.0) is None


def test_the_forward_pass_unit_is_one_face_through_the_default_model(
    tmp_path: Path, store: ModelStore
) -> None:
    assert forward_pass_ms(store, sample_photos(tmp_path, 1), repeats=2, threads=1) > 0


def test_machine_description_names_cpu_cores_and_versions() -> None:
    machine = machine_description()
    assert machine["cores"] >= 1 and machine["cpu"]
    assert machine["versions"]["onnxruntime"] and machine["versions"]["numpy"]


@pytest.mark.slow  # times every step, loop and photo of the benchmark (over a minute)
def test_bench_command_writes_every_measurement(tmp_path: Path, store: ModelStore) -> None:
    output = tmp_path / "bench.json"
    result = run_cli(
        "bench",
        "--models",
        "dlib-resnet",
        "--batch",
        "1,2",
        "--repeats",
        "1",
        "--json",
        str(output),
        models_dir=store.root,
    )
    assert result.returncode == 0, result.stderr
    (model,) = json.loads(output.read_text())["models"]
    assert model["model"] == "dlib-resnet" and set(model["batches"]) == {"1", "2"}
    for row in model["batches"].values():
        assert row["step_ms"] > 0 and row["forward_ms"] > 0 and row["faces_per_second"] > 0
        assert row["mean_steps_per_face"] >= 1
    assert model["end_to_end_seconds_per_face"] > 0 and model["faces_cloaked_end_to_end"] >= 5
    unit = json.loads(output.read_text())["forward_pass"]
    assert unit["model"] == "dlib-resnet" and unit["batch"] == 1 and unit["ms"] > 0
    passes = model["end_to_end_forward_passes_per_face"]
    assert passes == pytest.approx(1000 * model["end_to_end_seconds_per_face"] / unit["ms"], rel=0.01)
    assert model["folder_forward_passes_per_face"] > 0
    assert len(model["faces"]) == model["faces_cloaked_end_to_end"]
    assert all(0 < face["ssimulacra2"] < 100 and face["face_width"] > 0 for face in model["faces"])
    assert model["peak_rss_mb"] > 0
    # The default cloak (the ensemble) end to end, whichever models --models timed alone.
    default = json.loads(output.read_text())["default_cloak"]
    assert default["settings"] == CloakSettings().label
    assert default["end_to_end_seconds_per_face"] > 0 and default["faces_cloaked_end_to_end"] >= 5
    assert len(default["faces"]) == default["faces_cloaked_end_to_end"]
    assert default["level"] == CloakSettings().level
    assert f"the default cloak, {CloakSettings().label} at level {CloakSettings().level}" in result.stdout
    assert (
        "forward passes" in result.stdout
        and "end to end" in result.stdout
        and "SSIMULACRA2 per face" in result.stdout
    )


def test_bad_batch_list_is_a_usage_error() -> None:
    result = run_cli("bench", "--batch", "1,x")
    assert result.returncode == 2 and "is not a list of integers" in result.stderr
