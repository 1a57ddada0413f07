"""The `ulixes-onnx` command line: a thin layer over the Python API.

Every command is a small module of its own; this module only assembles them and turns `UlixesError`
(bad input, a broken installation) into one line on stderr and a non-zero exit code, never a traceback.
A command's module is imported when the command runs (or shows its own help): the modules behind them
load NumPy, OpenCV and onnxruntime, which `ulixes-onnx --help` does not need.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand, TyperGroup

from ulixes_onnx import __version__
from ulixes_onnx.cli.context import CliState
from ulixes_onnx.cli.help import PlainCommand, PlainGroup
from ulixes_onnx.errors import UlixesError


@dataclass(frozen=True)
class CommandEntry:
    """Where a command lives (a function, or a Typer app of subcommands) and its one-line help, as the
    command's docstring (or its app's help) starts; a test holds the two equal."""

    module: str
    attribute: str
    summary: str


COMMANDS = {
    "cloak": CommandEntry(
        "ulixes_onnx.cli.cloak",
        "cloak",
        "Cloak every face in the photos; write `<name>_cloaked.<ext>` copies and verify them.",
    ),
    "demo": CommandEntry(
        "ulixes_onnx.cli.demo",
        "demo",
        "Write the sample astronaut photo, cloak it with the defaults and verify the copy.",
    ),
    "eval": CommandEntry(
        "ulixes_onnx.cli.evaluate",
        "evaluate",
        "Cloak a labelled dataset and measure verification, identification, clustering, transfer and more.",
    ),
    "bench": CommandEntry(
        "ulixes_onnx.cli.bench",
        "bench",
        "Measure cloak steps, faces per second, seconds per face end to end and peak memory.",
    ),
    "serve": CommandEntry(
        "ulixes_onnx.cli.serve",
        "serve",
        "Serve a web page and an HTTP API that cloak uploaded photos on this computer.",
    ),
    "pool": CommandEntry(
        "ulixes_onnx.cli.pool",
        "pool",
        "Embed other people's faces into a pool file for `cloak --strategy ... --pool FILE.npz`.",
    ),
    "models": CommandEntry("ulixes_onnx.cli.models", "app", "List, build and check face models."),
}


def load_command(name: str) -> TyperCommand | TyperGroup:
    """The command `name` of `COMMANDS`, its module imported."""
    entry = COMMANDS[name]
    target = getattr(import_module(entry.module), entry.attribute)
    if isinstance(target, typer.Typer):
        return typer.main.get_group(target)
    single = typer.Typer(add_completion=False)
    single.command(name=name, cls=PlainCommand)(target)
    return typer.main.get_command(single)


class _CommandsOnDemand(PlainGroup):
    """The root group: lists `COMMANDS` from their summaries and imports a command only to run it."""

    listing = False

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: typer.Context, cmd_name: str) -> TyperCommand | TyperGroup | None:
        if cmd_name not in COMMANDS:
            return None
        if self.listing:
            return PlainCommand(cmd_name, help=COMMANDS[cmd_name].summary)
        if cmd_name not in self.commands:
            self.commands[cmd_name] = load_command(cmd_name)
        return self.commands[cmd_name]

    def format_help(self, ctx: typer.Context, formatter: object) -> None:
        self.listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self.listing = False


app = typer.Typer(
    name="ulixes-onnx",
    help="Protect photos from facial recognition with near-invisible adversarial cloaks.",
    cls=_CommandsOnDemand,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


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
