"""Transfer ablation: leave-one-out protection against visibility, one row per cloak setting.

Runs `ulixes-onnx eval DATASET --leave-one-out` once per setting (each zoo model judges cloaks made by
the ensemble of the others) and writes one Markdown table: for every setting and held-out model, the
true-positive rate before -> after, the accuracy an attacker gets back by re-tuning the threshold on
cloaked pairs, the SSIMULACRA2 of the cloaked faces at the photo's resolution, and how many faces the
saved copy protects against the models that made the cloak (a setting that transfers only by giving
that up is no gain). Cloaks are cached per setting (under --cache-dir, WORK/cache by default), so an
interrupted run resumes, and the table is rewritten after every setting, so it keeps the settings
that finished.

    python benchmarks/transfer_ablation.py ../shared/faces-dev --out benchmarks/results/transfer.md
    python benchmarks/transfer_ablation.py SUBSET --allow-single --only "joint, defaults" "no momentum"
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

# The zoo models built from packages.
MODELS = "dlib-resnet,facenet-vggface2,faceres"
# Each setting: a name and the `eval` options it adds; every method alone, then together.
SETTINGS = {
    "joint, defaults": [],
    "+ level mid": ["--level", "mid"],
    "+ level high": ["--level", "high"],
    "no input diversity": ["--diversity", "0"],
    "input diversity 0.15": ["--diversity", "0.15"],
    "no momentum": ["--momentum", "0"],
    "gradient smoothing 2 px": ["--smoothing", "2"],
    "max ensemble": ["--ensemble", "max"],
    "model dropout 0.3": ["--model-dropout", "0.3"],
    "quality floor 70": ["--min-quality", "70"],
    "feature weight 3": ["--feature-weight", "3"],
    "no polish": ["--polish", "0"],
    # Towards another person (the paper's strategies; need --pool, photos of people not evaluated).
    "farthest pool face": ["--strategy", "farthest"],
    "nearest pool face": ["--strategy", "nearest"],
}


def eval_command(args: argparse.Namespace, options: list[str], out: Path) -> list[str]:
    """The `ulixes-onnx eval --leave-one-out` command for one setting."""
    pairs = args.pairs or args.dataset / "pairs.csv"
    command = [
        sys.executable, "-m", "ulixes_onnx", "eval", str(args.dataset), "--pairs", str(pairs),
        "--leave-one-out", "--models", args.models, "--ensemble", "joint", *options,
        "--out", str(out), "--cache-dir", str(args.cache_dir or args.work / "cache"), "--no-plots",
    ]  # fmt: skip
    if "--strategy" in options:  # parse_arguments made sure there is a pool
        command += ["--pool", str(args.pool)]
    if args.allow_single:
        command.append("--allow-single")
    if args.threads:
        command += ["--threads", str(args.threads)]
    return command


def run(name: str, args: argparse.Namespace) -> dict:
    out = args.work / name.replace(" ", "-").replace(",", "").replace("+", "plus")
    subprocess.run(eval_command(args, SETTINGS[name], out), check=True)
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
            f"| {visibility['mean']:.1f} / {visibility['min']:.1f} "
            f"| {section['faces_protected_by_the_cloaking_models']} / {section['faces']} |"
        )
    return lines


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--pairs", type=Path, help="default: DATASET/pairs.csv")
    # Names hold commas ("joint, defaults"), so each is its own argument.
    parser.add_argument(
        "--only", nargs="+", choices=list(SETTINGS), metavar="NAME", help=f"among: {'; '.join(SETTINGS)}"
    )
    parser.add_argument("--work", type=Path, default=Path("transfer-ablation"))
    parser.add_argument("--cache-dir", type=Path, help="where cloaks are kept (default: WORK/cache)")
    parser.add_argument(
        "--allow-single", action="store_true", help="passed to eval: identities with one photo"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/transfer.md"))
    parser.add_argument("--threads", type=int)
    parser.add_argument(
        "--pool", type=Path, help="other people's photos (or a pool file), for the settings with a strategy"
    )
    parser.add_argument("--models", default=MODELS, help=f"the zoo models, each held out in turn ({MODELS})")
    args = parser.parse_args(argv)
    needing = [name for name in args.only or SETTINGS if "--strategy" in SETTINGS[name]]
    if needing and args.pool is None:
        parser.error(f"{'; '.join(needing)} need --pool: photos of people who are not evaluated")
    return args


def render(
    table_rows: list[str], seconds: dict[str, float], argv: list[str], args: argparse.Namespace
) -> str:
    """The Markdown page: how it was made, the table, and the wall time of each setting."""
    return "\n".join(
        [
            f"# Transfer ablation, leave one out ({time.strftime('%Y-%m-%d')})",
            "",
            f"`python benchmarks/transfer_ablation.py {shlex.join(argv)}`: every zoo model ({args.models}) "
            "judges cloaks made by the joint ensemble of the others (verification, photo b of each pair "
            "cloaked); SSIMULACRA2 of the cloaked faces at the photo's resolution.",
            "",
            "| setting | held-out model | TP rate clean -> cloaked | accuracy | attacker's best accuracy "
            "| face SSIMULACRA2 mean / min | faces protected against the cloaking models |",
            "|---|---|---|---|---|---|---|",
            *table_rows,
            "",
            "Wall time: " + ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items()) + ".",
            "",
        ]
    )


def main() -> None:
    argv = sys.argv[1:]
    args = parse_arguments(argv)
    table_rows: list[str] = []
    seconds: dict[str, float] = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.only or list(SETTINGS):
        started = time.perf_counter()
        table_rows += rows(name, run(name, args))
        seconds[name] = time.perf_counter() - started
        args.out.write_text(render(table_rows, seconds, argv, args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
