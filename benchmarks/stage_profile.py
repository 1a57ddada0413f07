"""Where the time of cloaking one photo goes, stage by stage, for one or several versions of the code.

usage: python benchmarks/stage_profile.py PHOTO... [--tree DIR --label NAME [--models-dir DIR]]...
                                           [--clock wall|cpu]

Each version (`--tree`: a checkout of the repository; default this one) is measured in processes of
its own, the versions taking turns measurement by measurement, so that a busier minute of a shared
machine hits them alike; compare the ratios of one table, not numbers across tables. Per version:

- `--help` and `cloak PHOTO` run as the user runs them (`python -m ulixes_onnx`), process start
  included: wall seconds, the median of `--cli-repeats` runs;
- per photo, in a process of its own: the imports the `cloak` command needs, loading the models, then
  the photo cloaked by `cloak_file` (after a two-step warm-up on it) with every stage timed. A stage's
  time excludes the stages it calls, which are listed under it (verification's re-detection under
  "verify"). Imports and loading are the medians over the photos' processes.

The loop is the slowest, noisiest stage: "outside the cloak loop" is each photo's total without it.
Inside it, "gradient step" is the models' cloak graphs (onnxruntime) and the loop's own row the NumPy
and OpenCV work on the faces' canvases.

`--clock cpu` measures the CPU seconds of the process (all its threads) instead of wall seconds: the
work done, which a machine busy with other work stretches less than the wall time.

The built-in sample (the astronaut) is always measured first; the photos given are added to it.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}

# (module, attribute, stage): what is timed. A method is given as "Class.method". Functions imported
# by name into another module are timed where the pipeline looks them up. Modules are named as before
# and after the package split (`pipeline` became `cloaking.pipeline`); missing ones are skipped, so
# that older and newer versions of the code can be profiled by the same list.
TIMED = [
    (module, attribute, stage)
    for modules, attribute, stage in [
        (("pipeline", "cloaking.pipeline"), "Cloaker.__init__", "load models"),
        (("faces.align",), "five_point_predictor", "load landmark model"),
        (("files", "cloaking.files"), "read_photo", "decode"),
        (("files", "cloaking.files"), "decode_photo", "decode"),
        (("files", "cloaking.files"), "encode_photo", "encode"),
        (("files", "cloaking.files"), "write_encoded", "write file"),
        (("files", "cloaking.files"), "write_photo", "write file"),
        (("files", "cloaking.files"), "_write", "save and re-measure"),
        (("faces.mtcnn",), "MTCNN.detect", "detect"),
        (("faces.align",), "dlib_landmarks", "landmarks"),
        (("pipeline", "cloaking.pipeline"), "extract_chips", "align chips"),
        (("pipeline", "cloaking.pipeline"), "make_canvas", "canvases"),
        (("recognition", "face_model"), "FaceModel.embed", "embed"),
        (("recognition", "face_model"), "FaceModel.step", "gradient step (onnxruntime)"),
        (("pipeline", "cloaking.pipeline"), "cloak_canvases", "cloak loop"),
        (("cloaking.polish",), "polish", "perceptual polish"),
        (("cloaking.visibility",), "Ssimulacra2Reference.score_and_gradient", "SSIMULACRA2 gradient"),
        (("pipeline", "cloaking.pipeline"), "Cloaker.photo_delta", "paste back"),
        (("pipeline", "cloaking.pipeline"), "Cloaker.verify", "verify"),
        (("pipeline", "cloaking.pipeline"), "Cloaker.remeasure", "re-measure"),
        (("pipeline", "cloaking.pipeline"), "face_visibility", "visibility (SSIMULACRA2, DSSIM)"),
    ]
    for module in (f"ulixes_onnx.{name}" for name in modules)
]


class StageClock:
    """Exclusive seconds per stage path ("verify/detect"): time spent in a stage minus its sub-stages."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self.seconds: dict[str, float] = {}
        self._stack: list[list] = []  # [path, started, seconds of sub-stages]

    def wrap(self, function: Callable, stage: str) -> Callable:
        @functools.wraps(function)
        def timed(*args: object, **kwargs: object) -> object:
            path = f"{self._stack[-1][0]}/{stage}" if self._stack else stage
            frame = [path, self.now(), 0.0]
            self._stack.append(frame)
            try:
                return function(*args, **kwargs)
            finally:
                self._stack.pop()
                elapsed = self.now() - frame[1]
                self.seconds[path] = self.seconds.get(path, 0.0) + elapsed - frame[2]
                if self._stack:
                    self._stack[-1][2] += elapsed

        return timed

    def take(self) -> dict[str, float]:
        seconds, self.seconds = self.seconds, {}
        return seconds


def instrument(clock: StageClock) -> None:
    for module_name, attribute, stage in TIMED:
        try:
            owner = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        *classes, name = attribute.split(".")
        for class_name in classes:
            owner = getattr(owner, class_name, None)
        if owner is not None and hasattr(owner, name):
            setattr(owner, name, clock.wrap(getattr(owner, name), stage))


@dataclass(frozen=True)
class Tree:
    """A checkout to measure and the model store its processes use."""

    path: Path
    models_dir: Path | None

    def run(self, command: list[str]) -> subprocess.CompletedProcess:
        environment = {**os.environ, "PYTHONPATH": str(self.path)}
        if self.models_dir is not None:
            environment["ULIXES_ONNX_MODELS_DIR"] = str(self.models_dir)
        return subprocess.run(command, cwd=self.path, capture_output=True, text=True, env=environment)


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_seconds(command: list[str], tree: Tree, clock: str) -> float:
    """Wall seconds of `command`, or with the cpu clock the CPU seconds of its process."""
    now = time.perf_counter if clock == "wall" else _children_cpu_seconds
    started = now()
    tree.run(command)
    return now() - started


def interleaved_seconds(command: list[str], trees: list[Tree], repeats: int, clock: str) -> list[float]:
    """Median seconds of `command` run from each tree, the trees taking turns."""
    times: list[list[float]] = [[] for _ in trees]
    for _ in range(repeats):
        for tree, tree_times in zip(trees, times, strict=True):
            tree_times.append(process_seconds(command, tree, clock))
    return [statistics.median(tree_times) for tree_times in times]


def run_worker(tree: Tree, photo: Path, threads: int, clock: str) -> dict:
    script = str(Path(__file__).resolve())
    worker = tree.run(
        [sys.executable, script, "--worker", "--threads", str(threads), "--clock", clock, str(photo)]
    )
    if worker.returncode:
        raise SystemExit(f"the worker failed in {tree.path}:\n{worker.stderr}")
    return json.loads(worker.stdout)


def measure(trees: list[Tree], photos: list[Path], threads: int, cli_repeats: int, clock: str) -> list[dict]:
    """Every measurement of each version of the code (run from its checkout), the versions taking
    turns measurement by measurement so that a busier minute of the machine hits them alike."""
    python = sys.executable
    for tree in trees:
        # Graphs derived from the models (keyed by the engine's version) are made before any timing.
        tree.run([python, "-c", "import ulixes_onnx; ulixes_onnx.Cloaker()"])
    cli = "cloak (CLI, process start included)"
    runs: list[dict] = [{"clock": clock, cli: {}, "photos": {}} for _ in trees]
    processes = {"python -c pass": [python, "-c", "pass"], "--help": [python, "-m", "ulixes_onnx", "--help"]}
    for key, command in processes.items():
        for run, seconds in zip(runs, interleaved_seconds(command, trees, cli_repeats, clock), strict=True):
            run[key] = seconds
    workers: list[list[dict]] = [[] for _ in trees]
    with tempfile.TemporaryDirectory() as output:
        cloak = [python, "-m", "ulixes_onnx", "cloak", "--output-dir", output, "--overwrite"]
        for photo in photos:
            command = [*cloak, "--threads", str(threads), str(photo)]
            seconds = interleaved_seconds(command, trees, cli_repeats, clock)
            for run, photo_seconds in zip(runs, seconds, strict=True):
                run["cloak (CLI, process start included)"][photo.name] = photo_seconds
            for tree, run, tree_workers in zip(trees, runs, workers, strict=True):
                result = run_worker(tree, photo, threads, clock)
                run["photos"][photo.name] = result["photo"]
                tree_workers.append(result)
    for run, tree_workers in zip(runs, workers, strict=True):
        run["imports"] = statistics.median(result["imports"] for result in tree_workers)
        stages = {stage for result in tree_workers for stage in result["loading"]}
        run["loading"] = {
            stage: statistics.median(result["loading"].get(stage, 0.0) for result in tree_workers)
            for stage in sorted(stages)
        }
    return runs


def worker(photo: Path, threads: int, clock_name: str) -> dict:
    """The in-process measurements of one photo, in a process of their own (imports are measured
    cold). A short cloak of the same photo first (two steps, one round) warms the sessions up."""
    now = CLOCKS[clock_name]
    started = now()
    import ulixes_onnx.cli
    import ulixes_onnx.cli.cloak

    imports = now() - started
    # Through the package's public names, which both sides of the package split have.
    Cloaker, OutputOptions = ulixes_onnx.Cloaker, ulixes_onnx.OutputOptions
    photo_file = getattr(ulixes_onnx, "PhotoFile", None) or ulixes_onnx.InputPhoto

    def cloak_file(cloaker: object, source: Path, options: object) -> object:
        return next(ulixes_onnx.cloak_files(cloaker, [photo_file(source)], options))

    clock = StageClock(now)
    instrument(clock)
    cloaker = Cloaker(threads=threads)
    loading = clock.take()
    with tempfile.TemporaryDirectory() as output:
        options = OutputOptions(output_dir=Path(output), overwrite=True)
        short = cloaker.with_settings(replace(cloaker.settings, max_steps=2, max_rounds=1))
        cloak_file(short, photo, options)
        clock.take()
        started = now()
        report = cloak_file(cloaker, photo, options)
        total = now() - started
    stages = clock.take()
    stages["(other)"] = total - sum(stages.values())
    faces = sum(1 for face in report.faces if face.models)
    return {
        "imports": imports,
        "loading": loading,
        "photo": {"total": total, "faces": faces, "stages": stages},
    }


def sample_photo(folder: Path) -> Path:
    from PIL import Image

    try:
        from ulixes_onnx.photos import samples
    except ModuleNotFoundError:
        from ulixes_onnx import samples

    path = folder / "astronaut.png"
    Image.fromarray(samples.astronaut()).save(path)
    return path


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _cells(values: list[float | None]) -> str:
    cells = [_cell(value) for value in values]
    if len(values) > 1 and values[0] and values[-1] is not None:
        cells.append(f"{values[-1] / values[0]:.2f}")
    elif len(values) > 1:
        cells.append("-")
    return " | ".join(cells)


def markdown(labels: list[str], runs: list[dict], clock: str) -> str:
    ratio = ["last/first"] if len(labels) > 1 else []
    header = f"| {{}} | {' | '.join(labels + ratio)} |\n|---|{'---|' * (len(labels) + len(ratio))}"
    lines = [header.format(f"process ({clock} s)")]
    for key in ("python -c pass", "--help"):
        lines.append(f"| `{key}` | {_cells([run[key] for run in runs])} |")
    for photo in runs[0]["cloak (CLI, process start included)"]:
        values = [run["cloak (CLI, process start included)"][photo] for run in runs]
        lines.append(f"| `cloak {photo}` | {_cells(values)} |")
    lines.append(f"| imports of `cloak` (in process) | {_cells([run['imports'] for run in runs])} |")
    stages = list(dict.fromkeys(stage for run in runs for stage in run["loading"]))
    for stage in stages:
        lines.append(f"| {stage} | {_cells([run['loading'].get(stage) for run in runs])} |")
    for photo in runs[0]["photos"]:
        lines.append("")
        faces = runs[0]["photos"][photo]["faces"]
        lines.append(header.format(f"{photo}, {faces} face(s), warm ({clock} s)"))
        stages = list(dict.fromkeys(stage for run in runs for stage in run["photos"][photo]["stages"]))
        ordered = sorted(stages, key=lambda stage: (stage == "(other)", stage))
        for stage in ordered:
            values = [run["photos"][photo]["stages"].get(stage) for run in runs]
            name = "&nbsp;&nbsp;&nbsp;" * stage.count("/") + stage.rsplit("/", 1)[-1]
            lines.append(f"| {name} | {_cells(values)} |")
        totals = [run["photos"][photo]["total"] for run in runs]
        loops = [
            sum(v for stage, v in run["photos"][photo]["stages"].items() if stage.startswith("cloak loop"))
            for run in runs
        ]
        outside = [total - loop for total, loop in zip(totals, loops, strict=True)]
        lines.append(f"| **total** | {_cells(totals)} |")
        lines.append(f"| **outside the cloak loop** | {_cells(outside)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("photos", nargs="*", type=Path)
    parser.add_argument("--tree", action="append", type=Path, help="a checkout to measure (repeatable)")
    parser.add_argument("--label", action="append", help="a column title per --tree")
    parser.add_argument(
        "--models-dir",
        action="append",
        type=Path,
        help="a model store per --tree: versions whose engines differ replace each other's derived "
        "graphs in a shared store, so each would rebuild them on every run",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cli-repeats", type=int, default=3)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--json", type=Path, help="also write every number here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.photos[0], args.threads, args.clock)))
        return
    trees = args.tree or [REPOSITORY]
    labels = args.label or [str(tree) for tree in trees]
    stores = args.models_dir or [None] * len(trees)
    if len(labels) != len(trees) or len(stores) != len(trees):
        raise SystemExit("give one --label (and one --models-dir, if any) per --tree")
    with tempfile.TemporaryDirectory() as folder:
        photos = [sample_photo(Path(folder)), *(photo.resolve() for photo in args.photos)]
        checkouts = [Tree(tree.resolve(), store) for tree, store in zip(trees, stores, strict=True)]
        runs = measure(checkouts, photos, args.threads, args.cli_repeats, args.clock)
    if args.json:
        args.json.write_text(json.dumps(dict(zip(labels, runs, strict=True)), indent=2))
    print(markdown(labels, runs, args.clock))


if __name__ == "__main__":
    main()
