"""Whether two versions of the code cloak photos alike: the check that a speed-up changed no result.

usage: python benchmarks/same_cloak.py PHOTO... --tree BEFORE --tree AFTER [--threads 1] [--json OUT]
                                     [--set FIELD=VALUE ...]

Each version (a checkout of the repository) cloaks each photo in a process of its own, with the
default settings (or those `--set` changes: `CloakSettings` fields, e.g. `momentum=0.5`,
`models=dlib-resnet,facenet-vggface2`), twice: through `Cloaker.cloak` (the cloaked pixels as floats,
before any rounding) and through `cloak_files` as the `cloak` command does (the saved file, decoded
again). The table gives, per photo, the largest difference between the two versions' cloaked pixels
(float and saved file) and whether every face's steps, stop reasons, rounds and protection agree, with
the largest differences of the measured distances and visibility, and each version's peak memory (the
process's resident set, model sessions included). The built-in sample (the astronaut) is always
checked first.

onnxruntime is run with `--threads` threads (the same in both versions): its results may depend on
how a reduction is split between threads.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def worker(photo: Path, threads: int, output: Path, fields: dict[str, object]) -> dict:
    """Cloak one photo both ways with this process's version of the code; the pixels go to `output`."""
    import ulixes_onnx
    from ulixes_onnx.photos.decoding import read_photo

    settings = ulixes_onnx.CloakSettings(**fields)
    cloaker = ulixes_onnx.Cloaker(settings, threads=threads)
    pixels = read_photo(photo).rgb8
    result = cloaker.cloak(pixels)
    with tempfile.TemporaryDirectory() as folder:
        options = ulixes_onnx.OutputOptions(output_dir=Path(folder), overwrite=True)
        report = next(ulixes_onnx.cloak_files(cloaker, [ulixes_onnx.PhotoFile(photo)], options))
        saved = read_photo(report.output).rgb8
    np.savez(output, image=result.image, saved=saved)
    return {
        "api": [_face(face) for face in result.faces],
        "file": [_face(face) for face in report.faces],
        "peak RSS (MB)": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _face(face: object) -> dict:
    return {
        "box": [round(value, 3) for value in face.box],
        "rounds": face.rounds,
        "protected": face.protected,
        "ssimulacra2": face.ssimulacra2,
        "dssim": face.dssim,
        "models": {
            name: {
                "steps": outcome.steps,
                "stop_reason": outcome.stop_reason,
                "chip_dssim": outcome.chip_dssim,
                "chip_distance": outcome.chip_distance,
                "distance": outcome.distance,
            }
            for name, outcome in face.models.items()
        },
    }


def run_worker(tree: Path, photo: Path, threads: int, output: Path, fields: dict[str, object]) -> dict:
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(photo)]
    command += ["--threads", str(threads), "--pixels", str(output)]
    # Parsed once, in this tree: a worker's tree may predate the parser.
    command += ["--fields", json.dumps(fields)]
    finished = subprocess.run(command, cwd=tree, capture_output=True, text=True, env=environment)
    if finished.returncode:
        raise SystemExit(f"the worker failed in {tree}:\n{finished.stderr}")
    return json.loads(finished.stdout)


def _discrete(face: dict) -> dict:
    """What must be equal, not merely close: steps, stop reasons, rounds and protection."""
    return {
        "rounds": face["rounds"],
        "protected": face["protected"],
        "models": {name: (m["steps"], m["stop_reason"]) for name, m in face["models"].items()},
    }


def _largest_difference(before: list[dict], after: list[dict], key: str) -> float:
    values = [
        abs(a["models"][name][key] - b["models"][name][key])
        for a, b in zip(before, after, strict=True)
        for name in a["models"]
    ]
    return max(values, default=0.0)


def compare(before: dict, after: dict, pixels_before: Path, pixels_after: Path) -> dict:
    with np.load(pixels_before) as first, np.load(pixels_after) as second:
        image = float(np.abs(first["image"].astype(np.float64) - second["image"]).max())
        saved = int(np.abs(first["saved"].astype(np.int16) - second["saved"]).max())
        saved_changed = int(np.any(first["saved"] != second["saved"], axis=-1).sum())
    comparison = {"max |float pixel difference|": image, "max |saved pixel difference|": saved}
    comparison["saved pixels that differ"] = saved_changed
    comparison["peak RSS (MB), before / after"] = [round(run["peak RSS (MB)"]) for run in (before, after)]
    for mode in ("api", "file"):
        faces_before, faces_after = before[mode], after[mode]
        same_faces = [face["box"] for face in faces_before] == [face["box"] for face in faces_after]
        comparison[f"{mode}: same faces, steps, stop reasons, rounds"] = same_faces and [
            _discrete(face) for face in faces_before
        ] == [_discrete(face) for face in faces_after]
        if same_faces:
            comparison[f"{mode}: max |distance difference|"] = _largest_difference(
                faces_before, faces_after, "distance"
            )
            for key, name in (("ssimulacra2", "SSIMULACRA2"), ("dssim", "face DSSIM")):
                pairs = zip(faces_before, faces_after, strict=True)
                comparison[f"{mode}: max |{name} difference|"] = max(
                    (abs(a[key] - b[key]) for a, b in pairs), default=0.0
                )
        comparison[f"{mode}: steps and stop reasons"] = [
            {name: [m["steps"], m["stop_reason"]] for name, m in face["models"].items()}
            for face in faces_after
        ]
    return comparison


def sample_photo(folder: Path) -> Path:
    from PIL import Image

    from ulixes_onnx.photos import samples

    path = folder / "astronaut.png"
    Image.fromarray(samples.astronaut()).save(path)
    return path


def markdown(labels: list[str], results: dict[str, dict]) -> str:
    keys = list(dict.fromkeys(key for result in results.values() for key in result))
    lines = [f"| {' vs '.join(labels)} | {' | '.join(results)} |", f"|---|{'---|' * len(results)}"]
    for key in keys:
        cells = []
        for result in results.values():
            value = result.get(key, "-")
            cells.append(f"{value:.3g}" if isinstance(value, float) else json.dumps(value))
        lines.append(f"| {key} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("photos", nargs="*", type=Path)
    parser.add_argument("--tree", action="append", type=Path, help="a checkout (give two: before, after)")
    parser.add_argument("--label", action="append", help="a name per --tree")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write every number here")
    parser.add_argument("--set", action="append", default=[], help="FIELD=VALUE of CloakSettings")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pixels", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--fields", type=json.loads, default={}, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.photos[0], args.threads, args.pixels, args.fields)))
        return
    from ulixes_onnx.cloaking.settings import CloakSettingsError, overrides_from

    try:
        fields = overrides_from(args.set)
    except CloakSettingsError as error:
        raise SystemExit(str(error)) from None
    if not args.tree or len(args.tree) != 2:
        raise SystemExit("give two --tree checkouts: before and after")
    labels = args.label or [str(tree) for tree in args.tree]
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        photos = [sample_photo(Path(folder)), *(photo.resolve() for photo in args.photos)]
        for photo in photos:
            runs, pixels = [], []
            for number, tree in enumerate(args.tree):
                pixels.append(Path(folder) / f"{photo.stem}-{number}.npz")
                runs.append(run_worker(tree.resolve(), photo, args.threads, pixels[-1], fields))
            results[photo.name] = compare(*runs, *pixels)
    if args.json:
        record = {"labels": labels, "settings": args.set, "photos": results}
        args.json.write_text(json.dumps(record, indent=2))
    print(markdown(labels, results))


if __name__ == "__main__":
    main()
