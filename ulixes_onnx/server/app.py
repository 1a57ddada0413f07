"""The HTTP side of `ulixes-onnx serve`: one page and a JSON API over the job queue (Starlette).

Endpoints (README, `serve`): `GET /` the page, `GET /v1/health`, `GET /v1/models`,
`POST /v1/cloak` (multipart: `photo`, optional `models`, `target`; `?wait=false` answers 202 with a job
at once), `GET /v1/jobs/{id}`, `GET /v1/jobs/{id}/result` (the cloaked file; the job and its files are
deleted once it is sent), `DELETE /v1/jobs/{id}`. Every error is `{"error": "<one line>"}` with a 4xx or
5xx status, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import partial
from importlib import resources

import anyio.to_thread
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ulixes_onnx import __version__
from ulixes_onnx.cards import all_cards
from ulixes_onnx.cloaking.settings import DEFAULT_MODELS, LEVELS, CloakSettings
from ulixes_onnx.server.jobs import (
    Cloakers,
    Job,
    JobQueue,
    JobStatus,
    Limits,
    QueueFullError,
    ShuttingDownError,
)
from ulixes_onnx.server.report import download_name, job_json
from ulixes_onnx.store import ModelStatus, ModelStore

log = logging.getLogger(__name__)

FORM_FIELDS = ("photo", "models", "target", "level", "min_quality")
EXPIRY_INTERVAL_SECONDS = 30.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# The page loads nothing but its own files; blob: URLs show the photos the browser already holds.
PAGE_SECURITY_POLICY = "default-src 'self'; img-src 'self' blob:; object-src 'none'; frame-ancestors 'none'"
PRIVATE = {"Cache-Control": "no-store"}


class BadRequestError(Exception):
    """A request the client must change; `str(error)` is the one-line answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Service:
    """What the routes share: the queue, the models on offer, the limits."""

    queue: JobQueue
    models: list[dict]
    limits: Limits

    @classmethod
    def start(cls, store: ModelStore, limits: Limits, threads: int | None) -> Service:
        cloakers = Cloakers(store, threads=threads)
        # The default models are loaded (and built if needed) before the first request, not during it.
        cloakers.get(CloakSettings(DEFAULT_MODELS))
        return cls(JobQueue(cloakers, limits), _model_listing(store), limits)


def create_app(
    store: ModelStore | None = None,
    limits: Limits | None = None,
    *,
    threads: int | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> Starlette:
    """The ASGI app. `allowed_hosts` (None: any) are the Host header names it answers, so that a web
    page elsewhere cannot reach a loopback server through a DNS name of its own (DNS rebinding)."""
    limits = limits or Limits()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        start = partial(Service.start, store or ModelStore(), limits, threads)
        service = await anyio.to_thread.run_sync(start)
        app.state.service = service
        expiry = asyncio.create_task(_expire_periodically(service.queue))
        try:
            yield
        finally:
            expiry.cancel()
            await anyio.to_thread.run_sync(service.queue.close)

    routes = [
        Route("/", page),
        Route("/v1/health", health),
        Route("/v1/models", models),
        Route("/v1/cloak", cloak, methods=["POST"]),
        Route("/v1/jobs/{job_id}", job, methods=["GET", "DELETE"]),
        Route("/v1/jobs/{job_id}/result", result),
        Mount("/static", StaticFiles(packages=[("ulixes_onnx.server", "static")]), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            HTTPException: _http_error,
            BadRequestError: _bad_request,
            Exception: _internal_error,
        },
    )
    app.add_middleware(RequestGuard, max_bytes=limits.max_upload_bytes, allowed_hosts=allowed_hosts)
    return app


async def page(request: Request) -> Response:
    html = (resources.files("ulixes_onnx.server") / "static" / "index.html").read_text()
    return HTMLResponse(
        html, headers={"Content-Security-Policy": PAGE_SECURITY_POLICY, "X-Content-Type-Options": "nosniff"}
    )


async def health(request: Request) -> Response:
    service: Service = request.app.state.service
    return JSONResponse(
        {
            "status": "ok",
            "version": __version__,
            "jobs": service.queue.counts(),
            "workers": service.limits.workers,
            "queue": service.limits.queue,
            "max_upload_bytes": service.limits.max_upload_bytes,
            "max_pixels": service.limits.max_pixels,
        }
    )


async def models(request: Request) -> Response:
    return JSONResponse({"models": request.app.state.service.models})


async def cloak(request: Request) -> Response:
    service: Service = request.app.state.service
    wait = _flag(request.query_params.get("wait", "true"), "wait")
    try:
        async with request.form(max_files=1, max_fields=len(FORM_FIELDS)) as form:
            job = await anyio.to_thread.run_sync(_submit, form, service)
    except QueueFullError as busy:
        return _error(str(busy), 503, {"Retry-After": str(busy.retry_after)})
    except ShuttingDownError as stopping:
        return _error(str(stopping), 503)
    if not wait:
        return JSONResponse(
            job_json(job, service.queue), 202, headers={"Location": f"/v1/jobs/{job.id}", **PRIVATE}
        )
    try:
        finished = asyncio.shield(asyncio.wrap_future(job.finished))
        await asyncio.wait_for(finished, service.limits.timeout_seconds)
    except TimeoutError:
        service.queue.remove(job.id)
        return _error(
            f"not done within {service.limits.timeout_seconds:g} s; cancelled (use ?wait=false and poll)", 504
        )
    if job.status is not JobStatus.DONE:
        service.queue.remove(job.id)
        return _error(job.error or "the job failed", job.error_status)
    return JSONResponse(job_json(job, service.queue), headers=PRIVATE)


async def job(request: Request) -> Response:
    service: Service = request.app.state.service
    found = _find_job(request)
    if request.method == "DELETE":
        service.queue.remove(found.id)
        return Response(status_code=204)
    return JSONResponse(job_json(found, service.queue), headers=PRIVATE)


async def result(request: Request) -> Response:
    service: Service = request.app.state.service
    found = _find_job(request)
    if found.status is not JobStatus.DONE or found.output is None:
        raise BadRequestError(f"the job is {found.status.value}, there is no result to download", 409)
    return FileResponse(
        found.output,
        media_type=found.media_type,
        filename=download_name(found),
        headers=PRIVATE,
        background=BackgroundTask(service.queue.remove, found.id),
    )


def _submit(form: FormData, service: Service) -> Job:
    settings = parse_settings(form, service.models)
    photo = form.get("photo")
    if not isinstance(photo, UploadFile):
        raise BadRequestError("send the photo as a multipart file field named 'photo'")
    # The form parser has the upload in a spooled temporary file already; the queue stores it.
    photo.file.seek(0)
    data = photo.file.read()
    if not data:
        raise BadRequestError("the photo is empty (0 bytes)")
    return service.queue.submit(data, photo.filename or "", settings)


def parse_settings(form: FormData, offered: list[dict]) -> CloakSettings:
    """The cloak settings of a form, checked against the models on offer."""
    unknown = sorted(set(form.keys()) - set(FORM_FIELDS))
    if unknown:
        raise BadRequestError(f"unknown form field {unknown[0]!r}; use: {', '.join(FORM_FIELDS)}")
    names = tuple(
        dict.fromkeys(name.strip() for name in str(form.get("models") or "").split(",") if name.strip())
    )
    built = {model["name"] for model in offered if model["built"]}
    for name in names:
        if name not in built:
            known = {model["name"] for model in offered}
            hint = f"build it: ulixes-onnx models build {name}" if name in known else "see GET /v1/models"
            raise BadRequestError(f"model {name!r} is not available; {hint}")
    target = str(form.get("target") or "").strip()
    if target:
        try:
            value = float(target)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise BadRequestError(f"target must be a positive number, not {target!r}")
    level = str(form.get("level") or CloakSettings().level).strip()
    if level not in LEVELS:
        raise BadRequestError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
    min_quality = str(form.get("min_quality") or "").strip()
    floor = CloakSettings.min_quality
    if min_quality:
        try:
            floor = float(min_quality)
        except ValueError:
            floor = math.nan
        if not 0 <= floor < 100:
            raise BadRequestError(f"min_quality must be a number in [0, 100), not {min_quality!r}")
    return CloakSettings(
        names or DEFAULT_MODELS, target=float(target) if target else None, level=level, min_quality=floor
    )


class RequestGuard:
    """Refuses requests whose Host is not allowed and bodies over `max_bytes` (declared or sent),
    before the form parser holds any of it."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, allowed_hosts: Sequence[str] | None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.allowed_hosts = None if allowed_hosts is None else set(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if self.allowed_hosts is not None and _host_name(host) not in self.allowed_hosts:
            await _error("this server answers only on its loopback address", 421)(scope, receive, send)
            return
        declared = headers.get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large()(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BadRequestError(self._too_large_message(), 413)
            return message

        await self.app(scope, counted, send)

    def _too_large_message(self) -> str:
        return f"the request is larger than the limit of {self.max_bytes / 1e6:g} MB"

    def _too_large(self) -> Response:
        return _error(self._too_large_message(), 413)


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.find("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _find_job(request: Request) -> Job:
    found = request.app.state.service.queue.get(request.path_params["job_id"])
    if found is None:
        raise BadRequestError("no such job; results are deleted once downloaded or after they expire", 404)
    return found


def _flag(value: str, name: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise BadRequestError(f"{name} must be true or false, not {value!r}")


def _error(message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers=headers)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return _error(str(error.detail), error.status_code)


async def _bad_request(request: Request, error: Exception) -> Response:
    assert isinstance(error, BadRequestError)
    return _error(str(error), error.status)


async def _internal_error(request: Request, error: Exception) -> Response:
    log.error("internal error: %s", type(error).__name__, exc_info=error)
    return _error("internal error; see the server log", 500)


async def _expire_periodically(queue: JobQueue, interval: float = EXPIRY_INTERVAL_SECONDS) -> None:
    while True:
        await asyncio.sleep(interval)
        await anyio.to_thread.run_sync(queue.expire)


def _model_listing(store: ModelStore) -> list[dict]:
    listing = []
    for card in all_cards().values():
        if card.kind != "embedding" or card.embedding is None or card.cloak is None:
            continue
        status = store.status(card)
        listing.append(
            {
                "name": card.name,
                "description": card.description,
                "default": card.name in DEFAULT_MODELS,
                "built": status is ModelStatus.BUILT,
                "status": status.value,
                "metric": card.embedding.metric,
                "threshold": card.embedding.threshold,
                # The loop's target at each level (the page shows the chosen level's).
                "targets": {
                    level: round(CloakSettings(level=level).loop_settings(card).target, 4) for level in LEVELS
                },
            }
        )
    return listing
