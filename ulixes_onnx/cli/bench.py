"""`ulixes-onnx bench`: how fast cloaking runs on this machine, per model and batch size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ulixes_onnx.atomic import write_atomically
from ulixes_onnx.bench import run_bench
from ulixes_onnx.cli.context import CliState
from ulixes_onnx.cli.options import model_names
from ulixes_onnx.cloaking.settings import DEFAULT_MODELS


def bench(
    ctx: typer.Context,
    models: Annotated[
        str, typer.Option(metavar="NAMES", help="Comma-separated models to measure.")
    ] = ",".join(DEFAULT_MODELS),
    batch: Annotated[str, typer.Option(metavar="SIZES", help="Comma-separated batch sizes.")] = "1,8,32",
    repeats: Annotated[
        int, typer.Option(min=1, metavar="N", help="Timed runs per measurement (median reported).")
    ] = 10,
    images: Annotated[
        Path | None, typer.Option(metavar="DIR", help="Folder of photos (default: astronaut variants).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, metavar="N", help="CPU threads (default: all cores).")
    ] = None,
    json_output: Annotated[
        Path | None, typer.Option("--json", metavar="FILE", help="Also write the results as JSON.")
    ] = None,
) -> None:
    """Measure cloak steps, faces per second, seconds per face end to end and peak memory."""
    try:
        batches = [int(value) for value in batch.split(",") if value.strip()]
    except ValueError:
        raise typer.BadParameter(f"{batch!r} is not a list of integers", param_hint="--batch") from None
    if not batches or min(batches) < 1:
        raise typer.BadParameter("batch sizes must be positive integers", param_hint="--batch")
    names = model_names(models, "--models")
    store = ctx.ensure_object(CliState).store()
    results = run_bench(names, store, batches=batches, repeats=repeats, images=images, threads=threads)
    if json_output is not None:
        write_atomically(json.dumps(results, indent=2).encode(), json_output)
    console = Console()
    machine = results["machine"]
    unit = results["forward_pass"]
    console.print(
        f"{machine['cpu']}, {machine['cores']} cores, onnxruntime {machine['versions']['onnxruntime']}; "
        f"a forward pass ({unit['model']}, batch 1) takes {unit['ms']:.2f} ms"
    )
    for model in results["models"]:
        table = Table(title=f"{model['model']} ({model['threads']} threads)")
        for column in ("batch", "forward ms", "step ms", "step/forward", "steps/face", "faces/s"):
            table.add_column(column, justify="right")
        for size, row in model["batches"].items():
            table.add_row(
                size,
                f"{row['forward_ms']:.1f}",
                f"{row['step_ms']:.1f}",
                f"{row['step_over_forward']:.2f}",
                f"{row['mean_steps_per_face']:.1f}",
                f"{row['faces_per_second']:.2f}",
            )
        console.print(table)
        _print_end_to_end(console, model)
    default = results["default_cloak"]
    console.print(f"the default cloak, {default['settings']} at level {default['level']}:")
    _print_end_to_end(console, default)


def _print_end_to_end(console: Console, measured: dict) -> None:
    console.print(
        f"end to end: {measured['end_to_end_seconds_per_face']} s per face "
        f"= {measured['end_to_end_forward_passes_per_face']} forward passes "
        f"({measured['faces_cloaked_end_to_end']} faces), folder in batches: "
        f"{measured['folder_faces_per_second']} faces/s "
        f"= {measured['folder_forward_passes_per_face']} forward passes per face, "
        f"process peak RSS so far {measured['peak_rss_mb']} MB"
    )
    scores = [face["ssimulacra2"] for face in measured["faces"]]
    if scores:
        mean = sum(scores) / len(scores)
        console.print(f"visibility: SSIMULACRA2 per face mean {mean:.1f}, min {min(scores):.1f}")
