"""`ulixes-onnx pool PHOTO... --out FILE.npz`: other people's faces, embedded once for the pool strategies."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ulixes_onnx.atomic import protect_inputs
from ulixes_onnx.cards import get_card
from ulixes_onnx.cli.context import CliState
from ulixes_onnx.cli.options import DEFAULT_MODEL_LIST, check_new_file, model_names
from ulixes_onnx.cloaking.files import expand_inputs
from ulixes_onnx.cloaking.pool import build_pool, save_pool
from ulixes_onnx.errors import UsageError
from ulixes_onnx.face_model import FaceModel
from ulixes_onnx.faces import detector_from_store


def pool(
    ctx: typer.Context,
    paths: Annotated[
        list[str], typer.Argument(metavar="PHOTO...", help="Photos, folders (searched recursively) or globs.")
    ],
    out: Annotated[Path, typer.Option(metavar="FILE.npz", help="Where to write the pool.")],
    models: Annotated[
        str,
        typer.Option(metavar="NAMES", help="The models the pool is for: those you will cloak with."),
    ] = DEFAULT_MODEL_LIST,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing pool file.")] = False,
    threads: Annotated[
        int | None, typer.Option(metavar="N", help="CPU threads (default: all cores).")
    ] = None,
) -> None:
    """Embed other people's faces into a pool file for `cloak --strategy ... --pool FILE.npz`.

    Only embeddings are kept (no images); `cloak` checks them against the weights of its models.
    """
    photos = [photo.path for photo in expand_inputs(paths)]
    _check_destination(out, photos, overwrite)
    names = model_names(models, "--models")
    store = ctx.ensure_object(CliState).store()
    embedders = [FaceModel(get_card(name), store, threads=threads) for name in names]
    skipped = []

    def skip(path: Path, reason: str) -> None:
        skipped.append(path)
        print(f"skipped: {reason}", file=sys.stderr)

    faces = build_pool(photos, embedders, detector_from_store(store), on_skip=skip)
    with protect_inputs(photos):
        save_pool(faces, embedders, out, overwrite=overwrite)
    count = len(next(iter(faces.values())))
    typer.echo(f"{out}: {count} faces from {len(photos) - len(skipped)} photos, for {', '.join(names)}")


def _check_destination(out: Path, photos: list[Path], overwrite: bool) -> None:
    """Refuse, before any work, a pool file that could not be written or would replace a photo."""
    if not photos:
        raise UsageError("no photos found among the given paths")
    if out.suffix != ".npz":
        raise UsageError(f"--out {out}: a pool file ends in .npz")
    check_new_file("--out", out, photos, overwrite, "the pool")
