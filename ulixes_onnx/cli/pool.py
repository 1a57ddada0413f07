"""`ulixes-onnx pool PHOTO... --out FILE.npz`: other people's faces, embedded once for the pool strategies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ulixes_onnx.cards import get_card
from ulixes_onnx.cli.context import CliState
from ulixes_onnx.cli.options import DEFAULT_MODEL_LIST, model_names
from ulixes_onnx.cloaking.files import expand_inputs
from ulixes_onnx.cloaking.pool import build_pool, save_pool
from ulixes_onnx.face_model import FaceModel
from ulixes_onnx.faces import detector_from_store


def pool(
    ctx: typer.Context,
    paths: Annotated[
        list[Path], typer.Argument(metavar="PHOTO...", help="Photos or folders of other people.")
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
    if out.suffix != ".npz":
        raise typer.BadParameter(f"{out}: a pool file ends in .npz", param_hint="--out")
    if out.exists() and not overwrite:
        raise typer.BadParameter(f"{out} exists; give --overwrite to replace it", param_hint="--out")
    photos = expand_inputs(str(path) for path in paths)
    if not photos:
        raise typer.BadParameter("no photos found", param_hint="PHOTO...")
    store = ctx.ensure_object(CliState).store()
    embedders = [
        FaceModel(get_card(name), store, threads=threads) for name in model_names(models, "--models")
    ]
    faces = build_pool([photo.path for photo in photos], embedders, detector_from_store(store))
    save_pool(faces, embedders, out)
    counts = {len(embeddings) for embeddings in faces.values()}
    typer.echo(f"{out}: {counts.pop()} faces of {len(photos)} photos, for {', '.join(faces)}")
