"""Forward vs forward+gradient (the cloak graph) per model, in onnxruntime and, if installed, torch.autograd.

usage: python benchmarks/bench_engine.py [--models dlib-resnet ...] [--batches 1 8] [--threads 2]
       [--repeats 20] [--rounds 3] [--models-dir DIR] [--out benchmarks/results]

Each model comes from the ModelStore, gets the canonical input (its card's InputSpec) and its cloak graph.
Every configuration (engine x step x batch) runs in a subprocess of its own, so that its peak RSS is its
own; the subprocesses of one model take turns for `--rounds` rounds, so that forward and gradient are
measured side by side on a shared, noisy machine. A subprocess warms up, then reports the median of
`--repeats` runs; the table gives the median over rounds. torch (a bench-only dependency, with
onnx2torch) runs the network converted from the same ONNX, with frozen weights, and differentiates the
same triplet loss w.r.t. the chip. Results go to results/engine-<date>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
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


def _torch_step(config: dict, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    import onnx
    import torch

    onnx2torch = _import_onnx2torch()

    torch.set_num_threads(config["threads"])
    network = onnx2torch.convert(onnx.load(config["network"])).eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
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


def run_worker(config: dict) -> dict:
    """Time one configuration in this process: median ms over the repeats, and peak RSS."""
    feeds = _feeds(config["batch"], config["height"], config["width"], config["features"])
    make_step = _onnxruntime_step if config["engine"] == "onnxruntime" else _torch_step
    step = make_step(config, feeds)
    for _ in range(WARM_UP_RUNS):
        step()
    times = []
    for _ in range(config["repeats"]):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000)
    return {"ms": statistics.median(times), "min_ms": min(times), "peak_rss_mb": _peak_rss_mb()}


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
    from ulixes_onnx.engine.adapter import with_canonical_input
    from ulixes_onnx.engine.cloak_graph import build_cloak_graph
    from ulixes_onnx.engine.rewrite import fold_clamps
    from ulixes_onnx.recognition import adapter_spec
    from ulixes_onnx.store import ModelStore

    card = get_card(name)
    if card.input is None or card.embedding is None:
        raise SystemExit(f"{name} is not an embedding model; pick one with an [input] and [embedding] card")
    native = onnx.load(ModelStore(store_root).get(card).path)
    spec = adapter_spec(card)
    # The forward graph the product runs: clamps folded as the cloak graph folds them.
    network = fold_clamps(with_canonical_input(native, spec))
    start = time.perf_counter()
    cloak = build_cloak_graph(network, distance=card.embedding.metric)  # type: ignore[arg-type]
    build_seconds = time.perf_counter() - start
    network_path, cloak_path = scratch / f"{name}-network.onnx", scratch / f"{name}-cloak.onnx"
    onnx.save(network, network_path)
    onnx.save(cloak, cloak_path)

    engines = [engine for engine in ENGINES if engine == "onnxruntime" or _torch_available()]
    height, width = card.input.size
    configs = [
        {
            "engine": engine,
            "step": step,
            "batch": batch,
            "threads": args.threads,
            "repeats": args.repeats,
            "network": str(network_path),
            "cloak": str(cloak_path),
            "height": height,
            "width": width,
            "features": card.embedding.size,
        }
        for batch in args.batches
        for engine in engines
        for step in STEPS
    ]
    rounds: dict[tuple[str, str, int], list[dict]] = {}
    for round_index in range(args.rounds):
        for config in configs:
            result = _spawn(config)
            key = (config["engine"], config["step"], config["batch"])
            rounds.setdefault(key, []).append(result)
            print(
                f"  round {round_index + 1}: {name} {config['engine']:11s} {config['step']:8s} "
                f"B={config['batch']}: {result['ms']:8.2f} ms, {result['peak_rss_mb']:6.0f} MB",
                flush=True,
            )
    rows = []
    for batch in args.batches:
        row: dict = {"batch": batch}
        for engine in engines:
            for step in STEPS:
                results = rounds[(engine, step, batch)]
                row[f"{engine}_{step}_ms"] = statistics.median(r["ms"] for r in results)
                row[f"{engine}_{step}_rss_mb"] = max(r["peak_rss_mb"] for r in results)
            # The ratio of each round's side-by-side pair, then the median: robust to a busy round.
            pairs = zip(rounds[(engine, "forward", batch)], rounds[(engine, "gradient", batch)], strict=True)
            row[f"{engine}_ratio"] = statistics.median(grad["ms"] / fwd["ms"] for fwd, grad in pairs)
        if "torch" in engines:
            row["speedup_vs_torch"] = row["torch_gradient_ms"] / row["onnxruntime_gradient_ms"]
        rows.append(row)
    return {"model": name, "cloak_graph_build_s": build_seconds, "engines": engines, "rows": rows}


def markdown(report: dict) -> str:
    machine = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    lines = [
        f"# Engine benchmark, {report['date']}",
        "",
        f"{machine['cpu']}, {machine['cores']} cores, {machine['threads']} threads; {machine['platform']}, "
        f"Python {machine['python']}; {versions}. Medians of {report['repeats']} runs after warm-up, "
        f"median over {report['rounds']} interleaved rounds, each configuration in its own process "
        "(peak RSS is its own). Ratio: forward+gradient / forward, per round, median.",
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
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models-dir", type=Path, default=None, help="ModelStore root (default: its own)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return

    if not _torch_available():
        print("torch or onnx2torch is not installed: measuring onnxruntime only")
    report = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_description(args.threads),
        "repeats": args.repeats,
        "rounds": args.rounds,
        "models": [],
    }
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models:
            report["models"].append(benchmark_model(name, args.models_dir, args, Path(scratch)))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"engine-{report['date'][:10]}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    stem.with_suffix(".md").write_text(table)
    print(table)
    print(f"written: {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")


if __name__ == "__main__":
    main()
