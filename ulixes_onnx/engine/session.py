"""onnxruntime sessions for gradient graphs: CPU only, all cores by default, built once per model.

onnxruntime's full graph optimisation rewrites a model for the machine it runs on (convolutions in a
blocked layout whose block is the CPU's vector width). `optimised_for_this_machine` saves that result,
so that later sessions load it without optimising again: half the load time and half the memory of a
session. A saved model only fits machines with the same `machine_key`.
"""

from __future__ import annotations

import hashlib
import os
import platform
import tempfile
from collections import OrderedDict
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import onnxruntime as ort

if TYPE_CHECKING:
    import onnx

_DEFAULT_DOMAINS = ("", "ai.onnx")
# Sessions hold their weights in memory; a handful covers a cloaking run that uses several models.
_MAX_CACHED_SESSIONS = 8
_cached_sessions: OrderedDict[tuple[str, int, int], ort.InferenceSession] = OrderedDict()


def available_cores() -> int:
    """The number of CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@cache
def machine_key() -> str:
    """What a model optimised by onnxruntime here depends on: its version, the architecture and the
    CPU's instruction-set flags."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = platform.processor()
    features = hashlib.sha256(" ".join(sorted(flags.partition(":")[2].split())).encode()).hexdigest()
    return f"onnxruntime {ort.__version__} {platform.machine()} {features}"


def optimised_for_this_machine(model_path: Path) -> bytes:
    """The model as onnxruntime's full optimisation leaves it, after `rewrite.prelus_as_local_slopes`
    and `rewrite.split_prelus`: load it with optimisation disabled, on machines with this
    `machine_key` only."""
    import onnx

    from ulixes_onnx.engine.rewrite import prelus_as_local_slopes, split_prelus

    with tempfile.TemporaryDirectory(prefix="ulixes-onnx-") as scratch:
        target = Path(scratch) / "optimised.onnx"
        model = onnx.load(model_path)
        if any(node.op_type == "PRelu" for node in model.graph.node):
            model_path = Path(scratch) / "split.onnx"
            onnx.save(split_prelus(prelus_as_local_slopes(model)), model_path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(target)
        # Its warning that the result fits this machine only is why the result is keyed by machine.
        options.log_severity_level = 3
        ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        return target.read_bytes()


def _graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    found = [graph]
    for node in graph.node:
        for attribute in node.attribute:
            inner = list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else [])
            for subgraph in inner:
                found += _graphs(subgraph)
    return found


def default_domain_only(model: onnx.ModelProto) -> bool:
    """Whether every node (in subgraphs and local functions too) is a standard ONNX operator."""
    nodes = [node for graph in _graphs(model.graph) for node in graph.node]
    nodes += [node for function in model.functions for node in function.node]
    return all(node.domain in _DEFAULT_DOMAINS for node in nodes)


def _serialised(model: onnx.ModelProto | bytes | str | Path) -> bytes | str | Path:
    """A model's bytes, or its file; a ModelProto is serialised (onnx itself is not imported for
    models given as bytes or files)."""
    return model if isinstance(model, bytes | str | Path) else model.SerializeToString()


def create_session(
    model: onnx.ModelProto | bytes | str | Path,
    *,
    threads: int | None = None,
    optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
) -> ort.InferenceSession:
    """A new CPU session; `threads` defaults to every available core."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_cores()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = optimization
    # onnxruntime's memory patterns plan one block per input shape; the loop's batches change size,
    # and with every gradient's shape declared (`autodiff`) the planned blocks grew: SFace's cloak
    # step at batch 8 peaked at 774 MB with them and 458 MB without, dlib-resnet's at 213 and 167 MB,
    # in the same time (benchmarks/results/sface-prelu-layout-2026-12-07.md).
    options.enable_mem_pattern = False
    source = _serialised(model)
    if isinstance(source, Path):
        source = str(source)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def cached_session(
    model: onnx.ModelProto | bytes,
    *,
    threads: int | None = None,
    optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
) -> ort.InferenceSession:
    """The session for this model and settings, created on first use and reused afterwards."""
    serialized = _serialised(model)
    threads = threads or available_cores()
    key = (hashlib.sha256(serialized).hexdigest(), threads, int(optimization))
    if key in _cached_sessions:
        _cached_sessions.move_to_end(key)
        return _cached_sessions[key]
    session = create_session(serialized, threads=threads, optimization=optimization)
    _cached_sessions[key] = session
    if len(_cached_sessions) > _MAX_CACHED_SESSIONS:
        _cached_sessions.popitem(last=False)
    return session
