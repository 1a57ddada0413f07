"""The installed distribution carries every module and model card of the source tree.

The tests import the source tree (it is on sys.path), so a module missing from the package's list
would go unnoticed by every other test; this one compares the installed files with the tree.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import sysconfig
import tomllib
from importlib import metadata
from importlib.metadata import packages_distributions
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
    for data in ("server/static", "sample_photos"):
        files = (SOURCE / "ulixes_onnx" / data).iterdir()
        expected |= {str(path.relative_to(SOURCE)) for path in files if path.is_file()}
    assert expected - installed == set()


def test_the_test_extra_holds_every_extra_the_tests_exercise() -> None:
    # The README's test command installs only `.[test]`; a requirement added to one of these extras
    # alone would leave its tests failing on a fresh machine.
    extras = tomllib.loads((SOURCE / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in ("eval", "serve", "facenet", "plots"):
        assert set(extras[extra]) <= set(extras["test"]), extra


def test_ci_finds_the_readme_commands_it_runs() -> None:
    # .ci/run runs the first README line holding each of these: it must be the set-up command itself.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text().splitlines()
    for marker, ends in (("pip install . &&", "ulixes-onnx demo"), ("pip install '.[test]'", "pytest")):
        first = next(line for line in readme if marker in line)
        assert first.startswith("python3 -m venv .venv &&") and first.endswith(ends), first


def _names(requirements: list[str]) -> set[str]:
    """Distribution names of requirement strings, normalised."""
    return {
        re.split(r"[<>=!~\[; ]", requirement)[0].lower().replace("_", "-") for requirement in requirements
    }


def _imported_distributions() -> dict[str, set[str]]:
    """ "top-level import (file)" -> the distributions that can provide it, for every non-standard
    import of the package's modules (the export toolchain's scripts aside)."""
    distributions = packages_distributions()
    imported = {}
    for path in (SOURCE / "ulixes_onnx").rglob("*.py"):
        if path.parent.name == "zoo" and path.stem.startswith("export_"):
            continue  # run in the export toolchain's own interpreter
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "ulixes_onnx":
                    continue
                owners = {owner.lower().replace("_", "-") for owner in distributions.get(top, [top])}
                # Both OpenCV builds install cv2; a test dependency may bring the GUI one.
                owners |= {"opencv-python-headless"} if top == "cv2" else set()
                imported[f"{top} ({path.relative_to(SOURCE)})"] = owners
    return imported


def test_every_package_the_code_imports_is_declared() -> None:
    # A package that arrives only as another one's dependency can vanish with that one's next release
    # (typer 0.29 stopped installing click, and a fresh install failed at start-up).
    project = tomllib.loads((SOURCE / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        requirements += extra
    declared = _names(requirements)
    undeclared = [name for name, owners in _imported_distributions().items() if not owners & declared]
    assert not undeclared, sorted(undeclared)


def test_no_module_imports_a_package_only_the_tests_install() -> None:
    # scikit-image (and the scipy it brings) left the run-time dependencies: the sample photos ship
    # with the package, and the canvas operator samples with NumPy. An import of them, or of any
    # other test-only package, would fail in a plain `pip install ulixes-onnx`.
    project = tomllib.loads((SOURCE / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    run_time = _names(project["dependencies"])
    for name, requirements in extras.items():
        if name != "test":
            run_time |= _names(requirements)
    test_only = _names(extras["test"]) - run_time
    assert {"scikit-image", "pytest"} <= test_only
    offending = [name for name, owners in _imported_distributions().items() if owners <= test_only]
    assert not offending, sorted(offending)
