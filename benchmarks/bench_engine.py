"""Forward vs forward+gradient time of a model's cloak graph in onnxruntime.

usage: python benchmarks/bench_engine.py MODEL.onnx [--input NAME] [--scale S] [--offset O]
       [--layout NCHW|NHWC] [--bgr] [--prewhiten] [--threads T] [--repeats R]

The model is adapted to the canonical chip (native = x * scale + offset), its cloak graph is built,
and both run at B=1 and B=8; medians over repeats after warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnx

from ulixes_onnx.engine.adapter import InputSpec, with_canonical_input
from ulixes_onnx.engine.cloak_graph import build_cloak_graph
from ulixes_onnx.engine.session import available_cores, create_session


def median_ms(run, repeats: int) -> float:
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--input", default=None, help="native input name (default: the only one)")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--offset", type=float, default=0.0)
    parser.add_argument("--layout", choices=["NCHW", "NHWC"], default="NCHW")
    parser.add_argument("--bgr", action="store_true")
    parser.add_argument("--prewhiten", action="store_true")
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    model = onnx.load(args.model)
    spec = InputSpec(
        args.input or model.graph.input[0].name,
        layout=args.layout,
        channel_order="BGR" if args.bgr else "RGB",
        scale=(args.scale,) * 3,
        offset=(args.offset,) * 3,
        prewhiten=args.prewhiten,
    )
    network = with_canonical_input(model, spec)
    start = time.perf_counter()
    cloak = build_cloak_graph(network)
    print(f"cloak graph built in {time.perf_counter() - start:.2f} s, threads={args.threads}")
    forward = create_session(network, threads=args.threads)
    gradient = create_session(cloak, threads=args.threads)
    dims = network.graph.input[0].type.tensor_type.shape.dim
    height, width = dims[2].dim_value, dims[3].dim_value
    rng = np.random.default_rng(0)
    print("batch  forward ms  forward+gradient ms  ratio")
    for batch in (1, 8):
        x = rng.uniform(-1, 1, (batch, 3, height, width)).astype(np.float32)
        emb = forward.run(None, {"x": x})[0]
        feeds = {
            "x": x,
            "e_pos": emb,
            "e_neg": rng.standard_normal(emb.shape).astype(np.float32),
            "margin": np.full(batch, 100.0, np.float32),
            "neg_weight": np.zeros(batch, np.float32),
        }
        forward_ms = median_ms(lambda x=x: forward.run(None, {"x": x}), args.repeats)
        gradient_ms = median_ms(lambda feeds=feeds: gradient.run(None, feeds), args.repeats)
        ratio = gradient_ms / forward_ms
        print(f"{batch:5d}  {forward_ms:10.2f}  {gradient_ms:19.2f}  {ratio:5.2f}")


if __name__ == "__main__":
    main()
