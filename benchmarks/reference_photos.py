"""What `--reference` buys: pair-based protection of a cloaked photo against the person's other photos,
with and without other photos of the person given as references.

For every identity of the folder with at least `--refs` + 3 photos (in name order): the first photo is
cloaked, the next `--refs` are its references, and the rest are the judges: a judge photo matches the
cloaked one when dlib-resnet places them closer than its threshold (0.6), as a recogniser holding that
photo would. Each cloaked photo is cloaked twice, plain and with references, at the same settings.

usage: python benchmarks/reference_photos.py [FOLDER] [--refs 2] [--level mid] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from ulixes_onnx.cloaking.pipeline import Cloaker
from ulixes_onnx.cloaking.references import embed_references
from ulixes_onnx.cloaking.settings import LEVELS, CloakSettings
from ulixes_onnx.face_model import FaceModel
from ulixes_onnx.faces import extract_chips
from ulixes_onnx.photos.decoding import read_photo

DEFAULT_FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "faces-dev"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def largest_face_embedding(cloaker: Cloaker, model: FaceModel, pixels: np.ndarray) -> np.ndarray:
    face = max(cloaker.detector.detect(pixels), key=lambda found: found.width)
    return model.embed(extract_chips(pixels, [face], model.chip_spec).chips)[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, nargs="?", default=DEFAULT_FOLDER)
    parser.add_argument("--refs", type=int, default=2)
    parser.add_argument("--level", choices=tuple(LEVELS), default=CloakSettings().level)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cloaker = Cloaker(CloakSettings(level=args.level), threads=1)
    (model,) = cloaker.models
    rows, totals = [], {"plain": [0, 0, []], "references": [0, 0, []]}
    for identity in sorted(path for path in args.folder.iterdir() if path.is_dir()):
        photos = sorted(path for path in identity.iterdir() if path.suffix.lower() in PHOTO_SUFFIXES)
        if len(photos) < args.refs + 3:
            continue
        cloaked, references, judges = photos[0], photos[1 : 1 + args.refs], photos[1 + args.refs :]
        judged = np.stack([largest_face_embedding(cloaker, model, read_photo(p).rgb8) for p in judges])
        pixels = read_photo(cloaked).rgb8
        clean = model.distance(largest_face_embedding(cloaker, model, pixels)[None], judged)
        for mode in totals:
            cloaker.references = (
                embed_references(references, cloaker.models, cloaker.detector) if mode == "references" else {}
            )
            result = cloaker.cloak(pixels)
            face = max(result.faces, key=lambda report: report.face.width)
            seen = np.clip(np.rint(result.image), 0, 255).astype(np.uint8)
            distances = model.distance(largest_face_embedding(cloaker, model, seen)[None], judged)
            matched = int((distances < model.threshold).sum())
            totals[mode][0] += matched
            totals[mode][1] += len(judges)
            totals[mode][2].append(face.ssimulacra2)
            rows.append(
                f"| {cloaked.relative_to(args.folder)} | {face.face.width:.0f} | {mode} | "
                f"{' '.join(f'{d:.2f}' for d in clean)} | {' '.join(f'{d:.2f}' for d in distances)} | "
                f"{matched}/{len(judges)} | {face.ssimulacra2:.1f} |"
            )
            print(rows[-1], file=sys.stderr, flush=True)
    command = " ".join(["python", *(os.path.relpath(a) if os.path.exists(a) else a for a in sys.argv)])
    lines = [
        f"# Reference photos (`--reference`), `--level {args.level}`",
        "",
        "dlib-resnet distances from each judge photo (the person's photos that are neither cloaked nor "
        "references) to the cloaked photo; a judge under 0.6 matches it.",
        "",
        "| cloaked photo | face width (px) | cloak | clean distances | cloaked distances | judges matching "
        "| SSIMULACRA2 |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        *(
            f"{mode}: {matched}/{count} judge photos match ({100 * matched / max(count, 1):.1f} %), "
            f"SSIMULACRA2 mean {np.mean(scores):.1f}, min {np.min(scores):.1f}"
            for mode, (matched, count, scores) in totals.items()
        ),
        "",
        f"Command: `{command}`",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
