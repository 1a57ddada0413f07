"""Option parsing shared by the commands."""

from __future__ import annotations

import typer


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
