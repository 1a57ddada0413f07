"""How visible the default cloak is on the largest faces of a photo folder, next to a JPEG q90 re-encode.

Finds every face of the folder with the detector, takes the photos of the COUNT largest, cloaks each
with the default Cloaker (or the settings `--set` changes) the way `ulixes-onnx cloak` saves it (the
copy re-encoded like its source) and measures each of those faces' regions (box grown by a quarter per
side) at the photo's resolution: SSIMULACRA2 and DSSIM of the saved copy, SSIMULACRA2 of the cloak
alone (added to the 8-bit original, no re-encoding), and SSIMULACRA2 of the original re-encoded as JPEG
at quality 90 (Pillow's defaults, 4:2:0), the yardstick of "looks unchanged". It also times SSIMULACRA2
per region on one OpenCV thread, and says where the saved copy's score is lost: the shares of its loss
at each of SSIMULACRA2's scales (1x to 32x), in its luma channel Y and in its SSIM error maps
(`visibility.loss_shares`), and gives the largest local colour shift of the saved copy, which the score
weighs lightly (`visibility.colour_shift`).

usage: python benchmarks/visibility_baseline.py [FOLDER] [--count 20] [--extra PHOTO ...] [--level mid]
       [--set FIELD=VALUE ...] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ulixes_onnx.cloaking.files import expand_inputs
from ulixes_onnx.cloaking.pipeline import Cloaker, PhotoPixels
from ulixes_onnx.cloaking.settings import LEVELS, CloakSettings, CloakSettingsError, overrides_from
from ulixes_onnx.cloaking.visibility import (
    colour_shift,
    face_region,
    face_visibility,
    loss_shares,
    ssimulacra2,
)
from ulixes_onnx.faces import detector_from_store
from ulixes_onnx.photos.decoding import decode_photo, read_photo
from ulixes_onnx.photos.encoding import encode_photo, jpeg_region_round_trip
from ulixes_onnx.store import ModelStore

DEFAULT_FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "faces-dev"


def jpeg_q90(pixels: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return np.asarray(Image.open(buffer).convert("RGB"))


def largest_faces(folder: Path, count: int, store: ModelStore) -> list[tuple[Path, float]]:
    """(photo, face width) of the `count` largest detected faces."""
    detector = detector_from_store(store)
    faces = []
    for photo in expand_inputs([str(folder)]):
        for face in detector.detect(read_photo(photo.path).rgb8):
            faces.append((photo.path, face.width))
    return sorted(faces, key=lambda found: -found[1])[:count]


def measure_photo(cloaker: Cloaker, path: Path, widths: list[float]) -> list[dict]:
    """The rows of the faces of `path` whose widths are listed (each the nearest detected face)."""
    photo = read_photo(path)

    def saved(delta) -> np.ndarray:
        return decode_photo(encode_photo(photo, delta), path).rgb8

    started = time.perf_counter()
    (result,) = cloaker.cloak_many(
        [PhotoPixels(photo.rgb8, photo.is_gray, saved, jpeg_region_round_trip(photo))]
    )
    cloak_seconds = time.perf_counter() - started
    original = photo.rgb8
    saved_copy = saved(result.delta)
    cloak_alone = np.clip(np.rint(result.image), 0, 255).astype(np.uint8)
    reencoded = jpeg_q90(original)
    rows = []
    for width in widths:
        face = min(result.faces, key=lambda report: abs(report.face.width - width))
        visibility = face_visibility(original, saved_copy, face.box)
        region_rows, region_cols = face_region(face.box, original.shape)
        region = np.ascontiguousarray(original[region_rows, region_cols])
        started = time.perf_counter()
        ssimulacra2(region, saved_copy[region_rows, region_cols])
        metric_seconds = time.perf_counter() - started
        shares = loss_shares(region, saved_copy[region_rows, region_cols])
        rows.append(
            {
                "photo": str(path.relative_to(path.parents[1])),
                "face_width": round(face.face.width),
                "region": f"{region.shape[1]}x{region.shape[0]}",
                "protected": face.protected,
                "distance": " / ".join(f"{outcome.distance:.2f}" for outcome in face.models.values()),
                "reported": face.ssimulacra2,
                "saved": visibility.ssimulacra2,
                "dssim": visibility.dssim,
                "colour_shift": colour_shift(region, saved_copy[region_rows, region_cols], face.face.width),
                "cloak_alone": face_visibility(original, cloak_alone, face.box).ssimulacra2,
                "jpeg_q90": face_visibility(original, reencoded, face.box).ssimulacra2,
                "metric_ms": 1000 * metric_seconds,
                "loss_by_scale": [round(float(share), 3) for share in shares.sum(axis=(0, 2, 3))],
                "loss_in_luma": float(shares[1].sum()),
                "loss_in_ssim": float(shares[..., 0].sum()),
                "cloak_seconds": cloak_seconds,
                "steps": max(outcome.steps for outcome in face.models.values()),
                "rounds": face.rounds,
            }
        )
    return rows


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        "| photo | face width (px) | region (px) | protected | distance | cloak, saved copy | cloak alone "
        "| JPEG q90 | DSSIM, saved copy | loss by scale 1x/2x/4x/8x/16x/32x (%) | loss in Y, in SSIM (%) "
        "| colour shift (a*b*) | SSIMULACRA2 ms (1 thread) | steps | rounds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['photo']} | {row['face_width']} | {row['region']} "
            f"| {'yes' if row['protected'] else 'no'} | {row['distance']} | {row['saved']:.1f} "
            f"| {row['cloak_alone']:.1f} "
            f"| {row['jpeg_q90']:.1f} | {row['dssim']:.4f} "
            f"| {'/'.join(f'{100 * share:.0f}' for share in row['loss_by_scale'])} "
            f"| {100 * row['loss_in_luma']:.0f}, {100 * row['loss_in_ssim']:.0f} "
            f"| {row['colour_shift']:.1f} | {row['metric_ms']:.0f} | {row['steps']} | {row['rounds']} |"
        )
    saved = np.array([row["saved"] for row in rows])
    jpeg = np.array([row["jpeg_q90"] for row in rows])
    # Scales a region is too small for are missing from its row: they lose nothing.
    width = max(len(row["loss_by_scale"]) for row in rows)
    by_scale = np.mean(
        [np.pad(row["loss_by_scale"], (0, width - len(row["loss_by_scale"]))) for row in rows], axis=0
    )
    lines += [
        "",
        f"SSIMULACRA2 of the saved copy: mean {saved.mean():.1f}, min {saved.min():.1f}; "
        f"JPEG q90: mean {jpeg.mean():.1f}, min {jpeg.min():.1f} ({len(rows)} faces); "
        f"{sum(row['protected'] for row in rows)} of {len(rows)} protected; "
        f"{np.mean([row['steps'] for row in rows]):.1f} loop steps per face (all rounds); largest local "
        f"colour shift mean {np.mean([row['colour_shift'] for row in rows]):.1f}, "
        f"max {max(row['colour_shift'] for row in rows):.1f}. "
        f"Loss by scale, mean: {'/'.join(f'{100 * share:.0f}' for share in by_scale)} %; in Y "
        f"{100 * np.mean([row['loss_in_luma'] for row in rows]):.0f} %, in SSIM maps "
        f"{100 * np.mean([row['loss_in_ssim'] for row in rows]):.0f} %.",
        "",
        f"Command: `{command}`",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, nargs="?", default=DEFAULT_FOLDER)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--extra", nargs="*", default=[], help="more photos (their largest face each)")
    parser.add_argument("--out", type=Path, help="write the markdown table here too")
    parser.add_argument("--level", choices=tuple(LEVELS), default=CloakSettings().level)
    parser.add_argument(
        "--set",
        nargs="*",
        action="extend",
        default=[],
        metavar="FIELD=VALUE",
        help="other settings, e.g. diversity=0 or models=dlib-resnet,sface ensemble=joint",
    )
    args = parser.parse_args()
    try:
        overrides = overrides_from(args.set, fixed=("level",))
    except CloakSettingsError as error:
        parser.error(str(error))
    cv2.setNumThreads(1)
    store = ModelStore()
    chosen = largest_faces(args.folder, args.count, store)
    detector = detector_from_store(store)
    for extra in args.extra:
        path = Path(extra)
        chosen.append((path, max(face.width for face in detector.detect(read_photo(path).rgb8))))
    by_photo: dict[Path, list[float]] = {}
    for path, width in chosen:
        by_photo.setdefault(path, []).append(width)
    cloaker = Cloaker(CloakSettings(level=args.level, **overrides), store=store, threads=1)
    rows = []
    for path, widths in by_photo.items():
        rows += measure_photo(cloaker, path, widths)
        print(rows[-1], file=sys.stderr, flush=True)
    rows.sort(key=lambda row: -row["face_width"])
    command = " ".join(
        ["python", *(os.path.relpath(arg) if os.path.exists(arg) else arg for arg in sys.argv)]
    )
    table = markdown(rows, command)
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
