"""A quick transfer proxy for a new surrogate: how far a cloak made with other models moves each judge.

For the first `--photos` identities of the folder with at least two photos (in name order), the
photo with the fewest pixels is cloaked with `--cloak-models` at the default settings (or, with
`--cloak PHOTO...`, those photos, each with the other photos of its folder: e.g. the largest faces,
where the polish works). Each judge then
embeds the largest face of the original, of the saved (8-bit) cloaked copy and of the identity's other
photos, as a recogniser would (fresh detection, the judge's own chip layout), and the table gives, in
units of the judge's threshold: the cloaked copy's distance from the original, and the mean distance
from the other photos before and after, with how many of those pairs still match. Much cheaper than
`ulixes-onnx eval --leave-one-out`, and only a proxy for it. The summary also gives the cloak's
visibility (mean face SSIMULACRA2 of the saved copy), the faces protected against the cloak models and
the cloaking seconds.

usage: python benchmarks/transfer_proxy.py [FOLDER] [--photos 6] [--cloak PHOTO ...]
           [--cloak-models dlib-resnet] [--ensemble joint] [--judges memento-face,faceres,sface]
           [--set FIELD=VALUE ...] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ulixes_onnx.cloaking.pipeline import Cloaker
from ulixes_onnx.cloaking.settings import CloakSettings, CloakSettingsError, overrides_from
from ulixes_onnx.face_model import FaceModel
from ulixes_onnx.faces import extract_chips
from ulixes_onnx.photos.decoding import read_photo

DEFAULT_FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "faces-dev"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def largest_face_embedding(cloaker: Cloaker, model: FaceModel, pixels: np.ndarray) -> np.ndarray:
    face = max(cloaker.detector.detect(pixels), key=lambda found: found.width)
    return model.embed(extract_chips(pixels, [face], model.chip_spec).chips)[0]


def _photos_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.suffix.lower() in PHOTO_SUFFIXES)


def given_photos(photos: list[Path]) -> list[tuple[Path, list[Path]]]:
    """(photo to cloak, the other photos of its folder) for each of `photos`."""
    return [(photo, [path for path in _photos_in(photo.parent) if path != photo]) for photo in photos]


def chosen_photos(folder: Path, count: int) -> list[tuple[Path, list[Path]]]:
    """(photo to cloak, the identity's other photos) for the first `count` identities with two photos."""
    chosen = []
    for identity in sorted(path for path in folder.iterdir() if path.is_dir()):
        photos = _photos_in(identity)
        if len(photos) >= 2:
            smallest = min(photos, key=lambda path: np.prod(Image.open(path).size))
            chosen.append((smallest, [path for path in photos if path != smallest]))
        if len(chosen) == count:
            break
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, nargs="?", default=DEFAULT_FOLDER)
    parser.add_argument("--photos", type=int, default=6)
    parser.add_argument("--cloak", type=Path, nargs="+", metavar="PHOTO", help="cloak these photos instead")
    parser.add_argument("--cloak-models", default="dlib-resnet")
    parser.add_argument("--ensemble", default=CloakSettings().ensemble, help="how cloak models combine")
    parser.add_argument("--judges", default="memento-face,faceres,sface")
    parser.add_argument(
        "--set",
        nargs="*",
        action="extend",
        default=[],
        metavar="FIELD=VALUE",
        help="other settings, e.g. smoothing=2",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    try:
        overrides = overrides_from(args.set, fixed=("models", "ensemble"))
    except CloakSettingsError as error:
        parser.error(str(error))
    settings = CloakSettings(models=tuple(args.cloak_models.split(",")), ensemble=args.ensemble, **overrides)
    cloaker = Cloaker(settings, threads=1)
    judges = [FaceModel(name, threads=1) for name in args.judges.split(",")]
    # Per judge: cloaked vs original, others' mean clean and cloaked, matched clean, cloaked, pairs.
    sums = {judge.name: np.zeros(6) for judge in judges}
    lines = [
        "| photo (face SSIMULACRA2) | judge | cloaked vs original | others: clean | others: cloaked "
        "| matched |",
        "|---|---|---|---|---|---|",
    ]
    chosen = given_photos(args.cloak) if args.cloak else chosen_photos(args.folder, args.photos)
    faces, protected, quality, seconds = 0, 0, 0.0, 0.0
    for photo, others in chosen:
        original = read_photo(photo).rgb8
        result = cloaker.cloak(original)
        cloaked = np.clip(np.rint(result.image), 0, 255).astype(np.uint8)
        faces += len(result.faces)
        protected += sum(face.protected for face in result.faces)
        quality += sum(face.ssimulacra2 for face in result.faces)
        scores = ", ".join(f"{face.ssimulacra2:.1f}" for face in result.faces)
        seconds += result.seconds
        print(f"{photo.parent.name}/{photo.name}: {[f.protected for f in result.faces]}", file=sys.stderr)
        other_pixels = [read_photo(path).rgb8 for path in others]
        for judge in judges:
            threshold = judge.threshold
            clean, seen = (largest_face_embedding(cloaker, judge, pixels) for pixels in (original, cloaked))
            rest = np.stack([largest_face_embedding(cloaker, judge, pixels) for pixels in other_pixels])
            moved = judge.distance(seen[None], clean[None])[0] / threshold
            before = judge.distance(clean[None], rest) / threshold
            after = judge.distance(seen[None], rest) / threshold
            row = [moved, before.mean(), after.mean(), (before < 1).sum(), (after < 1).sum(), len(rest)]
            sums[judge.name] += row
            lines.append(
                f"| {photo.parent.name}/{photo.name} ({scores}) | {judge.name} | {moved:.2f} "
                f"| {before.mean():.2f} | {after.mean():.2f} "
                f"| {row[3]:.0f}/{len(rest)} -> {row[4]:.0f}/{len(rest)} |"
            )
    count = len(chosen)
    lines += [
        "",
        f"Cloak {settings.label}: {protected}/{faces} faces protected, face SSIMULACRA2 mean "
        f"{quality / max(faces, 1):.1f}, {seconds:.0f} s of cloaking.",
        "",
        "| judge | mean cloaked vs original | others: clean | others: cloaked | matched |",
        "|---|---|---|---|---|",
    ]
    for name, total in sums.items():
        lines.append(
            f"| {name} | {total[0] / count:.2f} | {total[1] / count:.2f} | {total[2] / count:.2f} | "
            f"{total[3]:.0f}/{total[5]:.0f} -> {total[4]:.0f}/{total[5]:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
