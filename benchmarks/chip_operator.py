"""The canvas -> chip operator with NumPy gathers against the scipy.sparse matrix it replaced, in one run.

usage: python -m benchmarks.chip_operator [--rounds 7] [--repeats 20] [--photos PHOTO...] [--out FILE.md]
(run from the checkout's root with -m, so that its own ulixes_onnx is measured, not an installed copy)

The sparse version is kept here, as it was in faces/canvas.py, only to be measured against (scipy comes
with scikit-image in the `test` extra). Per canvas size and chip size, both operators are timed in
turns, round by round, so that a busier moment of the shared machine hits them alike; each cell is the
median over the rounds of the mean over `--repeats` calls. The loop builds one operator per step when
input diversity is on (the default: the chip is jittered) and uses a fixed one when it is off, so a
step costs build + forward + adjoint or forward + adjoint. For scale, the last table times one cloak
step of dlib-resnet on one chip (onnxruntime, one thread), which the operator's share is added to,
and the whole loop (`cloak_canvases`, dlib-resnet, one thread, no stop before `--loop-steps` steps
but the DSSIM bound) runs on the largest face of the astronaut and of each of `--photos`, with input
diversity on and off, the two operators in turns: milliseconds per step.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import scipy
from scipy import sparse

from ulixes_onnx.faces import canvas as canvas_module
from ulixes_onnx.faces.align import photo_pixels_per_chip_pixel
from ulixes_onnx.faces.canvas import ChipOperator, FaceCanvas, anti_alias_sigma, symmetric_blur

# (canvas side, chip size, canvas pixels per chip pixel): a face near the canvas cap of 4 and smaller
# ones; the chip is rotated by 7 degrees, as alignment and the jitter make it.
CASES = [(300, 150, 1.6), (600, 150, 3.8), (450, 224, 1.9), (600, 160, 3.5), (600, 224, 2.6)]


class SparseChipOperator:
    """The previous operator: bilinear sampling as a scipy.sparse matrix and its transpose."""

    def __init__(
        self, canvas_to_chip: np.ndarray, canvas_shape: tuple[int, int], size: int, *, sigma: float
    ) -> None:
        height, width = canvas_shape
        self.size = size
        self.shape = canvas_shape
        self.sigma = sigma
        chip_to_canvas = cv2.invertAffineTransform(np.asarray(canvas_to_chip, np.float64))
        rows, cols = np.mgrid[0:size, 0:size]
        points = np.stack([cols.ravel(), rows.ravel(), np.ones(size * size)])
        x, y = chip_to_canvas @ points
        left, top = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
        fx, fy = x - left, y - top
        entries_row, entries_col, entries_weight = [], [], []
        index = np.arange(size * size)
        for dx, dy, weight in (
            (0, 0, (1 - fx) * (1 - fy)),
            (1, 0, fx * (1 - fy)),
            (0, 1, (1 - fx) * fy),
            (1, 1, fx * fy),
        ):
            cx, cy = left + dx, top + dy
            inside = (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height) & (weight > 0)
            entries_row.append(index[inside])
            entries_col.append((cy * width + cx)[inside])
            entries_weight.append(weight[inside])
        self.sampling = sparse.csr_matrix(
            (
                np.concatenate(entries_weight).astype(np.float32),
                (np.concatenate(entries_row), np.concatenate(entries_col)),
            ),
            shape=(size * size, height * width),
        )
        self.sampling_t = self.sampling.T.tocsr()

    def forward(self, canvas: np.ndarray) -> np.ndarray:
        flat = symmetric_blur(np.ascontiguousarray(canvas, np.float32), self.sigma).reshape(-1, 3)
        return np.ascontiguousarray((self.sampling @ flat).T.reshape(3, self.size, self.size))

    def adjoint(self, chip: np.ndarray) -> np.ndarray:
        flat = np.ascontiguousarray(chip.reshape(3, -1).T, np.float32)
        canvas = np.asarray(self.sampling_t @ flat, np.float32).reshape(*self.shape, 3)
        return symmetric_blur(canvas, self.sigma)


def canvas_to_chip(side: int, size: int, per_chip_pixel: float) -> np.ndarray:
    """A chip rotated by 7 degrees about the canvas centre, `per_chip_pixel` canvas pixels apart."""
    angle = np.deg2rad(7.0)
    linear = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]]) / per_chip_pixel
    centre = np.array([(side - 1) / 2, (side - 1) / 2])
    shift = (size - 1) / 2 - linear @ centre
    return np.hstack([linear, shift[:, None]])


def mean_ms(call: Callable[[], object], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - start) / repeats * 1e3


def measure(side: int, size: int, per_chip_pixel: float, rounds: int, repeats: int) -> dict:
    matrix = canvas_to_chip(side, size, per_chip_pixel)
    shape = (side, side)
    rng = np.random.default_rng(0)
    canvas = rng.normal(size=(*shape, 3)).astype(np.float32)
    chip = rng.normal(size=(3, size, size)).astype(np.float32)
    kinds = {"sparse": SparseChipOperator, "numpy": ChipOperator}
    # The blur does not change what is compared (both operators apply the same one).
    sigma = anti_alias_sigma(photo_pixels_per_chip_pixel(matrix))
    operators = {name: kind(matrix, shape, size, sigma=sigma) for name, kind in kinds.items()}
    forward = {name: op.forward(canvas) for name, op in operators.items()}
    adjoint = {name: op.adjoint(chip) for name, op in operators.items()}
    times: dict[str, dict[str, list[float]]] = {
        name: {"build": [], "forward": [], "adjoint": []} for name in kinds
    }
    for _ in range(rounds):
        for name, kind in kinds.items():
            op = operators[name]
            times[name]["build"].append(
                mean_ms(lambda kind=kind: kind(matrix, shape, size, sigma=sigma), repeats)
            )
            times[name]["forward"].append(mean_ms(lambda op=op: op.forward(canvas), repeats))
            times[name]["adjoint"].append(mean_ms(lambda op=op: op.adjoint(chip), repeats))
    medians = {
        name: {part: statistics.median(values) for part, values in parts.items()}
        for name, parts in times.items()
    }
    # <A x, y> against <x, A^T y> for the new operator (the blur's reflected border aside).
    left = float(np.sum(forward["numpy"].astype(np.float64) * chip))
    right = float(np.sum(canvas.astype(np.float64) * adjoint["numpy"]))
    return {
        "case": f"{side}x{side}, chip {size}, {per_chip_pixel} px/chip px",
        "medians": medians,
        "forward_difference": float(np.abs(forward["numpy"] - forward["sparse"]).max()),
        "adjoint_difference": float(np.abs(adjoint["numpy"] - adjoint["sparse"]).max()),
        "transpose_gap": abs(left - right) / abs(right),
    }


def photo_canvas(photo: np.ndarray, model: object, detector: object) -> FaceCanvas:
    """The canvas of the photo's largest face for `model`'s chip, as the pipeline makes it."""
    from ulixes_onnx.faces import extract_chips

    largest = max(detector.detect(photo), key=lambda face: face.width)
    aligned = extract_chips(photo, [largest], model.chip_spec)
    return canvas_module.make_canvas(photo, aligned.matrices, [model.chip_size[0]], cap=4.0)


def loop_step_ms(photos: list[Path], steps: int, rounds: int) -> list[tuple[str, str, float, float]]:
    """(photo and canvas, diversity, ms per loop step with the sparse operator, with the NumPy one)."""
    from ulixes_onnx.cloaking.loop import LoopSettings, ModelView
    from ulixes_onnx.cloaking.polish import cloak_canvases
    from ulixes_onnx.face_model import FaceModel
    from ulixes_onnx.faces import detector_from_store
    from ulixes_onnx.photos import samples
    from ulixes_onnx.photos.decoding import read_photo

    model = FaceModel("dlib-resnet", threads=1)
    detector = detector_from_store(model.store)
    named = [("astronaut", samples.astronaut())]
    named += [(f"{path.parent.name}/{path.name}", read_photo(path).rgb8) for path in photos]
    rows = []
    for name, photo in named:
        canvas = photo_canvas(photo, model, detector)
        label = f"{name}: canvas {canvas.image.shape[1]}x{canvas.image.shape[0]}, chip 150"
        for diversity in (0.05, 0.0):
            # An unreachable target and no stall stop: every run takes the same number of steps.
            settings = LoopSettings(target=9.0, min_progress=0.0, max_steps=steps, diversity=diversity)
            per_step: dict[str, list[float]] = {"sparse": [], "numpy": []}
            for _ in range(rounds):
                for name_of_kind, kind in (("sparse", SparseChipOperator), ("numpy", ChipOperator)):
                    canvas_module.ChipOperator = kind
                    try:
                        start = time.perf_counter()
                        (result,) = cloak_canvases([ModelView(model, settings)], [canvas])
                        elapsed = time.perf_counter() - start
                    finally:
                        canvas_module.ChipOperator = ChipOperator
                    per_step[name_of_kind].append(elapsed / result.steps * 1e3)
            medians = {kind: statistics.median(values) for kind, values in per_step.items()}
            rows.append((label, f"{diversity}", medians["sparse"], medians["numpy"]))
    return rows


def model_step_ms(rounds: int, repeats: int) -> float | None:
    """One dlib-resnet cloak step on one chip, or None when the model is not built."""
    from ulixes_onnx.errors import UlixesError
    from ulixes_onnx.face_model import FaceModel

    try:
        model = FaceModel("dlib-resnet", threads=1)
    except UlixesError:
        return None
    chips = np.random.default_rng(1).uniform(-1, 1, (1, 3, *model.chip_size)).astype(np.float32)
    embedding = model.embed(chips)
    negative = model.embed(-chips)
    step = lambda: model.step(chips, embedding, negative, 0.1)  # noqa: E731
    step()
    return statistics.median(mean_ms(step, max(1, repeats // 4)) for _ in range(rounds))


def report(
    results: list[dict],
    step_ms: float | None,
    loops: list[tuple[str, str, float, float]],
    arguments: argparse.Namespace,
) -> str:
    photos = "".join(f" {photo}" for photo in ["--photos", *arguments.photos]) if arguments.photos else ""
    lines = [
        "# Canvas -> chip operator: NumPy gathers against scipy.sparse",
        "",
        f"{datetime.now():%Y-%m-%d %H:%M}, {platform.node()}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
        f"Python {platform.python_version()}, NumPy {np.__version__}, OpenCV {cv2.__version__}, "
        f"SciPy {scipy.__version__}.",
        f"Command: `python -m benchmarks.chip_operator --rounds {arguments.rounds} "
        f"--repeats {arguments.repeats} --loop-steps {arguments.loop_steps} --loop-rounds "
        f"{arguments.loop_rounds}{photos}`. "
        "Milliseconds, median over the rounds of the mean over the repeats; ratio = numpy / sparse.",
        "",
        "| case | build sparse | build numpy | forward sparse | forward numpy | adjoint sparse "
        "| adjoint numpy | step, diversity on (build + fwd + adj) sparse -> numpy | ratio "
        "| step, diversity off (fwd + adj) sparse -> numpy | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        old, new = result["medians"]["sparse"], result["medians"]["numpy"]
        on_old, on_new = sum(old.values()), sum(new.values())
        off_old, off_new = old["forward"] + old["adjoint"], new["forward"] + new["adjoint"]
        lines.append(
            f"| {result['case']} | {old['build']:.2f} | {new['build']:.2f} | {old['forward']:.2f} "
            f"| {new['forward']:.2f} | {old['adjoint']:.2f} | {new['adjoint']:.2f} "
            f"| {on_old:.2f} -> {on_new:.2f} | {on_new / on_old:.2f} | {off_old:.2f} -> {off_new:.2f} "
            f"| {off_new / off_old:.2f} |"
        )
    lines += [
        "",
        "| case | max abs difference, forward | max abs difference, adjoint "
        "| relative gap <Ax, y> vs <x, A^T y> (numpy) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['case']} | {r['forward_difference']:.2e} | {r['adjoint_difference']:.2e} "
        f"| {r['transpose_gap']:.2e} |"
        for r in results
    ]
    if step_ms:
        lines += ["", f"One dlib-resnet cloak step on one 150 chip, one thread: {step_ms:.1f} ms."]
    if loops:
        lines += [
            "",
            "The whole loop, milliseconds per step (median over the rounds):",
            "",
            "| face | diversity | sparse | numpy | ratio |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {label} | {d} | {old:.1f} | {new:.1f} | {new / old:.2f} |" for label, d, old, new in loops
        ]
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--photos", type=Path, nargs="*", default=[], help="More faces for the loop.")
    parser.add_argument("--loop-steps", type=int, default=30)
    parser.add_argument("--loop-rounds", type=int, default=3, help="0: no loop measurement.")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = [measure(*case, args.rounds, args.repeats) for case in CASES]
    loops = loop_step_ms(args.photos, args.loop_steps, args.loop_rounds) if args.loop_rounds else []
    text = report(results, model_step_ms(args.rounds, args.repeats), loops, args)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
