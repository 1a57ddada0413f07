"""Writing an evaluation: report.json (every number), report.md (tables) and optional PNG plots.

The JSON document is the single source: the Markdown tables and the plots are rendered from it.
Non-finite numbers (an accuracy change from a zero baseline, the PSNR of an unchanged photo) are written
as null, so the file is standard JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ulixes_onnx.atomic import write_atomically

TRANSFORM_ORDER = ("jpeg-q85", "jpeg-q75", "downscale-0.5")
# report.md lists this many of the most visible faces; report.json has them all.
MOST_VISIBLE_FACES = 10


def finite(value: object) -> object:
    """The document with NaN and infinities replaced by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _change(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}%"


def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def render_markdown(document: dict) -> str:
    """The report's tables as Markdown."""
    if "leave_one_out" in document:
        return render_leave_one_out(document)
    sections = (
        _summary,
        _verification,
        _perceptibility,
        _identification,
        _clustering,
        _transferability,
        _robustness,
        _wall_time,
    )
    return "\n".join(line for section in sections for line in section(document))


def _summary(document: dict) -> list[str]:
    """The title, the dataset and the cloak's settings."""
    dataset, cloak = document["dataset"], document["cloak"]
    return [
        "# Ulixes cloak evaluation",
        "",
        f"Dataset `{dataset['root']}`: {dataset['photos']} photos of {dataset['identities']} identities, "
        f"{dataset['pairs_same']} same-person and {dataset['pairs_different']} different-person pairs; "
        f"{len(dataset['photos_without_face'])} photos without a detectable face, "
        f"{dataset['pairs_left_out_no_face']} pairs left out for that.",
        "",
        f"Cloak: {cloak['label']}, strategy {cloak['config']['strategy']}; {cloak['faces_protected']}/"
        f"{cloak['faces']} faces protected by the cloaker's own check, {cloak['faces_too_small']} too small; "
        f"{_num(cloak['seconds_per_photo']['mean'], 2)} s per photo.",
        "",
    ]


def _verification(document: dict) -> list[str]:
    lines = [
        "## Verification",
        "",
        f"Protocol: {document['protocols']['verification']}. The best accuracy re-tunes the threshold "
        "on these very pairs, as an attacker who knows the photos are cloaked could.",
        "",
    ]
    rows = []
    for model, section in document["verification"].items():
        for side in ("clean", "cloaked"):
            at, best = section[side]["at_threshold"], section[side]["best_threshold"]
            rows.append(
                [
                    model,
                    side,
                    str(section["pairs"]),
                    _num(at["threshold"], 3),
                    _pct(at["tp_rate"]),
                    _pct(at["fp_rate"]),
                    _pct(at["accuracy"]),
                    f"{_pct(best['accuracy'])} @ {best['threshold']:.3f}",
                    _num(section[side]["auc"]),
                ]
            )
    lines += _table(
        ["model", "photo b", "pairs", "threshold", "TP rate", "FP rate", "accuracy", "best accuracy", "AUC"],
        rows,
    )
    return lines


def _perceptibility(document: dict) -> list[str]:
    perceptibility = document["perceptibility"]
    scores, dssim, face_psnr, photo_psnr = (
        perceptibility["face_ssimulacra2"],
        perceptibility["face_dssim"],
        perceptibility["face_psnr_db"],
        perceptibility["photo_psnr_db"],
    )
    lines = [
        "## Perceptibility",
        "",
        "SSIMULACRA2 and DSSIM of each face's region (its box grown by a quarter on each side) in the saved "
        "copy, at the photo's resolution. SSIMULACRA2: 100 identical, 90 visually lossless, 70 high "
        "quality, 50 medium; a JPEG re-encode at quality 90 scores 85-95. "
        f"5th percentile of SSIMULACRA2: {_num(scores['p5'], 1)}.",
        "",
    ]
    lines += _table(
        ["measure", "faces/photos", "mean", "std", "min", "max"],
        [
            [
                "SSIMULACRA2 per face",
                str(scores["count"]),
                *(_num(scores[k], 1) for k in ("mean", "std", "min", "max")),
            ],
            ["DSSIM per face", str(dssim["count"]), *(_num(dssim[k]) for k in ("mean", "std", "min", "max"))],
            [
                "PSNR per face box (dB)",
                str(face_psnr["count"]),
                *(_num(face_psnr[k], 2) for k in ("mean", "std", "min", "max")),
            ],
            [
                "PSNR per photo (dB)",
                str(photo_psnr["count"]),
                *(_num(photo_psnr[k], 2) for k in ("mean", "std", "min", "max")),
            ],
        ],
    )
    most_visible = sorted(perceptibility["faces"], key=lambda face: face["ssimulacra2"])[:MOST_VISIBLE_FACES]
    if most_visible:
        lines += [f"The {len(most_visible)} most visible faces (all faces are in report.json):", ""]
        lines += _table(
            ["photo", "face width (px)", "SSIMULACRA2", "DSSIM"],
            [
                [
                    face["photo"],
                    f"{face['box'][2] - face['box'][0]:.0f}",
                    _num(face["ssimulacra2"], 1),
                    _num(face["dssim"]),
                ]
                for face in most_visible
            ],
        )
    return lines


def _identification(document: dict) -> list[str]:
    lines = ["## Identification", "", f"Protocol: {document['protocols']['identification']}.", ""]
    for model, section in document["identification"].items():
        if "skipped" in section:
            lines += [f"{model}: skipped, {section['skipped']}.", ""]
            continue
        lines += [
            f"{model}: {section['photos']} photos of {section['identities']} identities, "
            f"{section['folds']} folds.",
            "",
        ]
        lines += _table(
            ["classifier", "clean", "cloaked", "change"],
            [
                [
                    f"{name} ({row['description']})",
                    _pct(row["clean"]),
                    _pct(row["cloaked"]),
                    _change(row["change"]),
                ]
                for name, row in section["classifiers"].items()
            ],
        )
    return lines


def _clustering(document: dict) -> list[str]:
    lines = ["## Clustering", "", f"Protocol: {document['protocols']['clustering']}.", ""]
    for model, section in document["clustering"].items():
        lines += [f"{model}: {section['photos']} photos of {section['identities']} identities.", ""]
        fractions = list(section["distance_stop"])
        lines += _table(
            [
                "photos cloaked",
                "accuracy, distance stop",
                "clusters",
                "accuracy, true cluster count",
                "clusters",
            ],
            [
                [
                    fraction,
                    f"{_pct(section['distance_stop'][fraction]['accuracy'])} "
                    f"({_change(section['distance_stop'][fraction]['change'])})",
                    _num(section["distance_stop"][fraction]["clusters"], 1),
                    f"{_pct(section['true_clusters'][fraction]['accuracy'])} "
                    f"({_change(section['true_clusters'][fraction]['change'])})",
                    _num(section["true_clusters"][fraction]["clusters"], 1),
                ]
                for fraction in fractions
            ],
        )
    return lines


def _transferability(document: dict) -> list[str]:
    if "transfer" not in document:
        return []
    transfer = document["transfer"]
    excluded = " (ensembles exclude the evaluated model)" if transfer["exclude_evaluated"] else ""
    lines = ["## Transferability", "", f"Relative change of verification accuracy{excluded}.", ""]
    lines += _table(
        ["cloaked with", *transfer["columns"]],
        [
            [row, *(_change(cell["change"]) if cell else "n/a" for cell in cells)]
            for row, cells in zip(transfer["rows"], transfer["cells"], strict=True)
        ],
    )
    return lines


def _robustness(document: dict) -> list[str]:
    if "robustness" not in document:
        return []
    lines = ["## Robustness after upload", "", f"Protocol: {document['protocols']['robustness']}.", ""]
    rows = []
    for model, section in document["robustness"].items():
        verification = document["verification"][model]
        rows.append(
            [
                model,
                "none",
                _pct(verification["clean"]["at_threshold"]["accuracy"]),
                _pct(verification["cloaked"]["at_threshold"]["accuracy"]),
                _pct(verification["cloaked"]["at_threshold"]["tp_rate"]),
                _num(verification["same_pair_distance"]["cloaked"]["mean"], 3),
                # The reference: all of the protection, if the cloaks gave any.
                "100.0%"
                if verification["accuracy_change"] and verification["accuracy_change"] < 0
                else "n/a",
            ]
        )
        for transform in TRANSFORM_ORDER:
            row = section[transform]
            rows.append(
                [
                    model,
                    transform,
                    _pct(row["clean"]["accuracy"]),
                    _pct(row["cloaked"]["accuracy"]),
                    _pct(row["cloaked"]["tp_rate"]),
                    _num(row["same_pair_distance"]["cloaked"]["mean"], 3),
                    _pct(row["protection_remaining"]),
                ]
            )
    lines += _table(
        [
            "model",
            "transform",
            "accuracy clean",
            "accuracy cloaked",
            "TP rate cloaked",
            "same-pair distance cloaked",
            "protection left",
        ],
        rows,
    )
    return lines


def _wall_time(document: dict) -> list[str]:
    timing = document["timing"]
    return [
        f"Wall time: {timing['total_seconds']:.0f} s, of which cloaking {timing['cloaking_seconds']:.0f} s.",
        "",
    ]


def render_leave_one_out(document: dict) -> str:
    """The leave-one-out report: per held-out model, what cloaks made without it do to it."""
    dataset = document["dataset"]
    rows = []
    for model, section in document["leave_one_out"].items():
        clean, cloaked = section["clean"]["at_threshold"], section["cloaked"]["at_threshold"]
        visibility = section["face_ssimulacra2"]
        rows.append(
            [
                model,
                section["cloaked_with"],
                f"{_pct(clean['tp_rate'])} -> {_pct(cloaked['tp_rate'])}",
                f"{_pct(clean['fp_rate'])} -> {_pct(cloaked['fp_rate'])}",
                f"{_pct(clean['accuracy'])} -> {_pct(cloaked['accuracy'])}",
                _pct(section["cloaked"]["best_threshold"]["accuracy"]),
                _num(section["same_pair_distance"]["cloaked"]["mean"], 3),
                f"{_num(visibility['mean'], 1)} / {_num(visibility['min'], 1)}",
            ]
        )
    timing = document["timing"]
    seconds = (
        f"Wall time: {timing['total_seconds']:.0f} s, of which cloaking {timing['cloaking_seconds']:.0f} s."
    )
    return "\n".join(
        [
            "# Ulixes cloak evaluation: leave one out",
            "",
            f"Dataset `{dataset['root']}`: {dataset['photos']} photos, {dataset['pairs_same']} "
            f"same-person and {dataset['pairs_different']} different-person pairs.",
            "",
            f"Protocol: {document['protocols']['leave_one_out']}.",
            "",
            *_table(
                [
                    "held-out model",
                    "cloaked with",
                    "TP rate",
                    "FP rate",
                    "accuracy",
                    "attacker's best accuracy",
                    "same-pair distance",
                    "face SSIMULACRA2 mean / min",
                ],
                rows,
            ),
            seconds,
            "",
        ]
    )


def write_plots(document: dict, out_dir: Path) -> list[Path]:
    """ROC curves, the DSSIM histogram and the transfer heat map as PNGs (needs matplotlib)."""
    if "verification" not in document:
        return []
    # matplotlib is optional: imported here so that reports without plots never need it.
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    written = []
    for model, section in document["verification"].items():
        figure, axes = pyplot.subplots(figsize=(5, 5))
        for side in ("clean", "cloaked"):
            curve = section["roc"][side]
            axes.plot(
                curve["fp_rate"], curve["tp_rate"], label=f"{side} (AUC {_num(section[side]['auc'], 3)})"
            )
        axes.plot([0, 1], [0, 1], linestyle=":", color="gray")
        axes.set(xlabel="false-positive rate", ylabel="true-positive rate", title=f"ROC, {model}")
        axes.legend(loc="lower right")
        written.append(_save(figure, out_dir / f"roc-{model}.png", pyplot))
    values = document["perceptibility"]["face_dssim_values"]
    if values:
        figure, axes = pyplot.subplots(figsize=(6, 4))
        axes.hist(values, bins=30)
        axes.set(xlabel="DSSIM per face", ylabel="faces", title="Perceptibility of the cloaks")
        written.append(_save(figure, out_dir / "dssim-histogram.png", pyplot))
        figure, axes = pyplot.subplots(figsize=(6, 4))
        axes.hist([face["ssimulacra2"] for face in document["perceptibility"]["faces"]], bins=30)
        axes.set(
            xlabel="SSIMULACRA2 per face (100: identical)", ylabel="faces", title="Visibility of the cloaks"
        )
        written.append(_save(figure, out_dir / "ssimulacra2-histogram.png", pyplot))
    transfer = document.get("transfer")
    if transfer:
        grid = [[_percent_or_nan(cell) for cell in row] for row in transfer["cells"]]
        figure, axes = pyplot.subplots(figsize=(1.8 + 1.4 * len(transfer["columns"]), 1.2 + 0.6 * len(grid)))
        image = axes.imshow(grid, cmap="RdYlGn", vmin=-100, vmax=0)
        axes.set_xticks(range(len(transfer["columns"])), transfer["columns"], rotation=30, ha="right")
        axes.set_yticks(range(len(transfer["rows"])), transfer["rows"])
        for (row, column), value in _cells(grid):
            axes.text(column, row, f"{value:+.0f}%", ha="center", va="center")
        figure.colorbar(image, label="accuracy change (%)")
        axes.set_title("Transferability")
        written.append(_save(figure, out_dir / "transfer.png", pyplot))
    return written


def _percent_or_nan(cell: dict | None) -> float:
    return cell["change"] * 100 if cell and cell["change"] is not None else float("nan")


def _cells(grid: list[list[float]]) -> list[tuple[tuple[int, int], float]]:
    return [
        ((r, c), value) for r, row in enumerate(grid) for c, value in enumerate(row) if math.isfinite(value)
    ]


def _save(figure: object, path: Path, pyplot: object) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return path


def write_report(document: dict, out_dir: Path, *, plots: bool = True) -> tuple[list[Path], str | None]:
    """Write report.json, report.md and (if asked and matplotlib is installed) the plots.

    Returns the files written and a note when plots were asked for but cannot be drawn.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    document = finite(document)
    written = [out_dir / "report.json", out_dir / "report.md"]
    write_atomically(json.dumps(document, indent=2).encode(), written[0])
    write_atomically(render_markdown(document).encode(), written[1])
    if not plots:
        return written, None
    try:
        written += write_plots(document, out_dir)
    except ImportError:
        return written, "plots skipped: matplotlib is not installed (pip install matplotlib)"
    return written, None
