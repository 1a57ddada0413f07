"""The export toolchain: TensorFlow, tf-keras, tf2onnx and PyTorch, in an interpreter of their own.

Converting FaceNet, FaceRes, VGGFace, DeepFace and facenet-pytorch weights needs those frameworks once,
at build time; cloaking never does. They live in a separate virtualenv because they pin versions the
run-time environment must not be tied to (facenet-pytorch, for one, pins torch < 2.3 and torchvision),
and each conversion runs there as a subprocess (export_tensorflow.py, export_torch.py) that exchanges
files with this process.

The interpreter is, in order: `$ULIXES_ONNX_EXPORT_PYTHON`; the virtualenv `export-toolchain` next to
the default model store (`$XDG_CACHE_HOME/ulixes-onnx/export-toolchain`), created on first use with
the pinned packages below from PyPI (about 1.5 GB, a few minutes).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

from ulixes_onnx.errors import ModelError

EXPORT_PYTHON_ENV = "ULIXES_ONNX_EXPORT_PYTHON"

# Tested together (tf2onnx 1.17 with onnx 1.23 and numpy 2 needs export_setup.py's numpy shim).
REQUIREMENTS = (
    "tensorflow-cpu==2.21.0",
    "tf-keras==2.21.0",
    "tf2onnx==1.17.0",
    "torch==2.13.0",
    "tqdm",  # imported by facenet-pytorch's model module
)
# Installed without their dependencies (see the module docstring).
REQUIREMENTS_WITHOUT_DEPENDENCIES = ("facenet-pytorch==2.6.0",)
_MARKER = "ulixes-onnx-toolchain.json"
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b")
_SCRIPTS = Path(__file__).resolve().parent

log = logging.getLogger(__name__)


def default_toolchain_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "ulixes-onnx" / "export-toolchain"


def _pinned() -> dict[str, list[str]]:
    return {
        "requirements": list(REQUIREMENTS),
        "without_dependencies": list(REQUIREMENTS_WITHOUT_DEPENDENCIES),
    }


def _venv_python(directory: Path) -> Path:
    return directory / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def installed_toolchain(directory: Path | None = None) -> Path | None:
    """The export interpreter if one is configured or fully installed, without installing anything."""
    if os.environ.get(EXPORT_PYTHON_ENV):
        return Path(os.environ[EXPORT_PYTHON_ENV])
    directory = directory or default_toolchain_dir()
    try:
        if json.loads((directory / _MARKER).read_text()) == _pinned():
            return _venv_python(directory)
    except (OSError, ValueError):
        pass
    return None


def _pip(python: Path, arguments: list[str]) -> None:
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", *arguments],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise ModelError(
            f"pip could not install {' '.join(arguments)} ({lines[-1] if lines else 'no output'})"
        )


def install_toolchain(directory: Path | None = None) -> Path:
    """Create the export virtualenv with the pinned packages (from PyPI) and return its interpreter."""
    directory = directory or default_toolchain_dir()
    log.warning(
        "setting up the model export toolchain (TensorFlow, tf2onnx, PyTorch; about 1.5 GB) in %s",
        directory,
    )
    (directory / _MARKER).unlink(missing_ok=True)
    try:
        venv.create(directory, with_pip=True, clear=True)
        python = _venv_python(directory)
        _pip(python, list(REQUIREMENTS))
        _pip(python, ["--no-deps", *REQUIREMENTS_WITHOUT_DEPENDENCIES])
    except (OSError, subprocess.SubprocessError, ModelError) as error:
        raise ModelError(
            f"cannot set up the model export toolchain in {directory} ({error}); install "
            f"{' '.join(REQUIREMENTS)} and, with --no-deps, {' '.join(REQUIREMENTS_WITHOUT_DEPENDENCIES)} "
            f"into a Python {sys.version_info.major}.{sys.version_info.minor} virtualenv and set "
            f"{EXPORT_PYTHON_ENV} to its python"
        ) from error
    (directory / _MARKER).write_text(json.dumps(_pinned()))
    return python


def export_python() -> Path:
    """The export interpreter, installing the toolchain on first use."""
    return installed_toolchain() or install_toolchain()


def _python_error(stderr: str) -> str | None:
    """The exception line of a Python traceback in `stderr` (TensorFlow logs around it are noise)."""
    errors = [line for line in stderr.splitlines() if _EXCEPTION_LINE.match(line)]
    return errors[-1] if errors else None


def run_export_script(script: str, job: dict, *, python: Path | None = None) -> None:
    """Run an export script (a file name in zoo/, or a path) on a job in the export interpreter; its
    failure is a `ModelError`."""
    python = python or export_python()
    with tempfile.TemporaryDirectory(prefix="ulixes-export-job-") as scratch:
        job_path = Path(scratch) / "job.json"
        job_path.write_text(json.dumps(job))
        try:
            result = subprocess.run(
                [str(python), str(_SCRIPTS / script), str(job_path)],
                capture_output=True,
                text=True,
                # tf2onnx's optimizer walks sets: a fixed hash seed keeps its output the same every run.
                env={**os.environ, "PYTHONHASHSEED": "0"},
            )
        except OSError as error:
            raise ModelError(
                f"cannot run the export interpreter {python} ({error}); unset {EXPORT_PYTHON_ENV} or "
                "point it at a working python"
            ) from error
    if result.returncode != 0:
        log.debug("%s failed:\n%s", script, result.stderr)
        reason = _python_error(result.stderr) or f"exit code {result.returncode}"
        raise ModelError(
            f"the model conversion failed ({reason}); "
            "check that the weights file is the one the model card names"
        )
