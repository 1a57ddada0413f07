"""Cross-check the engine's input gradient against onnxruntime-training's GradientGraphBuilder.

usage: python benchmarks/bench_ort_training.py [--model dlib-resnet] [--venv DIR] [--batch 8]
       [--threads 2] [--repeats 20] [--models-dir DIR] [--out benchmarks/results]

onnxruntime-training-cpu 1.19.2 (the last release; Python <= 3.12) cannot share an environment with
onnxruntime, so it lives in a virtualenv of its own, made on first use; this script runs a worker in
it. The worker differentiates the cloak graph's loss (the same forward graph, up to the loss) with
GradientGraphBuilder, which emits com.microsoft contrib ops that only the training runtime can run,
times the result and returns its input gradient. The engine's gradient is compared with it (max
abs and max relative error) and timed side by side with it and with the plain forward pass. Results
go to results/ortt-<model>-<date>.json and .md. Without that runtime the check is skipped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TRAINING_PACKAGE = "onnxruntime-training-cpu==1.19.2"
# The training runtime rejects newer IR versions than this one.
TRAINING_IR_VERSION = 10
INPUTS = ("x", "e_pos", "e_neg", "margin", "neg_weight")
SEED = "loss_sum"


def _median_ms(step, repeats: int) -> float:
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def run_worker(loss_path: Path, feeds_path: Path, out_path: Path, threads: int, repeats: int) -> None:
    """In the training virtualenv: build the gradient graph, time it, save the input gradient."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.capi._pybind_state import GradientGraphBuilder

    ort.set_default_logger_severity(3)
    start = time.perf_counter()
    builder = GradientGraphBuilder(loss_path.read_bytes(), {SEED}, {"x"}, SEED)
    builder.build()
    gradient_model = onnx.load_from_string(builder.get_model())
    build_seconds = time.perf_counter() - start
    domains = sorted({node.domain or "ai.onnx" for node in gradient_model.graph.node})
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        gradient_model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feeds = dict(np.load(feeds_path))
    (grad,) = session.run(["x_grad"], feeds)
    gradient_ms = _median_ms(lambda: session.run(["x_grad"], feeds), repeats)
    np.save(out_path, grad)
    print(json.dumps({"build_s": build_seconds, "gradient_ms": gradient_ms, "domains": domains}))


def ensure_training_venv(venv: Path) -> Path | None:
    """The virtualenv's python with the training runtime, made if missing; None when it cannot be."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "from onnxruntime.capi._pybind_state import GradientGraphBuilder"]
    if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return python
    if sys.version_info >= (3, 13):
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        print(f"skipped: {TRAINING_PACKAGE} has no wheels for Python {version}")
        return None
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", TRAINING_PACKAGE, "onnx", "numpy"],
    ]
    for step in steps:
        completed = subprocess.run(step, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            reason = (completed.stderr.strip().splitlines() or ["unknown error"])[-1]
            print(f"skipped: cannot make the onnxruntime-training virtualenv {venv}: {reason}")
            return None
    if subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        print(f"skipped: {venv} has no usable GradientGraphBuilder")
        return None
    return python


def loss_model_bytes(cloak_path: Path, scratch: Path) -> bytes:
    """The cloak graph's forward part up to the loss, plus the summed loss that seeds the gradient."""
    import onnx
    from onnx import helper

    loss_path = scratch / "loss.onnx"
    onnx.utils.extract_model(str(cloak_path), str(loss_path), list(INPUTS), ["loss"])
    model = onnx.load(loss_path)
    model.graph.node.append(helper.make_node("ReduceSum", ["loss"], [SEED], keepdims=0, name=SEED))
    model.graph.output.append(helper.make_tensor_value_info(SEED, onnx.TensorProto.FLOAT, []))
    model.ir_version = TRAINING_IR_VERSION
    return model.SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dlib-resnet")
    parser.add_argument(
        "--venv", type=Path, default=Path.home() / ".cache" / "ulixes-onnx" / "onnxruntime-training"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--worker", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(*args.worker, threads=args.threads, repeats=args.repeats)
        return

    python = ensure_training_venv(args.venv)
    if python is None:
        return
    import onnx

    from ulixes_onnx.cards import get_card
    from ulixes_onnx.engine.adapter import with_canonical_input
    from ulixes_onnx.engine.cloak_graph import build_cloak_graph
    from ulixes_onnx.engine.session import create_session
    from ulixes_onnx.face_model import adapter_spec
    from ulixes_onnx.store import ModelStore

    card = get_card(args.model)
    if card.input is None or card.embedding is None:
        raise SystemExit(f"{args.model} is not an embedding model")
    spec = adapter_spec(card)
    network = with_canonical_input(onnx.load(ModelStore(args.models_dir).get(card).path), spec)
    cloak = build_cloak_graph(network, distance=card.embedding.metric)  # type: ignore[arg-type]
    session = create_session(cloak, threads=args.threads)
    height, width = card.input.size
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (args.batch, 3, height, width)).astype(np.float32)
    forward = create_session(network, threads=args.threads)
    (emb,) = forward.run(None, {"x": x})
    forward_ms = _median_ms(lambda: forward.run(None, {"x": x}), args.repeats)
    feeds = {
        "x": x,
        # Away from the original embedding, so that the positive distance has a gradient too.
        "e_pos": emb + rng.normal(0, 0.05, emb.shape).astype(np.float32),
        "e_neg": rng.normal(0, 0.1, emb.shape).astype(np.float32),
        "margin": np.full(args.batch, 100.0, np.float32),
        "neg_weight": np.ones(args.batch, np.float32),
    }
    (ours,) = session.run(["grad"], feeds)
    ours_ms = _median_ms(lambda: session.run(None, feeds), args.repeats)

    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        cloak_path, loss_path = scratch / "cloak.onnx", scratch / "loss-seeded.onnx"
        onnx.save(cloak, cloak_path)
        loss_path.write_bytes(loss_model_bytes(cloak_path, scratch))
        feeds_path, grad_path = scratch / "feeds.npz", scratch / "grad.npy"
        np.savez(feeds_path, **feeds)
        worker = [str(python), __file__, "--worker", str(loss_path), str(feeds_path), str(grad_path)]
        worker += ["--threads", str(args.threads), "--repeats", str(args.repeats)]
        completed = subprocess.run(worker, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            reason = (completed.stderr.strip().splitlines() or ["unknown error"])[-1]
            print(f"skipped: onnxruntime-training failed on {args.model}: {reason}")
            _write_results(args, {"failure": reason, "forward_ms": forward_ms, "engine_ms": ours_ms})
            return
        training = json.loads(completed.stdout.strip().splitlines()[-1])
        theirs = np.load(grad_path)

    max_abs = float(np.abs(ours - theirs).max())
    relative = max_abs / float(np.abs(theirs).max())
    print(f"{args.model}, B={args.batch}, {args.threads} threads")
    print(
        f"  onnxruntime-training graph: built in {training['build_s']:.2f} s, domains {training['domains']}"
    )
    their_ms = training["gradient_ms"]
    print(
        f"  forward {forward_ms:.2f} ms; forward+gradient: ulixes engine {ours_ms:.2f} ms, "
        f"onnxruntime-training {their_ms:.2f} ms ({their_ms / ours_ms:.2f}x ours)"
    )
    print(f"  input gradient: max abs error {max_abs:.3e}, max relative error {relative:.3e} (of max |grad|)")
    _write_results(
        args,
        {
            "forward_ms": forward_ms,
            "engine_ms": ours_ms,
            "training_ms": their_ms,
            "training_over_engine": their_ms / ours_ms,
            "engine_over_forward": ours_ms / forward_ms,
            "training_build_s": training["build_s"],
            "training_domains": training["domains"],
            "max_abs_error": max_abs,
            "max_relative_error": relative,
        },
    )


def _write_results(args: argparse.Namespace, measured: dict) -> None:
    from ulixes_onnx.bench import machine_description

    report = {
        "date": dt.date.today().isoformat(),
        "model": args.model,
        "batch": args.batch,
        "repeats": args.repeats,
        "machine": machine_description() | {"threads": args.threads, "load_average": os.getloadavg()},
        **measured,
    }
    stem = args.out / f"ortt-{args.model}-{report['date']}"
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    if "failure" in measured:
        table = f"onnxruntime-training failed on {args.model}: {measured['failure']}\n"
    else:
        table = (
            "| model | batch | forward ms | ulixes engine ms | onnxruntime-training ms | training / engine "
            "| max relative gradient error |\n|---|---|---|---|---|---|---|\n"
            f"| {args.model} | {args.batch} | {measured['forward_ms']:.2f} | {measured['engine_ms']:.2f} "
            f"| {measured['training_ms']:.2f} | {measured['training_over_engine']:.2f} "
            f"| {measured['max_relative_error']:.1e} |\n"
        )
    stem.with_suffix(".md").write_text(
        f"# onnxruntime-training cross-check, {report['date']}\n\n{report['machine']}\n\n{table}"
    )


if __name__ == "__main__":
    from ulixes_onnx.errors import UlixesError

    try:
        main()
    except UlixesError as error:  # an unknown or unbuildable model: one line, not a traceback
        raise SystemExit(f"error: {error}") from None
