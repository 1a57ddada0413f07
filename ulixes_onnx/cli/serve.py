"""`ulixes-onnx serve`: the local web page and HTTP API (needs the `serve` extra)."""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from ulixes_onnx.cli.context import CliState
from ulixes_onnx.errors import UlixesError

SERVE_EXTRA_HINT = "serve needs the serve extra: pip install 'ulixes-onnx[serve]'"


def serve(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(metavar="ADDRESS", help="Address to listen on (loopback: only this computer).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, metavar="PORT", help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, metavar="N", help="Photos cloaked at once (CPU-bound).")] = 1,
    queue: Annotated[
        int, typer.Option(min=0, metavar="N", help="Photos that may wait; beyond, 503 + Retry-After.")
    ] = 8,
    max_upload_mb: Annotated[
        float, typer.Option(min=0.001, metavar="MB", help="Largest request body, in MB.")
    ] = 50.0,
    max_megapixels: Annotated[
        float,
        typer.Option(
            min=0.001, metavar="MP", help="Largest photo, in megapixels (decompression-bomb guard)."
        ),
    ] = 50.0,
    timeout: Annotated[
        float,
        typer.Option(
            min=1, metavar="SECONDS", help="Seconds a request may wait for its photo (queue included)."
        ),
    ] = 300.0,
    keep: Annotated[
        float,
        typer.Option(
            min=1, metavar="SECONDS", help="Seconds an undownloaded result is kept before it is deleted."
        ),
    ] = 600.0,
    threads: Annotated[
        int | None, typer.Option(metavar="N", help="CPU threads per worker (default: all cores).")
    ] = None,
) -> None:
    """Serve a web page and an HTTP API that cloak uploaded photos on this computer."""
    try:
        import uvicorn

        from ulixes_onnx.server.app import LOOPBACK_HOSTS, create_app
        from ulixes_onnx.server.jobs import Limits
    except ImportError:
        raise UlixesError(SERVE_EXTRA_HINT) from None
    loopback = _is_loopback(host)
    if not loopback:
        typer.echo(
            f"warning: listening on {host}: anyone who can reach it can use this server (no authentication)",
            err=True,
        )
    limits = Limits(
        workers=workers,
        queue=queue,
        max_upload_bytes=round(max_upload_mb * 1e6),
        max_pixels=round(max_megapixels * 1e6),
        timeout_seconds=timeout,
        keep_seconds=keep,
    )
    app = create_app(
        ctx.ensure_object(CliState).store(),
        limits,
        threads=threads,
        allowed_hosts=LOOPBACK_HOSTS if loopback else None,
    )
    # Jobs still running at shutdown finish (or time out) before the queue removes its files.
    uvicorn.run(app, host=host, port=port, timeout_graceful_shutdown=round(timeout), log_level="info")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
