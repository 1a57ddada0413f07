"""Throughput measurements behind `ulixes-onnx bench`.

Per model: the plain forward pass and one cloak step (forward + gradient) at each batch size, the
faces per second of the whole cloaking loop at each batch size, steps per face, and the seconds per
face end to end on photo files (decode, detect, align, cloak, paste back, encode, verify), one photo at
a time and for the whole folder in `ulixes-onnx cloak`'s batches. Timings are
medians over repeated runs after a warm-up; this machine may be shared, so compare ratios measured in
the same run rather than absolute numbers across runs.

End-to-end times are also given in forward passes: seconds per face divided by the time of one forward
pass of the first default model (dlib-resnet) on one face, measured in the same run. The unit scales
with the machine, so forward passes per face compare across machines where seconds do not.
"""

from __future__ import annotations

import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

from ulixes_onnx.cloaking.files import OutputOptions, PhotoFile, cloak_file, cloak_files, expand_inputs
from ulixes_onnx.cloaking.loop import ModelView
from ulixes_onnx.cloaking.pipeline import Cloaker
from ulixes_onnx.cloaking.polish import cloak_canvases
from ulixes_onnx.cloaking.settings import DEFAULT_MODELS, CloakSettings
from ulixes_onnx.engine.session import available_cores
from ulixes_onnx.face_model import FaceModel
from ulixes_onnx.faces import chip_spec, detector_from_store, extract_chips
from ulixes_onnx.faces.canvas import FaceCanvas, make_canvas
from ulixes_onnx.photos import samples
from ulixes_onnx.photos.decoding import read_photo
from ulixes_onnx.store import ModelStore

WARMUP_RUNS = 2
LIBRARIES = (
    "ulixes-onnx",
    "onnxruntime",
    "onnx",
    "numpy",
    "opencv-python-headless",
    "pillow",
)


def median_ms(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of `run` in milliseconds, after warm-up runs."""
    for _ in range(WARMUP_RUNS):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def machine_description() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpu": cpu, "cores": available_cores(), "python": platform.python_version(), "versions": versions}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sample_photos(folder: Path, count: int) -> list[Path]:
    """The astronaut photo in `count` variants (shifted, scaled, mirrored, brighter), as JPEG files."""
    base = samples.astronaut()
    variants = [
        base,
        samples.shifted(base, 5.5, -3.2),
        samples.rescaled(base, 1.5),
        np.ascontiguousarray(base[:, ::-1]),
        np.clip(base.astype(np.int16) + 20, 0, 255).astype(np.uint8),
        samples.rescaled(base, 0.8),
    ]
    paths = []
    for index in range(count):
        path = folder / f"sample{index}.jpg"
        Image.fromarray(variants[index % len(variants)]).save(path, quality=92)
        paths.append(path)
    return paths


def face_chips(
    photos: list[Path], store: ModelStore, alignment: str, canvas_cap: float
) -> tuple[np.ndarray, list[FaceCanvas]]:
    """The largest face of every photo as a canonical chip for `alignment`, and as the canvas the
    cloak loop works on."""
    detector = detector_from_store(store)
    layout = chip_spec(alignment, store)
    chips, canvases = [], []
    for path in photos:
        pixels = read_photo(path).rgb8
        faces = detector.detect(pixels)
        if faces:
            aligned = extract_chips(pixels, faces[:1], layout)
            canvas = make_canvas(
                pixels, aligned.matrices, [layout.size], cap=canvas_cap, dlib_pyramids=[layout.dlib_pyramid]
            )
            if canvas is not None:
                chips.append(aligned.chips[0])
                canvases.append(canvas)
    return np.stack(chips), canvases


def forward_pass_ms(store: ModelStore, photos: list[Path], repeats: int, threads: int | None) -> float:
    """The unit of end-to-end times: one forward pass of the first default model on one face, in ms."""
    model = FaceModel(DEFAULT_MODELS[0], store, threads=threads)
    chips, _ = face_chips(photos[:1], store, model.card.input.alignment, CloakSettings().canvas_cap)
    return median_ms(lambda: model.embed(chips[:1]), repeats)


def in_forward_passes(seconds: float | None, unit_ms: float) -> float | None:
    """`seconds` as a number of forward passes of `unit_ms` each."""
    return None if seconds is None else round(1000 * seconds / unit_ms, 1)


def bench_model(
    name: str,
    store: ModelStore,
    photos: list[Path],
    batches: list[int],
    repeats: int,
    threads: int | None,
    unit_ms: float,
) -> dict:
    cloaker = Cloaker(CloakSettings((name,)), store=store, threads=threads)
    model = cloaker.models[0]
    chips, canvases = face_chips(photos, store, model.card.input.alignment, cloaker.settings.canvas_cap)
    settings = cloaker.loop[name]
    per_batch = {}
    for batch in batches:
        x = np.resize(chips, (batch, *chips.shape[1:]))
        embeddings = model.embed(x)
        forward = median_ms(lambda x=x: model.embed(x), repeats)
        step = median_ms(lambda x=x, e=embeddings: model.step(x, e, e, settings.target, 0.0), repeats)
        started = time.perf_counter()
        results = cloak_canvases(
            [ModelView(model, settings)], [canvases[i % len(canvases)] for i in range(batch)]
        )
        loop_seconds = time.perf_counter() - started
        per_batch[str(batch)] = {
            "forward_ms": round(forward, 2),
            "step_ms": round(step, 2),
            "step_over_forward": round(step / forward, 2),
            "step_ms_per_face": round(step / batch, 2),
            "mean_steps_per_face": round(float(np.mean([r.steps for r in results])), 1),
            "faces_per_second": round(batch / loop_seconds, 2),
        }
    return {
        "model": name,
        "threads": threads or available_cores(),
        "batches": per_batch,
        **end_to_end(cloaker, photos, unit_ms),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def end_to_end(cloaker: Cloaker, photos: list[Path], unit_ms: float) -> dict:
    """Seconds per face of `cloaker` on photo files, one at a time and as a folder, and the face
    visibility of the saved copies."""
    with tempfile.TemporaryDirectory() as output:
        options = OutputOptions(output_dir=Path(output), overwrite=True)
        cloak_file(cloaker, PhotoFile(photos[0]), options)  # warm-up
        seconds_per_face = []
        visibility = []
        for photo in photos:
            report = cloak_file(cloaker, PhotoFile(photo), options)
            cloaked = [face for face in report.faces if face.models]
            visibility += [
                {
                    "photo": photo.name,
                    "face_width": round(face.face.width),
                    "ssimulacra2": round(face.ssimulacra2, 2),
                    "dssim": round(face.dssim, 5),
                }
                for face in cloaked
            ]
            if cloaked:
                seconds_per_face.append(report.seconds / len(cloaked))
        # The folder as `ulixes-onnx cloak` does it: photos in batches, the next one decoded meanwhile.
        started = time.perf_counter()
        reports = list(cloak_files(cloaker, [PhotoFile(photo) for photo in photos], options))
        folder_seconds = time.perf_counter() - started
        folder_faces = sum(1 for report in reports for face in report.faces if face.models)
    median_seconds = statistics.median(seconds_per_face) if seconds_per_face else None
    folder_seconds_per_face = folder_seconds / max(1, folder_faces)
    return {
        "end_to_end_seconds_per_face": None if median_seconds is None else round(median_seconds, 3),
        "end_to_end_forward_passes_per_face": in_forward_passes(median_seconds, unit_ms),
        "faces_cloaked_end_to_end": len(visibility),
        # How visible the cloaks of the end-to-end run are, per face of the saved copies.
        "faces": visibility,
        "folder_faces_per_second": round(folder_faces / folder_seconds, 2),
        "folder_seconds_per_face": round(folder_seconds_per_face, 3),
        "folder_forward_passes_per_face": in_forward_passes(folder_seconds_per_face, unit_ms),
    }


def run_bench(
    models: list[str],
    store: ModelStore,
    *,
    batches: list[int],
    repeats: int = 10,
    images: Path | None = None,
    photo_count: int = 6,
    threads: int | None = None,
) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        photos = (
            [photo.path for photo in expand_inputs([str(images)])]
            if images is not None
            else sample_photos(Path(folder), photo_count)
        )
        unit_ms = forward_pass_ms(store, photos, repeats, threads)
        results = [bench_model(name, store, photos, batches, repeats, threads, unit_ms) for name in models]
        default = CloakSettings()
        default_cloak = {
            "settings": default.label,
            "level": default.level,
            **end_to_end(Cloaker(default, store=store, threads=threads), photos, unit_ms),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
    return {
        "machine": machine_description(),
        "repeats": repeats,
        "photos": len(photos),
        # What end-to-end times are counted in: one forward pass of the first default model at batch 1.
        "forward_pass": {"model": DEFAULT_MODELS[0], "batch": 1, "ms": round(unit_ms, 3)},
        "models": results,
        # What `ulixes-onnx cloak` does by default (an ensemble: each model's rows time it alone).
        "default_cloak": default_cloak,
    }
