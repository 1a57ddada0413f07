"""`ulixes-onnx cloak PATH...`: cloak every face in photos and write protected copies."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, TextIO

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ulixes_onnx.atomic import protect_inputs, write_atomically
from ulixes_onnx.cli.context import CliState
from ulixes_onnx.cli.options import DEFAULTS, Pool, References, check_new_file, choice, with_cloak_settings
from ulixes_onnx.cloaking.files import (
    BATCH_PHOTOS,
    NO_FACE_ACTIONS,
    FileReport,
    FoundInputs,
    OutputOptions,
    PlannedPhoto,
    cloak_files,
    expand_inputs,
    find_inputs,
    plan_outputs,
)
from ulixes_onnx.cloaking.pipeline import Cloaker
from ulixes_onnx.cloaking.pool import build_pool, load_pool
from ulixes_onnx.cloaking.references import references_from_paths
from ulixes_onnx.cloaking.settings import CloakSettings
from ulixes_onnx.errors import UlixesError, UsageError
from ulixes_onnx.photos.decoding import DEFAULT_MAX_PIXELS
from ulixes_onnx.photos.encoding import check_suffix

# Exit codes beyond the error classes' own (documented in the README).
EXIT_NO_FACE = 8
EXIT_NOT_PROTECTED = 9
EXIT_FACE_NOT_CLOAKED = 10
EXIT_FILE_ERROR = 5
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


@with_cloak_settings("--models", "Comma-separated models to protect against; several make an ensemble.")
def cloak(
    ctx: typer.Context,
    paths: Annotated[
        list[str],
        typer.Argument(metavar="PHOTO...", help="Photos, folders (searched recursively) or globs."),
    ],
    output_dir: Annotated[
        Path | None, typer.Option(metavar="DIR", help="Write copies here instead of next to each photo.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing copies (never an input).")
    ] = False,
    skip_existing: Annotated[
        bool,
        typer.Option(
            "--skip-existing", help="Skip photos whose copy exists already: resume an interrupted run."
        ),
    ] = False,
    json_report: Annotated[
        Path | None,
        typer.Option("--json", metavar="FILE", help="Write a per-face JSON report here ('-': stdout)."),
    ] = None,
    suffix: Annotated[str, typer.Option(metavar="TEXT", help="Added to each copy's name.")] = "_cloaked",
    keep_exif: Annotated[
        bool,
        typer.Option(
            "--keep-exif",
            help="Keep all metadata: EXIF (GPS, captions, names, serials), XMP, PNG and TIFF text "
            "(default: only orientation, colour space, ICC profile and resolution).",
        ),
    ] = False,
    no_face: Annotated[
        str,
        typer.Option(
            metavar="|".join(NO_FACE_ACTIONS), help="Photos without faces: skip, or copy them as they are."
        ),
    ] = "skip",
    quality: Annotated[
        int | None,
        typer.Option(min=1, max=100, metavar="1-100", help="JPEG/WebP quality (default: the input's own)."),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(metavar="N", help="CPU threads (default: all cores).")
    ] = None,
    batch: Annotated[
        int,
        typer.Option(
            min=1, metavar="N", help="Photos cloaked together (their faces share the loop's batches)."
        ),
    ] = BATCH_PHOTOS,
    max_pixels: Annotated[
        int,
        typer.Option(min=1, metavar="N", help="Refuse photos of more pixels (decompression bombs)."),
    ] = DEFAULT_MAX_PIXELS,
    pool: Pool = None,
    reference: References = None,
    settings: CloakSettings = DEFAULTS,
) -> None:
    """Cloak every face in the photos; write `<name>_cloaked.<ext>` copies and verify them.

    One line per photo or skipped entry on stdout (stderr with --json -); progress and summary on stderr.
    """
    choice(no_face, NO_FACE_ACTIONS, "--no-face")
    try:
        check_suffix(suffix)
    except UlixesError as error:
        raise typer.BadParameter(str(error), param_hint="--suffix") from None
    state = ctx.ensure_object(CliState)
    found = find_inputs(paths, exclude_suffix=suffix)
    results = sys.stderr if str(json_report) == "-" else sys.stdout
    if not found.photos:
        for report in found.skipped:
            _print_file_line(results, report)
        raise typer.BadParameter("no photos found", param_hint="PHOTO...")
    options = OutputOptions(
        output_dir, suffix, overwrite, quality, keep_exif, no_face, skip_existing, max_pixels
    )
    planned = plan_outputs(found.photos, options)  # two inputs for one output: refused before any work
    json_path = _json_destination(json_report, found, planned, overwrite)
    cloaker = Cloaker(settings, store=state.store(), threads=threads)
    if pool is not None:
        cloaker.pool = (
            load_pool(pool, cloaker.models)
            if pool.is_file()
            else build_pool(
                [photo.path for photo in expand_inputs([str(pool)])],
                cloaker.models,
                cloaker.detector,
                on_skip=lambda path, reason: print(f"skipped (pool): {reason}", file=sys.stderr),
            )
        )
    if reference:
        cloaker.references = references_from_paths(
            [str(path) for path in reference], cloaker.models, cloaker.detector
        )
    console = Console(stderr=True, highlight=False, markup=False)
    reports: list[FileReport] = list(found.skipped)
    for report in found.skipped:
        _print_file_line(results, report)
    interrupted = False
    # On a terminal, result lines are printed above the progress bar; otherwise they go out untouched.
    live_results = results is sys.stdout and results.isatty()
    try:
        with (
            protect_inputs([photo.path for photo in found.photos]),
            Progress(console=console, transient=True, redirect_stdout=live_results) as progress,
        ):
            task = progress.add_task("cloaking", total=len(found.photos))
            for report in cloak_files(cloaker, found.photos, options, batch_photos=batch):
                reports.append(report)
                _print_file_line(sys.stdout if live_results else results, report)
                progress.update(task, advance=1, description=f"cloaked {_literal(report.source.name)}")
    except KeyboardInterrupt:
        interrupted = True
    if json_report is not None:
        _write_json(json_path, reports, cloaker, interrupted=interrupted, overwrite=overwrite)
    _print_summary(console, reports)
    if interrupted:
        done = sum(report.skipped is None for report in reports)
        console.print(
            f"interrupted after {done} of {len(found.photos)} photos; run the same command with "
            "--skip-existing to cloak the rest"
        )
        raise typer.Exit(EXIT_INTERRUPTED)
    raise typer.Exit(_exit_code(reports))


def _json_destination(
    path: Path | None, found: FoundInputs, planned: list[PlannedPhoto], overwrite: bool
) -> Path | None:
    """The report's file, checked before any cloaking; None for none or stdout ('-')."""
    if path is None or str(path) == "-":
        return None
    outputs = [item.destination for item in planned if item.destination is not None]
    if any(os.path.abspath(path) == os.path.abspath(output) for output in outputs):
        raise UsageError(f"--json {path} is where a cloaked copy goes; give the report another path")
    entries = [photo.path for photo in found.photos] + [report.source for report in found.skipped]
    check_new_file("--json", path, entries, overwrite, "the report")
    return path


def _print_file_line(stream: TextIO, report: FileReport) -> None:
    """One line per entry, its path and message printed literally (no markup, no wrapping)."""
    print(_literal(_file_line(report)), file=stream, flush=True)


def _file_line(report: FileReport) -> str:
    source = str(report.source)
    if report.error:
        message = report.error.removeprefix(f"{source}: ")
        return f"error: {source}: {message}"
    if report.skipped:
        return f"skipped: {source} ({report.skipped})"
    details = []
    if report.output:
        protected = sum(face.protected for face in report.faces)
        cloaked = [face for face in report.faces if face.models]
        # The most visible face decides how the photo looks.
        visibility = f", min SSIMULACRA2 {min(face.ssimulacra2 for face in cloaked):.1f}" if cloaked else ""
        details.append(f"-> {report.output}, {protected}/{len(report.faces)} faces protected{visibility}")
    elif report.status in ("no face", "face not cloaked"):
        details.append("(nothing written; --no-face copy writes it unchanged)")
    details += [f"face {face.index} skipped: {face.skipped}" for face in report.faces if face.skipped]
    details += [f"note: {note}" for note in report.notes]
    return f"{report.status}: {source} " + "; ".join(details)


# Line breaks and other control characters inside a path would split or garble its line.
_CONTROL_CHARACTERS = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, 0x85)} | {
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def _literal(text: str) -> str:
    """`text` safe to print as one line: undecodable bytes of file names (kept by Python as
    surrogates) as backslash escapes, control characters escaped."""
    printable = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return printable.translate(_CONTROL_CHARACTERS)


def _face_json(report: FileReport, face, cloaker: Cloaker) -> dict:  # noqa: ANN001
    return {
        "file": str(report.source),
        "output": str(report.output) if report.output else None,
        "face": face.index,
        "box": [round(v, 1) for v in face.box],
        "models": [model.name for model in cloaker.models],
        "strategy": cloaker.settings.strategy,
        "margin": {name: settings.margin for name, settings in cloaker.loop.items()},
        "rounds": face.rounds,
        "skipped": face.skipped,
        "redetected": face.redetected,
        "ssimulacra2": round(face.ssimulacra2, 2),
        "dssim": round(face.dssim, 5),
        "per_model": {name: asdict(outcome) for name, outcome in face.models.items()},
        "protected": face.protected,
        "seconds": round(report.seconds / max(1, len(report.faces)), 3),
    }


def _write_json(
    path: Path | None,
    reports: list[FileReport],
    cloaker: Cloaker,
    *,
    interrupted: bool,
    overwrite: bool,
) -> None:
    """The report, atomically at `path` or on stdout for None."""
    document = {
        "interrupted": interrupted,
        "settings": asdict(cloaker.settings),
        "files": [
            {
                "file": str(r.source),
                "output": str(r.output) if r.output else None,
                "status": r.status,
                "error": r.error,
                "skipped": r.skipped,
                "notes": list(r.notes),
            }
            for r in reports
        ],
        "faces": [_face_json(r, face, cloaker) for r in reports for face in r.faces],
    }
    text = json.dumps(document, indent=2) + "\n"
    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        write_atomically(text.encode(), path, overwrite=overwrite)
    except FileExistsError:
        raise UlixesError(f"{path} appeared while cloaking; the JSON report was not written") from None
    except OSError as error:
        raise UlixesError(f"cannot write the JSON report {path}: {error.strerror or error}") from None


def _print_summary(console: Console, reports: list[FileReport]) -> None:
    faces = [face for report in reports for face in report.faces]
    cloaked = [face for face in faces if face.models]
    seconds = sum(report.seconds for report in reports)
    table = Table(title="summary")
    for column in ("photos", "written", "errors", "faces", "protected", "too small", "mean DSSIM", "s/face"):
        table.add_column(column, justify="right")
    table.add_row(
        str(sum(report.skipped is None for report in reports)),
        str(sum(report.output is not None for report in reports)),
        str(sum(report.error is not None for report in reports)),
        str(len(faces)),
        str(sum(face.protected for face in faces)),
        str(sum(face.skipped is not None for face in faces)),
        f"{sum(face.dssim for face in cloaked) / len(cloaked):.4f}" if cloaked else "-",
        f"{seconds / len(faces):.2f}" if faces else "-",
    )
    console.print(table)
    skipped = sum(report.skipped is not None for report in reports)
    if skipped:
        console.print(f"{skipped} entries skipped (each has a line saying why)")
    if cloaked:
        scores = [face.ssimulacra2 for face in cloaked]
        console.print(
            f"SSIMULACRA2 of the cloaked faces as saved: mean {sum(scores) / len(scores):.1f}, "
            f"min {min(scores):.1f} (100 identical, 90 visually lossless, 70 high quality)",
            highlight=False,
        )


def _exit_code(reports: list[FileReport]) -> int:
    statuses = {report.status for report in reports}
    if "error" in statuses:
        return EXIT_FILE_ERROR
    if "not protected" in statuses:
        return EXIT_NOT_PROTECTED
    if "face not cloaked" in statuses:
        return EXIT_FACE_NOT_CLOAKED
    if "no face" in statuses:
        return EXIT_NO_FACE
    return 0
