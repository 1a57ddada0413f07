"""Transfer ablation: leave-one-out protection against visibility, one row per cloak setting.

Runs `ulixes-onnx eval DATASET --leave-one-out` once per setting (each zoo model judges cloaks made by
the ensemble of the others) and writes one Markdown table: for every setting and held-out model, the
true-positive rate before -> after, the accuracy an attacker gets back by re-tuning the threshold on
cloaked pairs, and the SSIMULACRA2 of the cloaked faces at the photo's resolution. Cloaks are cached
per setting under --work, so an interrupted run resumes.

    python benchmarks/transfer_ablation.py ../shared/faces-dev --out benchmarks/results/transfer.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

MODELS = "dlib-resnet,facenet-vggface2,faceres"
# Each setting: a name and the `eval` options it adds; every method alone, then together.
SETTINGS = {
    "joint, defaults": [],
    "+ level high": ["--level", "high"],
    "no input diversity": ["--diversity", "0"],
    "input diversity 0.15": ["--diversity", "0.15"],
    "momentum 0.5": ["--momentum", "0.5"],
    "gradient smoothing 2 px": ["--smoothing", "2"],
    "max ensemble": ["--ensemble", "max"],
}


def run(dataset: Path, pairs: Path, name: str, options: list[str], work: Path, threads: int | None) -> dict:
    out = work / name.replace(" ", "-").replace(",", "").replace("+", "plus")
    command = [
        sys.executable, "-m", "ulixes_onnx", "eval", str(dataset), "--pairs", str(pairs),
        "--leave-one-out", "--models", MODELS, "--ensemble", "joint", *options,
        "--out", str(out), "--cache-dir", str(work / "cache"), "--no-plots",
    ]  # fmt: skip
    if threads:
        command += ["--threads", str(threads)]
    subprocess.run(command, check=True)
    return json.loads((out / "report.json").read_text())


def rows(name: str, document: dict) -> list[str]:
    lines = []
    for model, section in document["leave_one_out"].items():
        clean, cloaked = section["clean"]["at_threshold"], section["cloaked"]["at_threshold"]
        visibility = section["face_ssimulacra2"]
        attacker = section["cloaked"]["best_threshold"]["accuracy"]
        lines.append(
            f"| {name} | {model} | {100 * clean['tp_rate']:.1f} -> {100 * cloaked['tp_rate']:.1f} % "
            f"| {100 * cloaked['accuracy']:.1f} % | {100 * attacker:.1f} % "
            f"| {visibility['mean']:.1f} / {visibility['min']:.1f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--pairs", type=Path, help="default: DATASET/pairs.csv")
    parser.add_argument("--settings", help=f"comma-separated names among: {', '.join(SETTINGS)}")
    parser.add_argument("--work", type=Path, default=Path("transfer-ablation"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/transfer.md"))
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    chosen = args.settings.split(",") if args.settings else list(SETTINGS)
    unknown = [name for name in chosen if name not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings: {', '.join(unknown)}")
    pairs = args.pairs or args.dataset / "pairs.csv"
    table = [
        "| setting | held-out model | TP rate clean -> cloaked | accuracy | attacker's best accuracy "
        "| face SSIMULACRA2 mean / min |",
        "|---|---|---|---|---|---|",
    ]
    started = time.perf_counter()
    for name in chosen:
        table += rows(name, run(args.dataset, pairs, name, SETTINGS[name], args.work, args.threads))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "\n".join(
            [
                f"# Transfer ablation, leave one out ({time.strftime('%Y-%m-%d')})",
                "",
                f"`python benchmarks/transfer_ablation.py {args.dataset} --pairs {pairs}`: every zoo model "
                f"({MODELS}) judges cloaks made by the joint ensemble of the other two (verification, "
                "photo b of each pair cloaked); SSIMULACRA2 of the cloaked faces at the photo's resolution.",
                "",
                *table,
                "",
                f"Wall time {time.perf_counter() - started:.0f} s.",
                "",
            ]
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
