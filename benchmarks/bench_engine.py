"""Forward vs forward+gradient (the cloak graph) per model, in onnxruntime and, if installed, torch.autograd.

usage: python benchmarks/bench_engine.py [--models dlib-resnet ...] [--batches 1 8] [--threads 2]
       [--repeats 10] [--rounds 3] [--models-dir DIR] [--out benchmarks/results]

Each model comes from the ModelStore, gets the canonical input (its card's InputSpec) and its cloak graph.
Timing: for each batch size one subprocess holds all the steps (onnxruntime forward and gradient, torch
forward and backward) and runs them in turn, a block of `--repeats` runs each, for `--rounds` rounds
(each round starting one step later), with a pause between blocks so that no thread pool still spins
into the next block. Every ratio is taken within a round, between blocks run seconds apart, so a
machine that is busier in one round than in another shifts both sides alike; the table gives medians
over rounds. Memory: every step also runs in a
subprocess of its own, whose peak RSS is then its own. torch (a bench-only dependency, with onnx2torch)
runs the network converted from the same ONNX, with frozen weights, and differentiates the same triplet
loss w.r.t. the chip. Results go to results/engine-<date>T<hhmm>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np

STEPS = ("forward", "gradient")
ENGINES = ("onnxruntime", "torch")
WARM_UP_RUNS = 3
MEMORY_RUNS = 2
# Long enough for onnxruntime's spinning workers and OpenMP's blocktime (200 ms) to end.
PAUSE_BETWEEN_BLOCKS_S = 0.3
MARGIN = 100.0  # large enough that the hinge is active, so the whole backward pass runs


def _feeds(batch: int, height: int, width: int, features: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    return {
        "x": rng.uniform(-1, 1, (batch, 3, height, width)).astype(np.float32),
        "e_pos": rng.normal(0, 0.1, (batch, features)).astype(np.float32),
        "e_neg": rng.normal(0, 0.1, (batch, features)).astype(np.float32),
        "margin": np.full(batch, MARGIN, np.float32),
        "neg_weight": np.ones(batch, np.float32),
    }


def _onnxruntime_step(config: dict, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    from ulixes_onnx.engine.session import create_session

    if config["step"] == "forward":
        session = create_session(Path(config["network"]), threads=config["threads"])
        return lambda: session.run(None, {"x": feeds["x"]})
    session = create_session(Path(config["cloak"]), threads=config["threads"])
    return lambda: session.run(None, feeds)


def _without_torchvision(*args: object, **kwargs: object) -> object:
    raise NotImplementedError("torchvision is not installed")


# Once the stand-in torchvision is in sys.modules, find_spec("torchvision") raises (its __spec__ is None).
@functools.cache
def _import_onnx2torch() -> types.ModuleType:
    """onnx2torch, importable without torchvision.

    onnx2torch imports torchvision for its NMS and RoiAlign converters only, which embedding networks
    do not use, and a CUDA build of torchvision cannot load beside a CPU build of torch. Without
    torchvision, those imports get stand-ins that refuse to run.
    """
    if importlib.util.find_spec("torchvision") is None:
        ops = types.ModuleType("torchvision.ops")
        ops.nms = ops.box_convert = ops.roi_align = _without_torchvision  # type: ignore[attr-defined]
        vision = types.ModuleType("torchvision")
        vision.ops = ops  # type: ignore[attr-defined]
        sys.modules.update({"torchvision": vision, "torchvision.ops": ops})
    return importlib.import_module("onnx2torch")


@functools.cache
def _torch_network(path: str) -> object:
    """The ONNX network converted to torch with frozen weights, once per process for both steps."""
    import onnx

    network = _import_onnx2torch().convert(onnx.load(path)).eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


def _torch_step(config: dict, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    import torch

    torch.set_num_threads(config["threads"])
    network = _torch_network(config["network"])
    tensors = {name: torch.from_numpy(value) for name, value in feeds.items()}
    if config["step"] == "forward":

        def forward() -> object:
            with torch.inference_mode():
                return network(tensors["x"])

        return forward

    def gradient() -> object:
        x = tensors["x"].clone().requires_grad_(True)
        emb = network(x)
        d_pos = torch.sqrt(((emb - tensors["e_pos"]) ** 2).sum(1) + 1e-12)
        d_neg = torch.sqrt(((emb - tensors["e_neg"]) ** 2).sum(1) + 1e-12)
        loss = torch.relu(tensors["neg_weight"] * d_neg - d_pos + tensors["margin"])
        (grad,) = torch.autograd.grad(loss.sum(), x)
        return loss, grad, emb, d_pos, d_neg

    return gradient


def _make_step(config: dict, engine: str, step: str) -> Callable[[], object]:
    feeds = _feeds(config["batch"], config["height"], config["width"], config["features"])
    make = _onnxruntime_step if engine == "onnxruntime" else _torch_step
    return make(config | {"step": step}, feeds)


def measure_memory(config: dict) -> dict:
    """Peak RSS of one step alone in this process, after warm-up and a few runs."""
    step = _make_step(config, config["engine"], config["step"])
    for _ in range(WARM_UP_RUNS + MEMORY_RUNS):
        step()
    return {"peak_rss_mb": _peak_rss_mb()}


def measure_times(config: dict) -> dict[str, list[float]]:
    """Median ms of every (engine, step) per round, the steps taking turns in blocks; each round starts
    one step later than the one before, so that no step always follows the same other step."""
    steps = [
        (f"{engine}_{step}", _make_step(config, engine, step))
        for engine in config["engines"]
        for step in STEPS
    ]
    for _, run in steps:
        for _ in range(WARM_UP_RUNS):
            run()
    rounds: dict[str, list[float]] = {name: [] for name, _ in steps}
    for round_index in range(config["rounds"]):
        shift = round_index % len(steps)
        for name, run in steps[shift:] + steps[:shift]:
            time.sleep(PAUSE_BETWEEN_BLOCKS_S)
            times = []
            for _ in range(config["repeats"]):
                start = time.perf_counter()
                run()
                times.append((time.perf_counter() - start) * 1000)
            rounds[name].append(statistics.median(times))
    return rounds


def _peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM belongs to the process image, whereas
    ru_maxrss survives exec and would report the (larger) parent that spawned this worker."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, else KiB


def _spawn(config: dict) -> dict:
    completed = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark worker failed for {config}:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch_available() -> bool:
    return _version("torch") is not None and _version("onnx2torch") is not None


def memory_bandwidth_gb_s(megabytes: int = 200, copies: int = 5) -> float:
    """Copy bandwidth of this machine right now: the gradient graph moves far more memory than the
    forward pass, so a neighbour that saturates memory inflates its ratio."""
    source = np.ones(megabytes * 2**20 // 4, np.float32)
    target = np.zeros_like(source)
    np.copyto(target, source)  # the first copy would also pay for the target's page faults
    start = time.perf_counter()
    for _ in range(copies):
        np.copyto(target, source)
    return 2 * copies * source.nbytes / (time.perf_counter() - start) / 1e9


def machine_description(threads: int) -> dict:
    from ulixes_onnx.bench import machine_description as described

    machine = described()
    machine["versions"] |= {name: _version(name) for name in ("torch", "onnx2torch")}
    return machine | {
        "threads": threads,
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def benchmark_model(name: str, store_root: Path | None, args: argparse.Namespace, scratch: Path) -> dict:
    import onnx

    from ulixes_onnx.cards import get_card
    from ulixes_onnx.engine.cloak_graph import build_cloak_graph
    from ulixes_onnx.face_model import forward_graph
    from ulixes_onnx.store import ModelStore

    card = get_card(name)
    if card.input is None or card.embedding is None:
        raise SystemExit(f"{name} is not an embedding model; pick one with an [input] and [embedding] card")
    network = forward_graph(card, ModelStore(store_root).get(card).path)
    start = time.perf_counter()
    cloak = build_cloak_graph(network, distance=card.embedding.metric)  # type: ignore[arg-type]
    build_seconds = time.perf_counter() - start
    network_path, cloak_path = scratch / f"{name}-network.onnx", scratch / f"{name}-cloak.onnx"
    onnx.save(network, network_path)
    onnx.save(cloak, cloak_path)

    engines = [engine for engine in ENGINES if engine == "onnxruntime" or _torch_available()]
    height, width = card.input.size
    shared = {
        "threads": args.threads,
        "network": str(network_path),
        "cloak": str(cloak_path),
        "height": height,
        "width": width,
        "features": card.embedding.size,
    }
    rows = []
    for batch in args.batches:
        config = shared | {"batch": batch}
        timing = {"mode": "times", "engines": engines, "rounds": args.rounds, "repeats": args.repeats}
        rounds = _spawn(config | timing)
        row: dict = {"batch": batch}
        for engine in engines:
            forward, gradient = rounds[f"{engine}_forward"], rounds[f"{engine}_gradient"]
            row[f"{engine}_forward_ms"] = statistics.median(forward)
            row[f"{engine}_gradient_ms"] = statistics.median(gradient)
            row[f"{engine}_ratio"] = statistics.median(g / f for f, g in zip(forward, gradient, strict=True))
            for step in STEPS:
                memory = _spawn(config | {"mode": "memory", "engine": engine, "step": step})
                row[f"{engine}_{step}_rss_mb"] = memory["peak_rss_mb"]
            print(
                f"  {name} B={batch} {engine:11s}: forward {row[f'{engine}_forward_ms']:8.2f} ms, "
                f"gradient {row[f'{engine}_gradient_ms']:8.2f} ms, ratio {row[f'{engine}_ratio']:.2f}",
                flush=True,
            )
        if "torch" in engines:
            pairs = zip(rounds["torch_gradient"], rounds["onnxruntime_gradient"], strict=True)
            row["speedup_vs_torch"] = statistics.median(t / o for t, o in pairs)
        row["rounds"] = rounds
        rows.append(row)
    return {"model": name, "cloak_graph_build_s": build_seconds, "engines": engines, "rows": rows}


def markdown(report: dict) -> str:
    machine = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    bandwidth = report["memory_bandwidth_gb_s"]
    lines = [
        f"# Engine benchmark, {report['date']}",
        "",
        f"{machine['cpu']}, {machine['cores']} cores, {machine['threads']} threads; {machine['platform']}, "
        f"Python {machine['python']}; {versions}. Per batch size one process runs the steps in turn, "
        f"{report['repeats']} runs each after warm-up, for {report['rounds']} rounds; times are medians "
        "over rounds of each block's median, ratios (forward+gradient / forward, torch / onnxruntime) "
        "are taken within each round, then the median. Peak RSS: each step alone in its own process. "
        f"Memory copy bandwidth {bandwidth['start']:.1f} GB/s at the start, {bandwidth['end']:.1f} GB/s "
        "at the end.",
        "",
        "| model | B | ORT forward ms | ORT fwd+grad ms | ratio | RSS fwd / grad MB "
        "| torch forward ms | torch fwd+bwd ms | torch ratio | torch RSS fwd / bwd MB | ORT vs torch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in report["models"]:
        for row in model["rows"]:
            cells = [
                model["model"],
                str(row["batch"]),
                f"{row['onnxruntime_forward_ms']:.2f}",
                f"{row['onnxruntime_gradient_ms']:.2f}",
                f"{row['onnxruntime_ratio']:.2f}",
                f"{row['onnxruntime_forward_rss_mb']:.0f} / {row['onnxruntime_gradient_rss_mb']:.0f}",
            ]
            if "torch" in model["engines"]:
                cells += [
                    f"{row['torch_forward_ms']:.2f}",
                    f"{row['torch_gradient_ms']:.2f}",
                    f"{row['torch_ratio']:.2f}",
                    f"{row['torch_forward_rss_mb']:.0f} / {row['torch_gradient_rss_mb']:.0f}",
                    f"{row['speedup_vs_torch']:.2f}x faster",
                ]
            else:
                cells += ["torch not installed"] + [""] * 4
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [
        f"- {m['model']}: cloak graph built in {m['cloak_graph_build_s']:.2f} s" for m in report["models"]
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["dlib-resnet"], help="model card names")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models-dir", type=Path, default=None, help="ModelStore root (default: its own)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        config = json.loads(args.worker)
        measure = measure_times if config["mode"] == "times" else measure_memory
        print(json.dumps(measure(config)))
        return

    if not _torch_available():
        print("torch or onnx2torch is not installed: measuring onnxruntime only")
    report = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_description(args.threads),
        "repeats": args.repeats,
        "rounds": args.rounds,
        "memory_bandwidth_gb_s": {"start": memory_bandwidth_gb_s()},
        "models": [],
    }
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models:
            report["models"].append(benchmark_model(name, args.models_dir, args, Path(scratch)))
    args.out.mkdir(parents=True, exist_ok=True)
    report["memory_bandwidth_gb_s"]["end"] = memory_bandwidth_gb_s()
    stem = args.out / f"engine-{report['date'][:16].replace(':', '')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    stem.with_suffix(".md").write_text(table)
    print(table)
    print(f"written: {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")


if __name__ == "__main__":
    from ulixes_onnx.errors import UlixesError

    try:
        main()
    except UlixesError as error:  # an unknown or unbuildable model: one line, not a traceback
        raise SystemExit(f"error: {error}") from None
