"""The `ulixes-onnx` command line: a thin layer over the Python API.

Every command is a small module of its own; this module only assembles them and turns `UlixesError`
(bad input, a broken installation) into one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from ulixes_onnx import __version__
from ulixes_onnx.cli import models
from ulixes_onnx.cli.bench import bench
from ulixes_onnx.cli.cloak import cloak
from ulixes_onnx.cli.context import CliState
from ulixes_onnx.cli.demo import demo
from ulixes_onnx.cli.evaluate import evaluate
from ulixes_onnx.cli.help import PlainCommand, PlainGroup
from ulixes_onnx.cli.serve import serve
from ulixes_onnx.errors import UlixesError

app = typer.Typer(
    name="ulixes-onnx",
    cls=PlainGroup,
    help="Protect photos from facial recognition with near-invisible adversarial cloaks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(models.app, name="models")
app.command(cls=PlainCommand)(cloak)
app.command(cls=PlainCommand)(demo)
app.command(name="eval", cls=PlainCommand)(evaluate)
app.command(cls=PlainCommand)(bench)
app.command(cls=PlainCommand)(serve)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"ulixes-onnx {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    models_dir: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Model cache directory (default: $ULIXES_ONNX_MODELS_DIR or the XDG cache dir).",
            file_okay=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    ctx.obj = CliState(models_dir=models_dir)


def main() -> None:
    # Model builds take long on first use: say so on stderr, one line each, rather than sit silent.
    announcer = logging.StreamHandler(sys.stderr)
    announcer.setFormatter(logging.Formatter("ulixes-onnx: %(message)s"))
    store_log = logging.getLogger("ulixes_onnx.store")
    store_log.addHandler(announcer)
    store_log.setLevel(logging.INFO)
    store_log.propagate = False
    try:
        app()
    except UlixesError as error:
        print(f"ulixes-onnx: error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        # Outside `cloak`'s loop (e.g. during a model build) there is nothing to report yet.
        print("ulixes-onnx: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        print(f"ulixes-onnx: error: {error.strerror or error}{where}", file=sys.stderr)
        sys.exit(1)
