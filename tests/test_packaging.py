"""The installed distribution carries every module and model card of the source tree.

The tests import the source tree (it is on sys.path), so a module missing from the package's list
would go unnoticed by every other test; this one compares the installed files with the tree.
"""

from __future__ import annotations

import json
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1]


def test_every_module_and_card_is_installed() -> None:
    # The installed copy, not the egg-info a build may leave in the source tree (also on sys.path).
    (distribution,) = metadata.distributions(name="ulixes-onnx", path=[sysconfig.get_paths()["purelib"]])
    direct_url = distribution.read_text("direct_url.json")
    if direct_url and json.loads(direct_url).get("dir_info", {}).get("editable"):
        pytest.skip("an editable install serves the source tree itself")
    installed = {str(path) for path in distribution.files or []}
    expected = {str(path.relative_to(SOURCE)) for path in (SOURCE / "ulixes_onnx").rglob("*.py")}
    expected |= {f"ulixes_onnx/model_cards/{card.name}" for card in (SOURCE / "models").glob("*.toml")}
    expected |= {
        str(path.relative_to(SOURCE)) for path in (SOURCE / "ulixes_onnx" / "server" / "static").iterdir()
    }
    assert expected - installed == set()


def test_the_test_extra_holds_every_extra_the_tests_exercise() -> None:
    # The README's test command installs only `.[test]`; a requirement added to one of these extras
    # alone would leave its tests failing on a fresh machine.
    extras = tomllib.loads((SOURCE / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in ("eval", "serve", "facenet", "plots"):
        assert set(extras[extra]) <= set(extras["test"]), extra
