"""`ulixes-onnx demo`: cloak the built-in sample photo (the astronaut) end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from PIL import Image

from ulixes_onnx.cli.cloak import cloak
from ulixes_onnx.photos import samples


def demo(
    ctx: typer.Context,
    output_dir: Annotated[
        Path, typer.Option(metavar="DIR", help="Where to write the sample and its cloaked copy.")
    ] = Path("ulixes-demo"),
) -> None:
    """Write the sample astronaut photo, cloak it with the defaults and verify the copy."""
    output_dir.mkdir(parents=True, exist_ok=True)
    sample = output_dir / "astronaut.png"
    if not sample.exists():
        Image.fromarray(samples.astronaut()).save(sample)
    ctx.invoke(cloak, ctx=ctx, paths=[str(sample)], overwrite=True)
