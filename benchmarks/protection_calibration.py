"""Where a model's protection distance lies: how far from its original a cloaked face must be before the
person's OTHER photos stop matching it.

A face counts as protected against a model when the saved copy lies at least the model's
`protect_distance` from the original (models/*.toml, `[cloak]`). What protection means is that no other
photo of the person matches the cloaked one, and another photo sits at some distance from the original
already, so the distance that protects is a property of the model's same-person distances, measured
here on cloaks rather than assumed.

Input: a dataset folder with its pairs.csv and the cache folders `ulixes-onnx eval --cache-dir DIR`
filled (one folder per cloak configuration, `DIR/<key>/`, e.g. the same cloak at several levels, so that
the saved distances spread). For every same-person pair (a clean, b cloaked) and every model the cloak
was made with, each photo's largest face is embedded as `eval` embeds it: d = how far b's cloaked copy
lies from b, and whether it matches a (distance below the model's threshold). For candidate protection
distances x (multiples of the threshold), the table gives the faces with d >= x and the share of their
same-person pairs that still match: the smallest x from which on that share stays at or below `--tp`
is the distance the data supports. Rows are added at the card's distance for each `--level`.

The cloak's move (b -> b') and the move to another photo of the person (b -> a) are not orthogonal:
rho, the cosine of the angle between them (in the model's own geometry, cosine distances taken as
chords of the unit sphere), is mostly positive. Over every same-person distance, a copy at d from its
original comes nearest another photo at exactly the threshold when d = threshold / sqrt(1 - rho^2):
the worst case each percentile of rho implies is listed too.

usage: python benchmarks/protection_calibration.py DATASET CACHE_DIR... [--tp 0.02] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ulixes_onnx.cloaking.settings import LEVELS
from ulixes_onnx.evaluation.dataset import load_dataset
from ulixes_onnx.evaluation.embeddings import FaceEmbedder
from ulixes_onnx.face_model import FaceModel
from ulixes_onnx.faces import detector_from_store
from ulixes_onnx.photos.decoding import read_photo
from ulixes_onnx.store import ModelStore, sha256_of

# Candidate protection distances, in multiples of the model's threshold: below it a cloaked copy
# matches its own original, so the threshold is the floor.
CANDIDATES = np.round(np.arange(1.00, 1.61, 0.05), 2)


@dataclass(frozen=True)
class SamePair:
    """One same-person pair under one cloak, as one model sees it."""

    configuration: str
    b: str
    saved_distance: float  # cloaked b from clean b
    clean_distance: float  # clean a from clean b
    cloaked_distance: float  # clean a from cloaked b


def cloaked_copies(cache: Path) -> dict[str, Path]:
    """sha256 of each source photo -> its cloaked copy in one configuration's cache folder."""
    copies = {}
    for record_path in cache.glob("*.json"):
        if record_path.name == "config.json":
            continue
        record = json.loads(record_path.read_text())
        if record.get("file"):
            copies[record_path.stem] = cache / record["file"]
    return copies


def same_pairs(
    dataset_root: Path, caches: list[Path], store: ModelStore
) -> tuple[dict[str, FaceModel], dict[str, list[SamePair]], Counter[str]]:
    """The models the caches were cloaked with, every model's same pairs, and how many pairs (per
    configuration) were left out and why."""
    dataset = load_dataset(dataset_root, allow_single=True)
    configurations = {cache: json.loads((cache / "config.json").read_text()) for cache in caches}
    names = sorted({name for config in configurations.values() for name in config["models"]})
    models = {name: FaceModel(name, store, threads=1) for name in names}
    embedder = FaceEmbedder(detector_from_store(store), list(models.values()))
    same = [pair for pair in dataset.pairs if pair.same]
    needed = {photo for pair in same for photo in (pair.a, pair.b)}
    clean = {photo: embedder.embed(read_photo(dataset.path(photo)).rgb8) for photo in sorted(needed)}
    pairs: dict[str, list[SamePair]] = {name: [] for name in names}
    left_out: Counter[str] = Counter()
    for cache, config in configurations.items():
        label = f"{config['settings']['level']} ({cache.name})"
        copies = cloaked_copies(cache)
        cloaked = {}
        for photo in sorted({pair.b for pair in same}):
            copy = copies.get(sha256_of(dataset.path(photo)))
            # None: no copy in the cache; {}: a copy in which no face is found.
            cloaked[photo] = None if copy is None else embedder.embed(read_photo(copy).rgb8) or {}
        for pair in same:
            a, b, b_cloaked = clean[pair.a], clean[pair.b], cloaked[pair.b]
            if a is None or b is None:
                left_out["a clean photo shows no face"] += 1
                continue
            if not b_cloaked:
                # `eval` counts a cloaked copy without a face as no match; here it has no distance.
                why = "no cloaked copy in the cache" if b_cloaked is None else "no face in the cloaked copy"
                left_out[why] += 1
                continue
            for name in config["models"]:
                model = models[name]
                pairs[name].append(
                    SamePair(
                        label,
                        pair.b,
                        float(model.distance(b_cloaked[name], b[name])),
                        float(model.distance(a[name], b[name])),
                        float(model.distance(a[name], b_cloaked[name])),
                    )
                )
    return models, pairs, left_out


def calibration_table(
    threshold: float, pairs: list[SamePair], tp_bar: float, extra: dict[str, float] | None = None
) -> tuple[list[str], float | None]:
    """Markdown rows of the candidates (and of the `extra` named distances) and the smallest candidate
    from which on the share of matching same pairs stays <= tp_bar (None: not even the largest)."""
    saved = np.array([pair.saved_distance for pair in pairs])
    matched = np.array([pair.cloaked_distance < threshold for pair in pairs])
    faces = {(pair.configuration, pair.b): pair.saved_distance for pair in pairs}
    supported = None
    for factor in CANDIDATES[::-1]:
        kept = saved >= factor * threshold
        if kept.any() and matched[kept].mean() > tp_bar:
            break
        if kept.any():
            supported = float(factor * threshold)
    named = [(f"{factor:.2f}", factor * threshold) for factor in CANDIDATES]
    named += [(label, distance) for label, distance in (extra or {}).items()]
    rows = [
        "| x / threshold | x | faces with d >= x | their same pairs | of those matching |",
        "|---|---|---|---|---|",
    ]
    for label, distance in sorted(named, key=lambda item: item[1]):
        kept = saved >= distance
        face_count = sum(value >= distance for value in faces.values())
        rate = f"{matched[kept].mean():.1%} ({int(matched[kept].sum())})" if kept.any() else "-"
        counts = f"{face_count} / {len(faces)} | {int(kept.sum())}"
        rows.append(f"| {label} | {distance:.3f} | {counts} | {rate} |")
    return rows, supported


def alignment_rows(threshold: float, metric: str, pairs: list[SamePair]) -> list[str]:
    """Markdown rows: percentiles of rho and the worst-case protection distance each implies."""

    def chord(distance: np.ndarray | float) -> np.ndarray:
        return np.sqrt(2 * np.asarray(distance)) if metric == "cosine" else np.asarray(distance)

    saved, clean, cloaked = (
        chord([getattr(pair, field) for pair in pairs])
        for field in ("saved_distance", "clean_distance", "cloaked_distance")
    )
    usable = (saved > 0) & (clean > 0)
    rho = (saved**2 + clean**2 - cloaked**2)[usable] / (2 * saved * clean)[usable]
    rows = ["| rho percentile | rho | threshold / sqrt(1 - rho^2) |", "|---|---|---|"]
    for percentile in (5, 50, 95, 100):
        value = float(np.percentile(rho, percentile))
        worst = chord(threshold) / np.sqrt(max(1 - value**2, 1e-9))
        distance = worst**2 / 2 if metric == "cosine" else worst
        rows.append(f"| {percentile} | {value:.3f} | {float(distance):.3f} |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("caches", type=Path, nargs="+", help="configuration folders of an eval cache")
    parser.add_argument("--tp", type=float, default=0.02, help="same-pair TP rate the protection must keep")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    models, pairs, left_out = same_pairs(args.dataset, args.caches, ModelStore())
    lines = [f"# Protection distance calibration on `{args.dataset}`", ""]
    if left_out:
        reasons = "; ".join(f"{why}: {count}" for why, count in left_out.items())
        lines += [f"Same pairs left out: {reasons}", ""]
    for name, model in models.items():
        model_pairs = pairs[name]
        if not model_pairs:
            lines += [f"## {name}", "", "No same pair with a cloaked copy to measure.", ""]
            continue
        card_value = model.card.cloak.protect_distance if model.card.cloak else None
        levels = {f"`{level}`": card_value * factor for level, factor in LEVELS.items()} if card_value else {}
        rows, supported = calibration_table(model.threshold, model_pairs, args.tp, levels)
        saved = np.array([pair.saved_distance for pair in model_pairs])
        clean = np.array([pair.clean_distance for pair in model_pairs])
        lines += [
            f"## {name} (threshold {model.threshold}, card protect_distance {card_value})",
            "",
            f"{len(model_pairs)} same pairs; clean same-pair distance 5th / 50th / 95th percentile "
            f"{' / '.join(f'{value:.3f}' for value in np.percentile(clean, [5, 50, 95]))}; "
            f"saved distance d median {np.median(saved):.3f}, range {saved.min():.3f}-{saved.max():.3f}.",
            "",
            *rows,
            "",
            f"Smallest x from which on at most {args.tp:.0%} of the same pairs match: "
            + (f"**{supported:.3f}**" if supported is not None else "none in range"),
            "",
            *alignment_rows(model.threshold, model.metric, model_pairs),
            "",
        ]
    text = "\n".join(lines)
    if args.out:
        args.out.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
