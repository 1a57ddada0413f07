"""The public API: importable from the package, loaded only on first use."""

from __future__ import annotations

import subprocess
import sys
from importlib import import_module

import pytest

import ulixes_onnx


def test_every_public_name_resolves_to_its_module() -> None:
    for name, module in ulixes_onnx._PUBLIC.items():
        assert getattr(ulixes_onnx, name) is getattr(import_module(module), name)
    assert set(ulixes_onnx.__all__) == {"__version__", *ulixes_onnx._PUBLIC}
    assert ulixes_onnx.Cloaker.__module__ == "ulixes_onnx.cloaking.pipeline"
    assert ulixes_onnx.CloakSettings().level == "low"
    with pytest.raises(AttributeError, match="no attribute 'Cloak'"):
        _ = ulixes_onnx.Cloak


def test_importing_the_package_loads_no_model_code() -> None:
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, ulixes_onnx; print(sorted(m for m in sys.modules if 'ulixes' in m))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert loaded.strip() == "['ulixes_onnx']"
