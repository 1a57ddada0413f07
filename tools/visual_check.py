"""Look at cloaks where people look: each face region at 1:1, original | cloaked | difference x8.

For each photo (files, folders, globs) this cloaks it with the Python API (`ulixes_onnx.cloaking.files`, which
drives `ulixes_onnx.cloaking.pipeline.Cloaker` and writes the copy as `ulixes-onnx cloak` would, into
OUT/cloaked/), or, with --cloaked DIR, takes the cloaked copy already in DIR (`<stem>_cloaked<ext>` or
the same file name). Per face it writes OUT/<photo>-face<i>-s2_<score>.png: the face's region (its box
grown by a quarter on each side) of the original, of the cloaked copy and their difference amplified 8
times around mid-gray, side by side at the photo's resolution (large faces are cropped, never shrunk),
under a caption with the region's SSIMULACRA2, DSSIM and largest local colour shift; and
OUT/index.html, most visible faces first.

usage: python tools/visual_check.py PHOTOS... --out DIR [--models dlib-resnet,sface] [--target 0.8]
           [--set step=0.02 --set max_rounds=2 ...] [--threads 1] [--cloaked DIR]
"""

from __future__ import annotations

import argparse
import glob
import html
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ulixes_onnx.atomic import write_atomically
from ulixes_onnx.cloaking.files import OutputOptions, PhotoFile, cloak_file, expand_inputs
from ulixes_onnx.cloaking.pipeline import Cloaker
from ulixes_onnx.cloaking.settings import DEFAULT_MODELS, CloakSettings, overrides_from
from ulixes_onnx.cloaking.visibility import colour_shift, face_region, face_visibility
from ulixes_onnx.errors import UlixesError
from ulixes_onnx.faces import detector_from_store
from ulixes_onnx.photos.decoding import read_photo
from ulixes_onnx.store import ModelStore

DIFFERENCE_GAIN = 8
GAP = 4  # pixels of white between the three panels
CAPTION_HEIGHT = 28


@dataclass(frozen=True)
class FacePanel:
    photo: Path
    index: int
    width: int
    ssimulacra2: float
    dssim: float
    colour_shift: float
    image: str


def side_by_side(original: np.ndarray, cloaked: np.ndarray, caption: str) -> np.ndarray:
    """Original | cloaked | difference x8 around mid-gray, under a caption; uint8 RGB, 1:1."""
    difference = cloaked.astype(np.int16) - original.astype(np.int16)
    amplified = np.clip(128 + DIFFERENCE_GAIN * difference, 0, 255).astype(np.uint8)
    height, width = original.shape[:2]
    sheet = np.full((CAPTION_HEIGHT + height, 3 * width + 2 * GAP, 3), 255, np.uint8)
    for column, panel in enumerate((original, cloaked, amplified)):
        left = column * (width + GAP)
        sheet[CAPTION_HEIGHT:, left : left + width] = panel
    cv2.putText(
        sheet, caption, (4, CAPTION_HEIGHT - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA
    )
    return sheet


def cloaked_copy(photo: Path, folder: Path) -> Path:
    """The cloaked copy of `photo` in `folder`: `<stem>_cloaked.*` or a file of the same name."""
    candidates = [*sorted(folder.glob(f"{glob.escape(photo.stem)}_cloaked.*")), folder / photo.name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UlixesError(f"{photo}: no cloaked copy in {folder} ({photo.stem}_cloaked.* or {photo.name})")


def extra_settings(pairs: list[str]) -> dict[str, object]:
    """`name=value` pairs as `CloakSettings` fields (`settings.overrides_from`; the models and the
    target have options of their own)."""
    for pair in pairs:
        name, separator, _ = pair.partition("=")
        if not separator or not name:
            raise UlixesError(f"--set takes name=value, not {pair!r}")
    return overrides_from(pairs, fixed=("models", "target"))


def photo_pairs(args: argparse.Namespace, store: ModelStore) -> list[tuple[Path, Path | str, list]]:
    """Per photo: (original, cloaked copy or the error that stopped it, face boxes)."""
    photos = expand_inputs(args.photos, exclude_suffix="_cloaked")
    if args.cloaked is not None:
        detector = detector_from_store(store)
        pairs = []
        for photo in photos:
            try:
                copy = cloaked_copy(photo.path, args.cloaked)
                boxes = [face.box for face in detector.detect(read_photo(photo.path).rgb8)]
                pairs.append((photo.path, copy, boxes))
            except UlixesError as error:
                pairs.append((photo.path, str(error), []))
        return pairs
    settings = CloakSettings(models=tuple(args.models.split(",")), target=args.target, **args.set)
    cloaker = Cloaker(settings, store=store, threads=args.threads)
    options = OutputOptions(output_dir=args.out / "cloaked", overwrite=True)
    pairs = []
    for photo in photos:
        report = cloak_file(cloaker, PhotoFile(photo.path, photo.subfolder), options)
        if report.error is not None:
            pairs.append((photo.path, report.error, []))
        elif report.output is None:
            pairs.append((photo.path, "no face found, nothing written", []))
        else:
            pairs.append((photo.path, report.output, [face.box for face in report.faces if face.models]))
    return pairs


def write_panels(original_path: Path, cloaked_path: Path, boxes: list, out: Path) -> list[FacePanel]:
    original, cloaked = read_photo(original_path).rgb8, read_photo(cloaked_path).rgb8
    if original.shape != cloaked.shape:
        raise UlixesError(
            f"{cloaked_path}: size {cloaked.shape[:2]} differs from the original's {original.shape[:2]}"
        )
    panels = []
    for index, box in enumerate(boxes):
        visibility = face_visibility(original, cloaked, box)
        rows, cols = face_region(box, original.shape)
        width = round(box[2] - box[0])
        shift = colour_shift(original[rows, cols], cloaked[rows, cols], width)
        name = f"{original_path.stem}-face{index}-s2_{visibility.ssimulacra2:.1f}.png"
        caption = (
            f"{original_path.name} face {index}: SSIMULACRA2 {visibility.ssimulacra2:.1f}, "
            f"DSSIM {visibility.dssim:.4f}, colour shift {shift:.1f}  (original | cloaked | difference "
            f"x{DIFFERENCE_GAIN})"
        )
        sheet = side_by_side(original[rows, cols], cloaked[rows, cols], caption)
        buffer = io.BytesIO()
        Image.fromarray(sheet).save(buffer, "PNG")
        write_atomically(buffer.getvalue(), out / name)
        panels.append(
            FacePanel(original_path, index, width, visibility.ssimulacra2, visibility.dssim, shift, name)
        )
    return panels


def index_html(panels: list[FacePanel], errors: list[str]) -> str:
    rows = "\n".join(
        f"<tr><td>{html.escape(str(p.photo))}</td><td>{p.index}</td><td>{p.width}</td>"
        f"<td>{p.ssimulacra2:.1f}</td><td>{p.dssim:.4f}</td><td>{p.colour_shift:.1f}</td>"
        f'<td><a href="{html.escape(p.image)}">{html.escape(p.image)}</a></td></tr>'
        for p in panels
    )
    images = "\n".join(
        f"<h2>{html.escape(p.photo.name)} face {p.index}: SSIMULACRA2 {p.ssimulacra2:.1f}</h2>\n"
        f'<img src="{html.escape(p.image)}" alt="{html.escape(p.image)}">'
        for p in panels
    )
    problems = "".join(f"<li>{html.escape(error)}</li>" for error in errors)
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>Cloak visual check</title>"
        "<style>img{image-rendering:pixelated;max-width:none}td{padding:0 8px}</style></head><body>\n"
        "<h1>Cloak visual check</h1>\n<p>Face regions at 1:1: original | cloaked | difference x"
        f"{DIFFERENCE_GAIN} around mid-gray. SSIMULACRA2: 100 identical, 90 visually lossless, 70 high "
        "quality, 50 medium. Colour shift: the largest local CIELAB a*b* shift, 2.3 just noticeable. Most "
        "visible first.</p>\n"
        + (f"<ul>{problems}</ul>\n" if problems else "")
        + "<table><tr><th>photo</th><th>face</th><th>width (px)</th><th>SSIMULACRA2</th><th>DSSIM</th>"
        f"<th>colour shift</th><th>image</th></tr>\n{rows}\n</table>\n{images}\n</body></html>\n"
    )


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("photos", nargs="+", help="photo files, folders or globs")
    parser.add_argument("--out", type=Path, required=True, help="folder for the panels and index.html")
    parser.add_argument("--cloaked", type=Path, help="folder of cloaked copies to compare (no cloaking)")
    parser.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help="comma-separated models to cloak with"
    )
    parser.add_argument("--target", type=float, help="the cloak's target distance (default: the card's)")
    parser.add_argument("--threads", type=int, help="threads for the models (default: all cores)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="another Cloaker setting, e.g. step=0.02",
    )
    parser.add_argument("--models-dir", type=Path, help="model store (default: the user's cache)")
    args = parser.parse_args(argv)
    if args.cloaked is not None and not args.cloaked.is_dir():
        parser.error(f"--cloaked {args.cloaked}: not a folder")
    return args


def main(argv: list[str] | None = None) -> int:
    """Write the panels and index.html; 0 when every photo was compared, 1 otherwise."""
    args = parse_arguments(argv)
    try:
        args.set = extra_settings(args.set)
        args.out.mkdir(parents=True, exist_ok=True)
        store = ModelStore(args.models_dir) if args.models_dir else ModelStore()
        panels, errors = [], []
        for original, cloaked, boxes in photo_pairs(args, store):
            if isinstance(cloaked, str):
                errors.append(cloaked if str(original) in cloaked else f"{original}: {cloaked}")
                continue
            try:
                panels += write_panels(original, cloaked, boxes, args.out)
            except UlixesError as error:
                errors.append(str(error))
        panels.sort(key=lambda panel: panel.ssimulacra2)
        write_atomically(index_html(panels, errors).encode(), args.out / "index.html")
    except (UlixesError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    for panel in panels:
        print(
            f"{panel.ssimulacra2:6.1f}  {panel.dssim:.4f}  {panel.colour_shift:4.1f}  {panel.width:5d} px  "
            f"{args.out / panel.image}"
        )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
