"""How the commands show their help: value placeholders in plain words, nothing after a switch.

Typer prints a type tag next to every parameter (`<bool>` after `--help`, `<list[str]>` after the
photos, `<int range> [x>=1]`) and writes required arguments as `{paths}...` in the usage line. The
command and group classes here keep the rest of Typer's rich help (panels, defaults, colours) and
show instead each option's `metavar` (or its name in capitals), nothing for a switch, and `PHOTO...`
in the usage line. Valid ranges are still enforced by the options' `min` and `max`; an option whose
range matters says it in its placeholder or help.
"""

from __future__ import annotations

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption


class PlainOption(TyperOption):
    def display_type_rich(self, ctx: typer.Context) -> str | None:
        if self.is_flag:
            return None
        return self.metavar if self.metavar is not None else (self.name or "value").upper()

    def _get_number_range_help_str(self) -> str | None:
        return None


class PlainArgument(TyperArgument):
    def display_type_rich(self, ctx: typer.Context) -> str | None:
        return None

    def _usage_display_name(self) -> str:
        # As in the help panel: the metavar as given, else the name in capitals with "..." if repeated.
        name = self.display_name_raw.upper()
        if self.metavar is None and self.nargs != 1:
            name += "..."
        return name if self.required else f"[{name}]"


def _plain(parameter: object) -> None:
    # Typer builds its parameters itself and takes no class for them, so they are given the plain
    # display after the fact; the subclasses add no state, only how they are shown.
    if type(parameter) is TyperOption:
        parameter.__class__ = PlainOption
    elif type(parameter) is TyperArgument:
        parameter.__class__ = PlainArgument


class _PlainHelp:
    """Mixed into Typer's command and group classes (before them)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        for parameter in self.params:  # type: ignore[attr-defined]
            _plain(parameter)

    def get_help_option(self, ctx: typer.Context) -> TyperOption | None:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            _plain(option)
        return option


class PlainCommand(_PlainHelp, TyperCommand):
    """A command whose help shows plain placeholders (see the module's docstring)."""


class PlainGroup(_PlainHelp, TyperGroup):
    """A group of commands whose help shows plain placeholders (see the module's docstring)."""
