"""Start-up: `--help` and a one-photo `cloak` import only what they need (how long they take is measured
in benchmarks/stage_profile.py, not asserted here)."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ulixes_onnx.cli import COMMANDS, load_command
from ulixes_onnx.store import ModelStore

# Loaded by the commands that need them only: the evaluation and the server, and what they bring.
NOT_FOR_CLOAKING = (
    "onnx",
    "sklearn",
    "matplotlib",
    "ulixes_onnx.evaluation",
    "ulixes_onnx.server",
    "uvicorn",
)
# Loaded by no command: test dependencies only (the sample photos ship with the package, the canvas
# operator samples with NumPy), which a plain `pip install ulixes-onnx` does not bring.
NOT_AT_RUN_TIME = ("scipy", "skimage")
NOT_FOR_HELP = (*NOT_FOR_CLOAKING, *NOT_AT_RUN_TIME, "numpy", "cv2", "onnxruntime", "PIL")

# Runs the command line in a fresh process, then prints the top-level packages it imported.
IMPORTS_OF_RUN = """
import json, sys
from ulixes_onnx.cli import main
sys.argv = ["ulixes-onnx", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def imported_by(*args: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", IMPORTS_OF_RUN, json.dumps(args)], capture_output=True, text=True, timeout=600
    )
    return set(json.loads(result.stderr.strip().splitlines()[-1]))


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(name for name in names if any(m == name or m.startswith(f"{name}.") for m in modules))


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_is_listed_with_its_own_summary(name: str) -> None:
    command = load_command(name)
    assert inspect.cleandoc(command.help).splitlines()[0] == COMMANDS[name].summary


def test_help_lists_every_command_without_loading_them() -> None:
    assert loaded(imported_by("--help"), NOT_FOR_HELP) == []


def test_help_lists_the_commands_in_order() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ulixes_onnx", "--help"], capture_output=True, text=True, timeout=60
    )
    positions = [result.stdout.find(f" {name} ") for name in COMMANDS]
    assert -1 not in positions and positions == sorted(positions)


def test_a_command_still_shows_its_own_help() -> None:
    command = [sys.executable, "-m", "ulixes_onnx", "cloak", "--help"]
    assert "--output-dir" in subprocess.run(command, capture_output=True, text=True, timeout=60).stdout


def test_unknown_command_is_a_usage_error() -> None:
    result = subprocess.run([sys.executable, "-m", "ulixes_onnx", "clok"], capture_output=True, text=True)
    assert result.returncode == 2 and "No such command" in result.stderr


def test_cloaking_a_photo_loads_neither_onnx_nor_evaluation_code_nor_test_dependencies(
    tmp_path: Path, astronaut: np.ndarray, warm_store: ModelStore
) -> None:
    # With the model's graphs built (`warm_store`): building them is what onnx is for.
    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(photo)
    modules = imported_by("cloak", str(photo), "--max-steps", "2", "--max-rounds", "1")
    assert (tmp_path / "astronaut_cloaked.png").exists()
    assert "ulixes_onnx.cloaking.pipeline" in modules
    assert loaded(modules, (*NOT_FOR_CLOAKING, *NOT_AT_RUN_TIME)) == []
