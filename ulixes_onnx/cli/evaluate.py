"""`ulixes-onnx eval DATASET`: measure how well cloaks protect, the way the paper does."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ulixes_onnx.cli.context import CliState
from ulixes_onnx.cli.options import DEFAULT_MODEL_LIST, DEFAULTS, Pool, model_names, with_cloak_settings
from ulixes_onnx.cloaking.loop import POOL_STRATEGIES
from ulixes_onnx.cloaking.settings import CloakSettings
from ulixes_onnx.errors import UlixesError


class _RichProgress:
    """Shows the evaluation's stages as a rich progress bar."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = None
        self.description = ""

    def stage(self, description: str, total: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.description = description
        self.task = self.progress.add_task(description, total=total)

    def advance(self, item: str) -> None:
        self.progress.update(self.task, advance=1, description=f"{self.description} {item}")


@with_cloak_settings(
    "--cloak-models", "Comma-separated models that make the cloaks; several make an ensemble."
)
def evaluate(
    ctx: typer.Context,
    dataset: Annotated[Path, typer.Argument(metavar="DATASET", help="Folder of identity/photo files.")],
    pairs: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="CSV with columns a,b,same (default: DATASET/pairs.csv)."),
    ] = None,
    models: Annotated[
        str, typer.Option(metavar="NAMES", help="Comma-separated models that judge the cloaks.")
    ] = DEFAULT_MODEL_LIST,
    pool: Pool = None,
    transfer: Annotated[bool, typer.Option(help="Measure the transfer matrix.")] = True,
    exclude_evaluated: Annotated[
        bool,
        typer.Option(
            "--exclude-evaluated", help="Transfer: remake ensemble cloaks without the model judging them."
        ),
    ] = False,
    leave_one_out: Annotated[
        bool,
        typer.Option(
            "--leave-one-out",
            help="Only this: each --models model judges cloaks made by the ensemble of the others "
            "(--ensemble and the other cloak settings apply; --cloak-models is not used).",
        ),
    ] = False,
    robustness: Annotated[bool, typer.Option(help="Re-measure after JPEG q85/q75 and downscaling.")] = True,
    allow_single: Annotated[
        bool,
        typer.Option("--allow-single", help="Accept identities with one photo (left out of identification)."),
    ] = False,
    out: Annotated[
        Path, typer.Option(metavar="DIR", help="Folder for report.json, report.md and plots.")
    ] = Path("eval-report"),
    cache_dir: Annotated[
        Path | None, typer.Option(metavar="DIR", help="Cloaked copies are kept here (default: OUT/cache).")
    ] = None,
    plots: Annotated[bool, typer.Option(help="Draw PNG plots (needs matplotlib).")] = True,
    threads: Annotated[
        int | None, typer.Option(metavar="N", help="CPU threads (default: all cores).")
    ] = None,
    settings: CloakSettings = DEFAULTS,
) -> None:
    """Cloak a labelled dataset and measure verification, identification, clustering, transfer and more."""
    # The evaluation pulls in scikit-learn (the `eval` extra); importing it here keeps every other
    # command quick to start and working without it.
    try:
        from ulixes_onnx.evaluation import Evaluation, EvaluationSettings, load_dataset, write_report
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] != "sklearn":
            raise
        raise UlixesError(
            "eval needs scikit-learn, which is not installed: pip install 'ulixes-onnx[eval]'"
        ) from None

    if settings.strategy in POOL_STRATEGIES and pool is None:
        raise typer.BadParameter(
            f"strategy {settings.strategy!r} needs a pool of other people's faces", param_hint="--pool"
        )
    state = ctx.ensure_object(CliState)
    loaded = load_dataset(dataset, pairs, allow_single=allow_single)
    evaluation_settings = EvaluationSettings(
        models=model_names(models, "--models"),
        cloak=settings,
        transfer=transfer,
        exclude_evaluated=exclude_evaluated,
        leave_one_out=leave_one_out,
        robustness=robustness,
        pool=pool,
        threads=threads,
    )
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        evaluation = Evaluation(
            loaded, evaluation_settings, state.store(), cache_dir or out / "cache", _RichProgress(progress)
        )
        document = evaluation.run()
    document["command"] = ["ulixes-onnx", *sys.argv[1:]]
    written, note = write_report(document, out, plots=plots)
    if note:
        console.print(note, highlight=False)
    _print_headline(console, document)
    for path in written:
        console.print(f"wrote {path}", highlight=False)


def _print_headline(console: Console, document: dict) -> None:
    if "leave_one_out" in document:
        _print_leave_one_out(console, document["leave_one_out"])
        return
    table = Table(title=f"cloaked with {document['cloak']['label']}")
    for column in ("model", "accuracy clean", "accuracy cloaked", "TP clean", "TP cloaked", "FP cloaked"):
        table.add_column(column, justify="right")
    for model, section in document["verification"].items():
        clean, cloaked = section["clean"]["at_threshold"], section["cloaked"]["at_threshold"]
        table.add_row(
            model,
            f"{clean['accuracy']:.3f}",
            f"{cloaked['accuracy']:.3f}",
            f"{clean['tp_rate']:.3f}",
            f"{cloaked['tp_rate']:.3f}",
            f"{cloaked['fp_rate']:.3f}",
        )
    console.print(table)
    scores = document["perceptibility"]["face_ssimulacra2"]
    if scores["count"]:
        console.print(
            f"SSIMULACRA2 per face: mean {scores['mean']:.1f}, 5th percentile {scores['p5']:.1f}, "
            f"min {scores['min']:.1f}",
            highlight=False,
        )
    dssim = document["perceptibility"]["face_dssim"]
    if dssim["count"]:
        console.print(f"DSSIM per face: mean {dssim['mean']:.4f}, max {dssim['max']:.4f}", highlight=False)


def _print_leave_one_out(console: Console, sections: dict) -> None:
    table = Table(title="leave one out: each model judges cloaks made by the others")
    for column in (
        "held out",
        "cloaked with",
        "TP clean",
        "TP cloaked",
        "attacker's best",
        "SSIMULACRA2 min",
    ):
        table.add_column(column, justify="right")
    for model, section in sections.items():
        table.add_row(
            model,
            section["cloaked_with"],
            f"{section['clean']['at_threshold']['tp_rate']:.3f}",
            f"{section['cloaked']['at_threshold']['tp_rate']:.3f}",
            f"{section['cloaked']['best_threshold']['accuracy']:.3f}",
            f"{section['face_ssimulacra2']['min']:.1f}" if section["face_ssimulacra2"]["count"] else "-",
        )
    console.print(table)
