"""How far our protection claims hold in dlib's own face pipeline.

`ulixes-onnx cloak` reports a face protected when, in the saved copy, our pipeline (MTCNN, dlib's
5-point shape predictor on the box dlib's detector would give, our `ChipSpec` warp, the converted
network) places it at least `protect_distance` from the original. A person using dlib itself detects
with its HOG detector, finds landmarks with its 5- or 68-point shape predictor and cuts the chip with
`dlib.get_face_chip(size=150, padding=0.25)`. For every face of a cloak report this measures:

- ours: the distance the report claims (saved copy vs original, our pipeline);
- dlib 5 / dlib 68: the same distance with dlib's own pipeline on both photos (each photo detected
  on its own, faces matched by box overlap), with the 5- and the 68-point predictor;
- alignment: on the clean photo, the descriptor distance between our chip and dlib's 5-point chip,
  both through dlib's network (what alignment alone changes).

Needs dlib-bin (the test extra). The 68-point predictor is not among the project's data packages: pass
`--landmarks68 shape_predictor_68_face_landmarks.dat` (e.g. from the face_recognition_models sdist).

usage: python benchmarks/dlib_alignment_margin.py REPORT.json [--landmarks68 FILE] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import dlib
import numpy as np

from ulixes_onnx.cards import get_card
from ulixes_onnx.faces import chip_spec, detector_from_store, extract_chips
from ulixes_onnx.photos.decoding import read_photo
from ulixes_onnx.store import ModelStore

SIZE, PADDING = 150, 0.25
THRESHOLD = 0.6


def overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class DlibPipeline:
    def __init__(self, store: ModelStore, landmarks68: Path | None) -> None:
        (five,) = store.source_paths(get_card("dlib-landmarks")).values()
        (network,) = store.source_paths(get_card("dlib-resnet")).values()
        self.detector = dlib.get_frontal_face_detector()
        self.predictors = {"5": dlib.shape_predictor(str(five))}
        if landmarks68 is not None:
            self.predictors["68"] = dlib.shape_predictor(str(landmarks68))
        self.network = dlib.face_recognition_model_v1(str(network))

    def boxes(self, rgb: np.ndarray) -> list:
        # Upsampling once finds faces down to ~40 px, at 4x the time: only for photos of modest size.
        return list(self.detector(rgb, 1 if max(rgb.shape[:2]) <= 1400 else 0))

    def descriptor(self, rgb: np.ndarray, box: object, points: str) -> np.ndarray:
        chip = dlib.get_face_chip(rgb, self.predictors[points](rgb, box), size=SIZE, padding=PADDING)
        return self.chip_descriptor(np.asarray(chip))

    def chip_descriptor(self, chip: np.ndarray) -> np.ndarray:
        return np.asarray(self.network.compute_face_descriptor(np.ascontiguousarray(chip)))


def nearest(boxes: list, target: tuple[float, ...]) -> object | None:
    scored = [(overlap((b.left(), b.top(), b.right(), b.bottom()), target), b) for b in boxes]
    best = max(scored, key=lambda pair: pair[0], default=(0.0, None))
    return best[1] if best[0] >= 0.3 else None


def our_chip(rgb: np.ndarray, box: tuple[float, ...], store: ModelStore) -> np.ndarray | None:
    """Our uint8 dlib chip of the MTCNN face that best overlaps `box`."""
    faces = detector_from_store(store).detect(rgb)
    scored = [(overlap(face.box, box), face) for face in faces]
    score, face = max(scored, key=lambda pair: pair[0], default=(0.0, None))
    if face is None or score < 0.5:
        return None
    chip = extract_chips(rgb, [face], chip_spec("dlib-150-pad0.25", store)).chips[0]
    return np.clip(np.rint((chip.transpose(1, 2, 0) + 1) * 127.5), 0, 255).astype(np.uint8)


def measure(report: dict, dlib_pipeline: DlibPipeline, store: ModelStore) -> list[dict]:
    rows = []
    for face in report["faces"]:
        model = face.get("per_model", {}).get("dlib-resnet")
        if face.get("skipped") or model is None:
            continue
        original = read_photo(face["file"]).rgb8
        cloaked = read_photo(face["output"]).rgb8
        row = {
            "photo": Path(face["file"]).name,
            "width": face["box"][2] - face["box"][0],
            "ours": model["distance"],
            "protect": model["protect_distance"],
        }
        # The HOG box of this face in the original, then the cloaked copy's own HOG box nearest to it.
        before = nearest(dlib_pipeline.boxes(original), tuple(face["box"]))
        if before is None:
            row["note"] = "dlib's detector misses the face in the original"
            rows.append(row)
            continue
        before_box = (before.left(), before.top(), before.right(), before.bottom())
        after = nearest(dlib_pipeline.boxes(cloaked), before_box)
        if after is None:
            row["note"] = "dlib's detector misses the face in the cloaked copy"
        for points in dlib_pipeline.predictors:
            if after is not None:
                row[f"dlib{points}"] = float(
                    np.linalg.norm(
                        dlib_pipeline.descriptor(original, before, points)
                        - dlib_pipeline.descriptor(cloaked, after, points)
                    )
                )
        ours = our_chip(original, tuple(face["box"]), store)
        if ours is not None:
            row["alignment"] = float(
                np.linalg.norm(
                    dlib_pipeline.chip_descriptor(ours) - dlib_pipeline.descriptor(original, before, "5")
                )
            )
        rows.append(row)
    return rows


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(rows: list[dict], report_path: Path) -> str:
    columns = [key for key in ("dlib5", "dlib68") if any(key in row for row in rows)]
    lines = [
        f"# Protection distances in dlib's own pipeline (`{report_path.name}`)",
        "",
        "Distance of each cloaked face (saved copy) from its original: as our pipeline reports it, and in",
        "dlib's pipeline (HOG detector, 5- or 68-point shape predictor, get_face_chip 150 / 0.25, dlib's",
        "network); `alignment` is the descriptor distance between our chip and dlib's 5-point chip of the",
        "clean face. `python benchmarks/dlib_alignment_margin.py REPORT.json --landmarks68 FILE`.",
        "",
        "| photo | face px | ours | "
        + " | ".join(f"{c} | ours - {c}" for c in columns)
        + " | alignment | note |",
        "|---|---|---|" + "---|---|" * len(columns) + "---|---|",
    ]
    for row in rows:
        cells = [row["photo"], f"{row['width']:.0f}", number(row["ours"])]
        for column in columns:
            value = row.get(column)
            cells += [number(value), number(None if value is None else row["ours"] - value)]
        cells += [number(row.get("alignment")), row.get("note", "")]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for column in columns:
        measured = [row for row in rows if column in row]
        gaps = np.array([row["ours"] - row[column] for row in measured])
        values = np.array([row[column] for row in measured])
        protect = measured[0]["protect"] if measured else float("nan")
        lines.append(
            f"- {column}: {len(measured)} faces; ours - {column}: mean {gaps.mean():+.3f}, "
            f"min {gaps.min():+.3f}, max {gaps.max():+.3f}; {column} distance min {values.min():.3f}, "
            f"below protect_distance {protect}: {(values < protect).sum()}, below the threshold "
            f"{THRESHOLD}: {(values < THRESHOLD).sum()}"
        )
    alignment = np.array([row["alignment"] for row in rows if "alignment" in row])
    if alignment.size:
        lines.append(
            f"- alignment (clean faces, our chip vs dlib's 5-point chip): mean {alignment.mean():.3f}, "
            f"max {alignment.max():.3f}"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="A `cloak --json` report of cloaked photos.")
    parser.add_argument("--landmarks68", type=Path, help="dlib's 68-point shape predictor file.")
    parser.add_argument("--out", type=Path, help="Also write the table here.")
    arguments = parser.parse_args()
    store = ModelStore()
    dlib_pipeline = DlibPipeline(store, arguments.landmarks68)
    rows = measure(json.loads(arguments.report.read_text()), dlib_pipeline, store)
    text = markdown(rows, arguments.report)
    print(text)
    if arguments.out:
        arguments.out.write_text(text)


if __name__ == "__main__":
    main()
