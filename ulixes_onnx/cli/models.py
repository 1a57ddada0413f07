"""`ulixes-onnx models ...`: list, build and check the models in the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ulixes_onnx.cards import all_cards, get_card
from ulixes_onnx.check import check_models
from ulixes_onnx.cli.context import CliState
from ulixes_onnx.cli.help import PlainCommand, PlainGroup
from ulixes_onnx.errors import ModelError
from ulixes_onnx.store import ModelStatus

app = typer.Typer(cls=PlainGroup, help="List, build and check face models.", no_args_is_help=True)

CHECK_FAILED_EXIT_CODE = 7


def _size_mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


@app.command("list", cls=PlainCommand)
def list_models(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show every known model with its status, size and licence."""
    store = ctx.ensure_object(CliState).store()
    rows = []
    for card in all_cards().values():
        status = store.status(card)
        # The whole folder: the gradient and optimised graphs made next to a model outweigh it.
        size = store.disk_bytes(card) if status is ModelStatus.BUILT else None
        needs = ", ".join(card.source.files.values()) if status.name == "NEEDS_USER_WEIGHTS" else ""
        rows.append(
            {
                "name": card.name,
                "kind": card.kind,
                "default": card.default,
                "status": status.value,
                "size": "-" if size is None else _size_mb(size),
                "bytes": size,
                "licence": card.licence,
                "needs": needs,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"models in {store.root}", caption="* default models")
    for column in ("name", "kind", "status", "size"):
        table.add_column(column, no_wrap=True)
    table.add_column("licence")
    for row in rows:
        name = row["name"] + (" *" if row["default"] else "")
        table.add_row(name, row["kind"], row["status"], row["size"], row["licence"])
    console = Console()
    console.print(table)
    for row in rows:
        if row["needs"]:
            console.print(f"{row['name']} needs: {row['needs']}", highlight=False)


@app.command("build", cls=PlainCommand)
def build_models(
    ctx: typer.Context,
    names: Annotated[
        list[str] | None, typer.Argument(metavar="MODEL...", help="Models to build (default: all).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if a verified copy exists.")] = False,
    weights: Annotated[
        list[Path] | None,
        typer.Option(
            "--weights",
            metavar="FILE",
            help="Your weights file for a model that needs one (see `models list`); "
            "repeat for models with several files, in the order the card lists them.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Build models from their source packages, or from weights files you supply, into the store."""
    store = ctx.ensure_object(CliState).store()
    if weights:
        if not names or len(names) != 1:
            raise ModelError(
                "--weights builds one model: name it, e.g. models build vggface-vgg16 --weights FILE"
            )
        card = get_card(names[0])
        if card.source.from_registry:
            raise ModelError(f"model {card.name!r} is built from its package; drop --weights")
        roles = list(card.source.files)
        if len(weights) != len(roles):
            raise ModelError(
                f"model {card.name!r} needs {len(roles)} file(s) ({', '.join(card.source.files.values())}), "
                f"got {len(weights)}"
            )
        store.build(card, dict(zip(roles, weights, strict=True)))
        typer.echo(f"{card.name}: built ({_size_mb(store.disk_bytes(card))}) in {store.model_dir(card)}")
        return
    cards = (
        [get_card(name) for name in names]
        if names
        else [
            card for card in all_cards().values() if store.status(card) is not ModelStatus.NEEDS_USER_WEIGHTS
        ]
    )
    for card in cards:
        if force:
            store.build(card)
        else:
            store.get(card)
        size = _size_mb(store.disk_bytes(card))
        typer.echo(f"{card.name}: built ({size}) in {store.model_dir(card)}")


@app.command("check", cls=PlainCommand)
def check(
    ctx: typer.Context,
    names: Annotated[
        list[str] | None,
        typer.Argument(metavar="MODEL...", help="Models to check (default: every built one)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a summary.")] = False,
) -> None:
    """Run each model on real faces and check its files, distances and gradient graph."""
    reports = check_models(ctx.ensure_object(CliState).store(), names)
    if as_json:
        typer.echo(json.dumps(reports, indent=2))
    else:
        console = Console()
        for report in reports:
            console.print(
                f"[bold]{report['model']}[/bold] ({report['kind']}): {'ok' if report['ok'] else 'FAILED'}"
            )
            for name, result in report["checks"].items():
                details = ", ".join(f"{k}={v}" for k, v in result.items() if k not in ("ok", "files"))
                console.print(f"  {'ok  ' if result['ok'] else 'FAIL'} {name}: {details}")
    if not all(report["ok"] for report in reports):
        raise typer.Exit(CHECK_FAILED_EXIT_CODE)
