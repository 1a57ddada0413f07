"""The installed distribution carries every module and model card of the source tree.

The tests import the source tree (it is on sys.path), so a module missing from the package's list
would go unnoticed by every other test; this one compares the installed files with the tree.
"""

from __future__ import annotations

import json
import sys
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
    for extra in ("eval", "serve", "facenet", "sface", "plots"):
        assert set(extras[extra]) <= set(extras["test"]), extra


def test_ci_finds_the_readme_commands_it_runs() -> None:
    # .ci/run runs the first README line holding each of these: it must be the set-up command itself.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text().splitlines()
    for marker, ends in (("pip install . &&", "ulixes-onnx demo"), ("pip install '.[test]'", "pytest")):
        first = next(line for line in readme if marker in line)
        assert first.startswith("python3 -m venv .venv &&") and first.endswith(ends), first


def test_every_package_the_code_imports_is_declared() -> None:
    # A package that arrives only as another one's dependency can vanish with that one's next release
    # (typer 0.29 stopped installing click, and a fresh install failed at start-up).
    import ast
    import re
    from importlib.metadata import packages_distributions

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        requirements += extra
    declared = {
        re.split(r"[<>=!~\[; ]", requirement)[0].lower().replace("_", "-") for requirement in requirements
    }
    distributions = packages_distributions()
    undeclared = set()
    for path in (root / "ulixes_onnx").rglob("*.py"):
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
                if not owners & declared:
                    undeclared.add(f"{top} ({path.relative_to(root)})")
    assert not undeclared, sorted(undeclared)
