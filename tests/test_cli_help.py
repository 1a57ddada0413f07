"""The rendered `--help` of every command: plain placeholders, no type tags, everyday options first."""

from __future__ import annotations

import inspect
import re
from importlib import import_module

import pytest
from typer.testing import CliRunner

from ulixes_onnx.cli import COMMANDS as COMMAND_ENTRIES
from ulixes_onnx.cli import app
from ulixes_onnx.cli import models as models_command
from ulixes_onnx.cli.options import ADVANCED, PROTECTION, SETTING_OPTIONS

COMMANDS = [
    (),
    ("cloak",),
    ("demo",),
    ("eval",),
    ("bench",),
    ("serve",),
    ("pool",),
    ("models",),
    ("models", "list"),
    ("models", "build"),
    ("models", "check"),
]
# What Typer prints by itself unless told otherwise: type tags, ranges in its own notation, required
# arguments in braces, and the negative twin of every switch.
TYPE_TAG = re.compile(r"<(bool|str|int|float|path|list\[[^\]]*\])[^>]*>")
NOISE = ("x>=", "<=x", "{", "}", "--no-overwrite", "--no-skip-existing", "--no-keep-exif", "--no-force")


def help_text(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "140", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


def panels(text: str) -> dict[str, list[str]]:
    """Panel title -> the options and arguments listed in it, in order."""
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        title = re.match(r"\s*╭─ (.+?) ─", line)
        if title:
            current = found.setdefault(title.group(1), [])
            continue
        entry = re.match(r"\s*│\s+(?:\*\s+)?(--[\w-]+|[A-Z]+\.*)\s", line)
        if entry:
            current.append(entry.group(1))
    return found


def row(text: str, option: str) -> str:
    """The first line of `option`'s row, its leading box border and spaces removed."""
    (line,) = [line for line in text.splitlines() if re.match(rf"\s*│\s+{option}\s", line)]
    return line.strip("│ ")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: " ".join(command) or "root")
def test_help_shows_no_type_tags_or_braces(command: tuple[str, ...]) -> None:
    text = help_text(*command)
    assert not TYPE_TAG.search(text), TYPE_TAG.search(text)
    for noise in NOISE:
        assert noise not in text, noise
    assert re.search(r"--help\s+Show this message and exit\.", text)


def test_cloak_usage_names_the_photos() -> None:
    text = help_text("cloak")
    assert re.search(r"Usage: .* cloak \[OPTIONS\] PHOTO\.\.\.\s*$", text, re.MULTILINE)
    assert panels(text)["Arguments"] == ["PHOTO..."]
    assert re.search(r"Usage: .* models build \[OPTIONS\] \[MODEL\.\.\.\]", help_text("models", "build"))


def test_cloak_everyday_options_come_first_and_the_algorithm_under_advanced() -> None:
    found = panels(help_text("cloak"))
    assert list(found) == ["Arguments", "Options", PROTECTION, ADVANCED]
    assert found["Options"][:4] == ["--output-dir", "--overwrite", "--skip-existing", "--json"]
    assert found[PROTECTION] == [
        "--models",
        "--level",
        "--target",
        "--min-quality",
        "--polish",
        "--reference",
    ]
    protection = {"--level", "--target", "--min-quality", "--polish"}
    advanced = {f"--{name.replace('_', '-')}" for name in SETTING_OPTIONS} - protection
    assert set(found[ADVANCED]) == advanced | {"--pool"}


def test_eval_panels_keep_the_same_order() -> None:
    found = panels(help_text("eval"))
    assert list(found) == ["Arguments", "Options", PROTECTION, ADVANCED]
    assert found[PROTECTION] == ["--cloak-models", "--level", "--target", "--min-quality", "--polish"]
    assert "--pool" in found[ADVANCED] and "--models" in found["Options"]


def test_switches_show_no_placeholder_and_values_a_plain_one() -> None:
    text = help_text("cloak")
    assert row(text, "--overwrite").split()[1] == "Replace"
    assert row(text, "--keep-exif").split()[1] == "Keep"
    placeholders = {
        "--output-dir": "DIR",
        "--json": "FILE",
        "--no-face": "skip|copy",
        "--quality": "1-100",
        "--batch": "N",
        "--level": "low|mid|high",
        "--ensemble": "max|sum|joint",
        "--models": "NAMES",
    }
    for option, placeholder in placeholders.items():
        assert row(text, option).split()[1] == placeholder, option
    assert row(help_text("serve"), "--port").split()[1] == "PORT"
    assert row(help_text("models", "build"), "--force").split()[1] == "Rebuild"


def test_ranges_are_still_enforced() -> None:
    result = CliRunner().invoke(app, ["cloak", "--quality", "0", "photo.jpg"])
    assert result.exit_code == 2
    assert "--quality" in result.output
    result = CliRunner().invoke(app, ["serve", "--port", "70000"])
    assert result.exit_code == 2
    assert "--port" in result.output


def test_help_paragraphs_are_not_hard_wrapped() -> None:
    # Rich help keeps a docstring's line breaks: a paragraph wrapped in the source shows a ragged
    # line on every terminal width but the one it was wrapped for.
    callbacks = [
        getattr(import_module(entry.module), entry.attribute)
        for entry in COMMAND_ENTRIES.values()
        if entry.attribute != "app"
    ]
    callbacks += [command.callback for command in models_command.app.registered_commands]
    assert len(callbacks) == 9
    for callback in callbacks:
        for paragraph in inspect.getdoc(callback).split("\n\n"):
            assert "\n" not in paragraph, callback.__name__
