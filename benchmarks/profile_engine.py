"""Where the time of a cloak step goes: onnxruntime's profiler on the forward and cloak graphs of a model.

The forward graph is the one the product runs, with its clamps folded into Clip (`engine/rewrite.py`).

usage: python benchmarks/profile_engine.py [--model dlib-resnet] [--batch 8] [--threads 2] [--runs 20]
       [--models-dir DIR] [--top 12] [--top-nodes 0] [--json OUT]

Both graphs run `--runs` times after warm-up with onnxruntime's profiler on; the table gives the time per
run summed by operator type (kernel time only, as onnxruntime reports it), its share of the graph's
total, and the number of nodes of that type in the optimised graph.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ulixes_onnx.cards import get_card
from ulixes_onnx.engine.cloak_graph import build_cloak_graph
from ulixes_onnx.engine.session import available_cores
from ulixes_onnx.face_model import forward_graph
from ulixes_onnx.store import ModelStore

WARM_UP_RUNS = 3


def profile_graph(model: onnx.ModelProto, feeds: dict[str, np.ndarray], threads: int, runs: int) -> dict:
    """Kernel milliseconds per run by operator type, and node counts, from onnxruntime's profiler."""
    with tempfile.TemporaryDirectory() as scratch:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "profile")
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for _ in range(WARM_UP_RUNS + runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    # The warm-up runs are profiled too: keep what starts with the first measured run.
    model_runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"), key=lambda e: e["ts"]
    )[WARM_UP_RUNS:]
    first = model_runs[0]["ts"]
    per_op: dict[str, float] = defaultdict(float)
    per_node: dict[str, float] = defaultdict(float)
    node_ops: dict[str, str] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= first:
            op = event["args"]["op_name"]
            per_op[op] += event["dur"] / 1000.0
            node = event["name"].removesuffix("_kernel_time")
            per_node[node] += event["dur"] / 1000.0
            node_ops[node] = op
    total_runs = len(model_runs)
    per_run = {op: ms / total_runs for op, ms in per_op.items()}
    run_ms = sorted(e["dur"] / 1000.0 for e in model_runs)
    return {
        "run_ms_median": run_ms[len(run_ms) // 2],
        "kernel_ms_per_op": dict(sorted(per_run.items(), key=lambda item: -item[1])),
        "nodes_per_op": dict(Counter(node_ops.values())),
        "kernel_ms_per_node": {
            f"{node_ops[node]} {node}": ms / total_runs
            for node, ms in sorted(per_node.items(), key=lambda item: -item[1])
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="dlib-resnet")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--top-nodes", type=int, default=0, help="also list this many slowest nodes")
    parser.add_argument("--json", type=Path, default=None, help="write the full profile here")
    args = parser.parse_args()

    card = get_card(args.model)
    if card.input is None or card.embedding is None:
        raise SystemExit(f"{args.model} is not an embedding model")
    network = forward_graph(card, ModelStore(args.models_dir).get(card).path)
    cloak = build_cloak_graph(network, distance=card.embedding.metric)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    height, width = card.input.size
    x = rng.uniform(-1, 1, (args.batch, 3, height, width)).astype(np.float32)
    features = card.embedding.size
    cloak_feeds = {
        "x": x,
        "e_pos": rng.normal(0, 0.1, (args.batch, features)).astype(np.float32),
        "e_neg": rng.normal(0, 0.1, (args.batch, features)).astype(np.float32),
        "margin": np.full(args.batch, 100.0, np.float32),
        "neg_weight": np.ones(args.batch, np.float32),
    }
    report = {
        "model": args.model,
        "batch": args.batch,
        "threads": args.threads,
        "onnxruntime": ort.__version__,
        "forward": profile_graph(network, {"x": x}, args.threads, args.runs),
        "gradient": profile_graph(cloak, cloak_feeds, args.threads, args.runs),
    }
    forward, gradient = report["forward"], report["gradient"]
    print(
        f"{args.model} B={args.batch}, {args.threads} threads: forward {forward['run_ms_median']:.2f} ms, "
        f"forward+gradient {gradient['run_ms_median']:.2f} ms "
        f"(ratio {gradient['run_ms_median'] / forward['run_ms_median']:.2f})"
    )
    for name, part in (("forward", forward), ("forward+gradient", gradient)):
        total = sum(part["kernel_ms_per_op"].values())
        print(f"\n{name}: kernel time {total:.2f} ms per run")
        print(f"  {'op':22s} {'ms/run':>8s} {'share':>6s} {'nodes':>5s}")
        for op, ms in list(part["kernel_ms_per_op"].items())[: args.top]:
            print(f"  {op:22s} {ms:8.2f} {100 * ms / total:5.1f}% {part['nodes_per_op'][op]:5d}")
        for node, ms in list(part["kernel_ms_per_node"].items())[: args.top_nodes]:
            print(f"    {ms:8.2f}  {node}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    from ulixes_onnx.errors import UlixesError

    try:
        main()
    except UlixesError as error:  # an unknown or unbuildable model: one line, not a traceback
        raise SystemExit(f"error: {error}") from None
