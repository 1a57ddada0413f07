"""`ulixes-onnx cloak PATH...`: cloak every face in photos and write protected copies."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ulixes_onnx.cli.context import CliState
from ulixes_onnx.cli.options import (
    Ensemble,
    Margin,
    MaxDssim,
    MaxRounds,
    MaxSteps,
    Pool,
    Strategy,
    Target,
    choice,
    model_names,
)
from ulixes_onnx.cloak import STRATEGIES
from ulixes_onnx.errors import UlixesError
from ulixes_onnx.files import (
    BATCH_PHOTOS,
    NO_FACE_ACTIONS,
    FileReport,
    OutputOptions,
    cloak_files,
    expand_inputs,
)
from ulixes_onnx.pipeline import DEFAULT_MODELS, ENSEMBLES, Cloaker
from ulixes_onnx.pool import build_pool, load_pool

# Exit codes beyond the error classes' own (documented in the README).
EXIT_NO_FACE = 8
EXIT_NOT_PROTECTED = 9
EXIT_FILE_ERROR = 5


def cloak(
    ctx: typer.Context,
    paths: Annotated[list[str], typer.Argument(help="Photos, folders (searched recursively) or globs.")],
    models: Annotated[str, typer.Option(help="Comma-separated models; several make an ensemble.")] = ",".join(
        DEFAULT_MODELS
    ),
    strategy: Strategy = "away",
    ensemble: Ensemble = "max",
    pool: Pool = None,
    margin: Margin = None,
    target: Target = None,
    min_progress: Annotated[
        float | None, typer.Option("--t", help="Stop when a step moves the face less than this.")
    ] = None,
    max_dssim: MaxDssim = 0.03,
    max_steps: MaxSteps = 100,
    max_rounds: MaxRounds = 3,
    step: Annotated[float, typer.Option(help="Step size in [-1, 1] pixel units.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Random seed (results are deterministic).")] = 0,
    min_face_size: Annotated[float, typer.Option(help="Smallest face searched for, in pixels.")] = 20.0,
    output_dir: Annotated[
        Path | None, typer.Option(help="Write copies here instead of next to each photo.")
    ] = None,
    suffix: Annotated[str, typer.Option(help="Added to each output's name.")] = "_cloaked",
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    quality: Annotated[
        int | None, typer.Option(min=1, max=100, help="JPEG/WebP quality (default: the input's own).")
    ] = None,
    keep_exif: Annotated[
        bool,
        typer.Option(
            help="Keep all metadata: EXIF (GPS, captions, names, serials), XMP, PNG and TIFF text "
            "(default: only orientation, colour space, ICC profile and resolution)."
        ),
    ] = False,
    no_face: Annotated[
        str, typer.Option(help="Photos without faces: skip, or copy them as they are.")
    ] = "skip",
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all cores).")] = None,
    batch: Annotated[
        int, typer.Option(min=1, help="Photos cloaked together (their faces share the loop's batches).")
    ] = BATCH_PHOTOS,
    json_report: Annotated[
        Path | None, typer.Option("--json", help="Write a per-face JSON report here.")
    ] = None,
) -> None:
    """Cloak every face in the photos; write `<name>_cloaked.<ext>` copies and verify them."""
    choice(strategy, STRATEGIES, "--strategy")
    choice(ensemble, ENSEMBLES, "--ensemble")
    choice(no_face, NO_FACE_ACTIONS, "--no-face")
    state = ctx.ensure_object(CliState)
    sources = expand_inputs(paths, exclude_suffix=suffix)
    if not sources:
        raise typer.BadParameter("no photos found", param_hint="PATHS")
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
    cloaker = Cloaker(
        model_names(models, "--models"),
        store=state.store(),
        strategy=strategy,
        ensemble=ensemble,
        step=step,
        margin=margin,
        target=target,
        min_progress=min_progress,
        max_dssim=max_dssim,
        max_steps=max_steps,
        max_rounds=max_rounds,
        seed=seed,
        min_face_size=min_face_size,
        threads=threads,
    )
    if pool is not None:
        cloaker.pool = (
            load_pool(pool, cloaker.models)
            if pool.is_file()
            else build_pool(
                [photo.path for photo in expand_inputs([str(pool)])], cloaker.models, cloaker.detector
            )
        )
    console = Console(stderr=True)
    reports: list[FileReport] = []
    options = OutputOptions(output_dir, suffix, overwrite, quality, keep_exif, no_face)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("cloaking", total=len(sources))
        for report in cloak_files(cloaker, sources, options, batch_photos=batch):
            reports.append(report)
            _print_file_line(console, report)
            progress.update(task, advance=1, description=f"cloaked {report.source.name}")
    if json_report is not None:
        _write_json(json_report, reports, cloaker, strategy)
    _print_summary(console, reports)
    raise typer.Exit(_exit_code(reports))


def _print_file_line(console: Console, report: FileReport) -> None:
    if report.error:
        console.print(f"[red]error[/red] {report.error}", markup=True, highlight=False)
        return
    for note in report.notes:
        console.print(f"note {report.source}: {note}", highlight=False)
    where = f" -> {report.output}" if report.output else " (nothing written)"
    protected = sum(face.protected for face in report.faces)
    cloakable = sum(face.skipped is None for face in report.faces)
    console.print(
        f"{report.status}: {report.source}{where}, {protected}/{cloakable} faces protected",
        highlight=False,
    )
    for face in report.faces:
        if face.skipped:
            console.print(f"  face {face.index}: skipped, {face.skipped}", highlight=False)


def _face_json(report: FileReport, face, cloaker: Cloaker, strategy: str) -> dict:  # noqa: ANN001
    return {
        "file": str(report.source),
        "output": str(report.output) if report.output else None,
        "face": face.index,
        "box": [round(v, 1) for v in face.box],
        "models": [model.name for model in cloaker.models],
        "strategy": strategy,
        "margin": {name: settings.margin for name, settings in cloaker.settings.items()},
        "rounds": face.rounds,
        "skipped": face.skipped,
        "redetected": face.redetected,
        "dssim": round(face.dssim, 5),
        "per_model": {name: asdict(outcome) for name, outcome in face.models.items()},
        "protected": face.protected,
        "seconds": round(report.seconds / max(1, len(report.faces)), 3),
    }


def _write_json(path: Path, reports: list[FileReport], cloaker: Cloaker, strategy: str) -> None:
    document = {
        "files": [
            {
                "file": str(r.source),
                "output": str(r.output) if r.output else None,
                "status": r.status,
                "error": r.error,
            }
            for r in reports
        ],
        "faces": [_face_json(r, face, cloaker, strategy) for r in reports for face in r.faces],
    }
    try:
        path.write_text(json.dumps(document, indent=2))
    except OSError as error:
        raise UlixesError(f"cannot write the JSON report {path}: {error.strerror}") from None


def _print_summary(console: Console, reports: list[FileReport]) -> None:
    faces = [face for report in reports for face in report.faces]
    cloaked = [face for face in faces if face.models]
    seconds = sum(report.seconds for report in reports)
    table = Table(title="summary")
    for column in ("photos", "written", "errors", "faces", "protected", "too small", "mean DSSIM", "s/face"):
        table.add_column(column, justify="right")
    table.add_row(
        str(len(reports)),
        str(sum(report.output is not None for report in reports)),
        str(sum(report.error is not None for report in reports)),
        str(len(faces)),
        str(sum(face.protected for face in faces)),
        str(sum(face.skipped is not None for face in faces)),
        f"{sum(face.dssim for face in cloaked) / len(cloaked):.4f}" if cloaked else "-",
        f"{seconds / len(faces):.2f}" if faces else "-",
    )
    console.print(table)


def _exit_code(reports: list[FileReport]) -> int:
    statuses = {report.status for report in reports}
    if "error" in statuses:
        return EXIT_FILE_ERROR
    if "not protected" in statuses:
        return EXIT_NOT_PROTECTED
    if "no face" in statuses:
        return EXIT_NO_FACE
    return 0
