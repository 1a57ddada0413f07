"""Option parsing shared by the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ulixes_onnx.cloak import STRATEGIES

# Cloaking options that `cloak` and `eval` share.
Strategy = Annotated[str, typer.Option(help=f"Negative examples: {', '.join(STRATEGIES)}.")]
Ensemble = Annotated[str, typer.Option(help="Several models: max or sum of their masks, or joint gradients.")]
Pool = Annotated[
    Path | None, typer.Option(help="Other people's faces for pool strategies: a folder or a .npz pool.")
]
Margin = Annotated[float | None, typer.Option(help="Triplet margin (default: each model's card).")]
Target = Annotated[float | None, typer.Option(help="away: distance to reach (default: each model's card).")]
MaxDssim = Annotated[float, typer.Option(help="Stop before a chip's DSSIM exceeds this.")]
MaxSteps = Annotated[int, typer.Option(help="Most steps per face and round.")]
MaxRounds = Annotated[int, typer.Option(help="Most verify-and-continue rounds.")]


def choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    """`value` if it is one of `allowed`, else a usage error naming the option."""
    if value not in allowed:
        raise typer.BadParameter(f"{value!r} is not one of: {', '.join(allowed)}", param_hint=option)
    return value


def model_names(value: str, option: str) -> tuple[str, ...]:
    """The comma-separated model names of an option, in order, each once."""
    names = tuple(dict.fromkeys(name.strip() for name in value.split(",") if name.strip()))
    if not names:
        raise typer.BadParameter("give at least one model name", param_hint=option)
    return names
