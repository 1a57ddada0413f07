"""Builders for models converted from other frameworks (TensorFlow, TFJS, Keras, PyTorch) to ONNX.

Each build runs the source framework in the export toolchain (see `toolchain.py`), then, here, with onnx
and onnxruntime only: gives the model stable tensor names ("<card input tensor>" in, "embedding" out,
batch dimension "N"), strips text that would differ between machines (paths, stack traces), and checks
it against the source framework's own output on a probe batch of real face chips (the shipped astronaut),
so a conversion that changed the network fails the build instead of producing a wrong model.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort

from ulixes_onnx import sample_photos
from ulixes_onnx.cards import ModelCard, ModelInput
from ulixes_onnx.errors import ModelError
from ulixes_onnx.zoo.recipes import RECIPES
from ulixes_onnx.zoo.toolchain import run_export_script

OUTPUT_NAME = "embedding"
BATCH_DIM = "N"
# The source frameworks and onnxruntime sum in different orders; float32 rounding stays far below this.
FIDELITY_TOLERANCE = 1e-4
_COUNTER = re.compile(r"__+\d+")


@dataclass(frozen=True)
class ConvertedModel:
    model: onnx.ModelProto
    max_abs_difference: float  # vs the source framework on the probe chips
    output_scale: float  # the largest |output| of the source framework on them
    conversion_seconds: float


def probe_chips(height: int, width: int) -> np.ndarray:
    """Canonical chips [3, 3, H, W] in [-1, 1]: a real face, its mirror image and a darker, noisy copy."""
    face = sample_photos.read("astronaut.png")[20:260, 140:380]
    face = cv2.resize(face, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
    noise = np.random.default_rng(0).normal(0.0, 8.0, face.shape).astype(np.float32)
    variants = [face, face[:, ::-1], np.clip(0.7 * face + noise, 0, 255)]
    return np.stack([v.transpose(2, 0, 1) for v in variants]) / np.float32(127.5) - np.float32(1)


def native_input(chips: np.ndarray, model_input: ModelInput) -> np.ndarray:
    """What the network itself takes for canonical chips; numpy twin of engine.adapter's preprocessing."""
    x = chips.astype(np.float64)
    if model_input.channels == "BGR":
        x = x[:, ::-1]
    x = x * np.reshape(model_input.scale, (1, 3, 1, 1)) + np.reshape(model_input.offset, (1, 3, 1, 1))
    if model_input.prewhiten:
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        std = x.std(axis=(1, 2, 3), keepdims=True)
        x = (x - mean) / np.maximum(std, 1 / np.sqrt(x[0].size))
    if model_input.layout == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def _rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.name == old:
            value.name = new


def _canonical_names(graph: onnx.GraphProto) -> None:
    """Rename nodes, inner tensors and initializers from their position in the graph.

    Converters number the nodes and constants they create from counters whose values differ between
    runs (tf2onnx's optimizer walks sets); names derived from positions make the serialized model
    reproducible. Node names keep the source's readable part, without such counters ("__12").
    Initializers are named after their first consumer and stored in that order.
    """
    keep = {value.name for value in [*graph.input, *graph.output]}
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    renamed: dict[str, str] = {}
    for position, node in enumerate(graph.node):
        node.name = f"{_COUNTER.sub('', node.name) or node.op_type}#{position}"
        for index, name in enumerate(node.input):
            if name in initializers and name not in renamed:
                renamed[name] = f"{node.name}/input{index}"
        for index, name in enumerate(node.output):
            if name and name not in keep:
                renamed[name] = f"{node.name}:{index}"
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
    ordered = [initializers[name] for name in renamed if name in initializers]
    for tensor in ordered:
        tensor.name = renamed[tensor.name]
    del graph.initializer[:]
    graph.initializer.extend(ordered)


def finalize(model: onnx.ModelProto, card: ModelCard) -> onnx.ModelProto:
    """Stable names, a symbolic batch dimension, no machine-specific text; checked by onnx.checker.

    Initializers no node uses are dropped (they are not part of the network)."""
    graph = model.graph
    initializers = {tensor.name for tensor in graph.initializer}
    (network_input,) = [value for value in graph.input if value.name not in initializers]
    if len(graph.output) != 1:
        raise ModelError(f"the converted {card.name} has {len(graph.output)} outputs, expected 1")
    assert card.input is not None
    _rename_tensor(graph, network_input.name, card.input.tensor)
    _rename_tensor(graph, graph.output[0].name, OUTPUT_NAME)
    for value in (graph.input[0], graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    # Exporters may leave the feature size symbolic; the engine needs it (convert() checks it is right).
    assert card.embedding is not None
    graph.output[0].type.tensor_type.shape.dim[1].dim_value = card.embedding.size
    del graph.value_info[:]
    _canonical_names(graph)
    graph.name = card.name
    graph.doc_string = model.doc_string = ""
    for node in graph.node:
        node.doc_string = ""  # exporters record source paths and stack traces here
    onnx.checker.check_model(model)
    return model


def max_abs_difference(model: onnx.ModelProto, inputs: np.ndarray, expected: np.ndarray) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: inputs})
    if output.shape != expected.shape:
        return float("inf")
    return float(np.abs(output.astype(np.float64) - expected).max())


def check_against_source(
    card: ModelCard,
    model: onnx.ModelProto,
    probe: np.ndarray,
    reference: np.ndarray,
    *,
    source_file: str,
    source: str,
    built: str,
    hint: str,
) -> tuple[float, float]:
    """Check a built model's outputs on the probe against its source's `reference` outputs: the
    largest difference and the output's scale, or a ModelError saying what differs."""
    assert card.embedding is not None
    if reference.shape != (len(probe), card.embedding.size):
        raise ModelError(
            f"the source model gives outputs of shape {reference.shape[1:]}, the {card.name} card expects "
            f"({card.embedding.size},): check that the {source_file} is the one the card names"
        )
    difference = max_abs_difference(model, probe, reference)
    # Relative to the output's scale: normalised embeddings are <= 1, raw features can be much larger.
    output_scale = float(np.abs(reference).max())
    allowed = FIDELITY_TOLERANCE * max(1.0, output_scale)
    if not difference <= allowed:
        raise ModelError(
            f"the {built} {card.name} differs from its {source} by {difference:.2e} (more than "
            f"{allowed:.1e}); {hint}"
        )
    return difference, output_scale


def convert(card: ModelCard, sources: dict[str, Path], *, python: Path | None = None) -> ConvertedModel:
    """Convert the card's source files with its recipe and check the result against the source framework."""
    recipe = RECIPES[card.builder]
    assert card.input is not None and card.embedding is not None
    probe = native_input(probe_chips(*card.input.size), card.input)
    with tempfile.TemporaryDirectory(prefix="ulixes-convert-") as scratch:
        work = Path(scratch)
        np.save(work / "probe.npy", probe)
        job = {
            "format": recipe.source_format,
            "source": {role: str(path) for role, path in sources.items()},
            "input": recipe.source_input,
            "output": recipe.source_output,
            "architecture": recipe.architecture,
            "probe": str(work / "probe.npy"),
            "onnx": str(work / "model.onnx"),
            "reference": str(work / "reference.npy"),
            "report": str(work / "report.json"),
        }
        run_export_script(recipe.script, job, python=python)
        model = finalize(onnx.load_model_from_string((work / "model.onnx").read_bytes()), card)
        reference = np.load(work / "reference.npy")
        seconds = json.loads((work / "report.json").read_text())["seconds"]
    difference, output_scale = check_against_source(
        card,
        model,
        probe,
        reference,
        source_file="weights file",
        source="source model",
        built="converted",
        hint="the export toolchain's versions may differ from the tested ones: "
        "reinstall it by deleting its folder",
    )
    return ConvertedModel(model, difference, output_scale, seconds)
