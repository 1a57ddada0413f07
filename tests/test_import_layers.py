"""The package's imports flow one way: no module imports, even inside a function, a module of a higher layer.

The graph is read from the source with `ast` (nothing is imported), so it includes the imports that
run only when a function is called, which is where a cycle hides. Importing `ulixes_onnx.a.b` from
outside package `a` also runs `a/__init__.py`: the graph has that edge too.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

import ulixes_onnx

PACKAGE = "ulixes_onnx"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Lowest first; a module may import modules of its own layer (without cycles) and of lower ones.
# Names are module or package paths inside ulixes_onnx; a module takes the layer of its longest match.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"", "errors", "atomic", "cards", "sample_photos"}),
    ("engine", {"engine"}),
    ("zoo", {"zoo"}),
    ("store", {"store"}),
    ("faces", {"faces", "face_model"}),
    ("photos", {"photos"}),
    ("cloaking", {"cloaking"}),
    ("files", {"cloaking.files", "cloaking.references"}),
    ("applications", {"evaluation", "bench", "check", "server"}),
    ("cli", {"cli", "__main__"}),
]
# Run as scripts in the export toolchain's interpreter, which need not have ulixes_onnx installed.
STANDALONE_SCRIPTS = {
    f"zoo.export_{name}" for name in ("tensorflow", "graphdef", "tfjs", "keras", "setup", "torch")
}


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name ("ulixes_onnx.faces" for faces/__init__.py)."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imported_names(module: str, path: Path) -> set[str]:
    """The dotted names of package modules, or of names in them, that `module` imports anywhere."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}".rstrip(".")
            names.update(f"{base}.{alias.name}" for alias in node.names)
            names.add(base)
    return {name for name in names if name == PACKAGE or name.startswith(f"{PACKAGE}.")}


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The module a dotted name lives in; the package's lazily loaded public names resolve to their
    real module (`from ulixes_onnx import Cloaker` depends on the pipeline)."""
    lazy_exports = {f"{PACKAGE}.{attribute}": module for attribute, module in ulixes_onnx._PUBLIC.items()}
    name = lazy_exports.get(name, name)
    while name not in modules:
        name = name.rpartition(".")[0]
    return name


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules importing it runs (itself excluded)."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in _imported_names(module, path):
            target = _resolve(name, modules)
            targets.add(target)
            # Importing a submodule runs the __init__ of each package around it that `module` is not in.
            package = target.rpartition(".")[0]
            while package.startswith(f"{PACKAGE}.") and not module.startswith(f"{package}."):
                targets.add(package)
                package = package.rpartition(".")[0]
        # A package's own modules find it already being imported: `from ulixes_onnx.faces import align`
        # in faces/ loads align, not faces/__init__.py again.
        graph[module] = {target for target in targets if not f"{module}.".startswith(f"{target}.")}
    return graph


def layer_of(module: str) -> int:
    relative = module.removeprefix(PACKAGE).removeprefix(".")
    matches = [
        (len(prefix), index)
        for index, (_, prefixes) in enumerate(LAYERS)
        for prefix in prefixes
        if relative == prefix or relative.startswith(f"{prefix}.")
    ]
    if not matches:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}")
    return max(matches)[1]


GRAPH = import_graph()


def test_the_graph_sees_imports_inside_functions():
    # zoo/__init__.py imports the conversion machinery only when a converted model is built.
    assert f"{PACKAGE}.zoo.conversion" in GRAPH[f"{PACKAGE}.zoo"]
    # ... and importing a submodule of another package runs that package's __init__.
    assert f"{PACKAGE}.zoo" in GRAPH[f"{PACKAGE}.faces.shape_predictor"]


def test_there_is_no_import_cycle():
    try:
        tuple(graphlib.TopologicalSorter(GRAPH).static_order())
    except graphlib.CycleError as error:
        cycle = " -> ".join(name.removeprefix(f"{PACKAGE}.") for name in error.args[1])
        pytest.fail(f"import cycle: {cycle}")


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_go_down_the_layers(module):
    upward = sorted(
        f"{target} ({LAYERS[layer_of(target)][0]})"
        for target in GRAPH[module]
        if layer_of(target) > layer_of(module)
    )
    assert not upward, f"{module} ({LAYERS[layer_of(module)][0]}) imports a higher layer: {upward}"


@pytest.mark.parametrize("script", sorted(STANDALONE_SCRIPTS))
def test_export_scripts_import_nothing_from_the_package(script):
    path = _modules()[f"{PACKAGE}.{script}"]
    assert not _imported_names(f"{PACKAGE}.{script}", path)
