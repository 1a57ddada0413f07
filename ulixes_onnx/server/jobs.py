"""Cloaking jobs: a bounded queue in front of CPU-bound workers, files in a private temp folder.

Every upload becomes a job with a folder of its own under one temp folder per server (mode 0700). The
worker cloaks it with `files.cloak_file`, the function behind the `cloak` command, so the result is
byte for byte what `cloak` writes: same format, metadata policy and quality, verified as written. The
original is deleted as soon as it is cloaked; the result when it is downloaded, deleted, or left
unclaimed for `Limits.keep_seconds`. Closing the queue cancels the jobs not started, lets running ones
finish (cloaking cannot be interrupted midway, and writes are atomic, so no partial file exists) and
removes the temp folder.

Nothing here logs a photo or a file name: uploads are stored as `upload<ext>` and error messages name
the photo "upload".
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from PIL import Image

from ulixes_onnx.cloaking.files import PHOTO_SUFFIXES, FileReport, OutputOptions, PhotoFile, cloak_file
from ulixes_onnx.cloaking.pipeline import Cloaker
from ulixes_onnx.cloaking.settings import CloakSettings
from ulixes_onnx.errors import UlixesError
from ulixes_onnx.store import ModelStore

log = logging.getLogger(__name__)

# Until a job has finished, the queue guesses a job takes this long when it tells clients when to retry.
TYPICAL_JOB_SECONDS = 5.0
UPLOAD_STEM = "upload"


@dataclass(frozen=True)
class Limits:
    """What keeps the server alive under load (see README, `serve`)."""

    workers: int = 1
    queue: int = 8
    max_upload_bytes: int = 50_000_000
    max_pixels: int = 50_000_000
    timeout_seconds: float = 300.0
    keep_seconds: float = 600.0


class JobStatus(Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(eq=False)
class Job:
    """One uploaded photo on its way to a cloaked copy. `finished` resolves (to the job) when the job
    is done, failed or cancelled."""

    id: str
    settings: CloakSettings
    folder: Path
    upload: Path
    download_name: str
    created: float
    status: JobStatus = JobStatus.QUEUED
    report: FileReport | None = None
    media_type: str | None = None
    error: str | None = None
    error_status: int = 422
    ended: float | None = None
    finished: Future[Job] = field(default_factory=Future)

    @property
    def output(self) -> Path | None:
        return None if self.report is None else self.report.output


class QueueFullError(Exception):
    """The queue holds as many jobs as it may; retry after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy; retry in {retry_after} s")
        self.retry_after = retry_after


class ShuttingDownError(Exception):
    """The server is stopping and takes no new jobs."""


class Cloakers:
    """A Cloaker per model set, its sessions loaded once and shared by every job; beyond `max_sets`
    sets the least recently used is dropped (each holds its models' sessions in memory)."""

    def __init__(self, store: ModelStore, *, threads: int | None = None, max_sets: int = 3) -> None:
        self._store = store
        self._threads = threads
        self._max_sets = max_sets
        self._loaded: OrderedDict[tuple[str, ...], Cloaker] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, settings: CloakSettings) -> Cloaker:
        with self._lock:
            cloaker = self._loaded.pop(settings.models, None)
            if cloaker is None:
                cloaker = Cloaker(CloakSettings(settings.models), store=self._store, threads=self._threads)
            self._loaded[settings.models] = cloaker
            while len(self._loaded) > self._max_sets:
                self._loaded.popitem(last=False)
        return cloaker.with_settings(settings)


class JobQueue:
    """Jobs by id; at most `workers` run at once and `queue` more wait (see the module docstring)."""

    def __init__(self, cloakers: Cloakers, limits: Limits) -> None:
        self.limits = limits
        self.root = Path(tempfile.mkdtemp(prefix="ulixes-serve-"))
        self._cloakers = cloakers
        self._executor = ThreadPoolExecutor(limits.workers, thread_name_prefix="ulixes-cloak")
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._recent_seconds: deque[float] = deque(maxlen=16)

    def submit(self, data: bytes, filename: str, settings: CloakSettings) -> Job:
        """Queue a photo's bytes; `filename` (the client's) only names the download."""
        suffix = Path(filename).suffix.lower()
        suffix = suffix if suffix in PHOTO_SUFFIXES else ""
        with self._lock:
            if self._closing:
                raise ShuttingDownError("the server is shutting down")
            waiting = sum(job.status in (JobStatus.QUEUED, JobStatus.RUNNING) for job in self._jobs.values())
            if waiting >= self.limits.workers + self.limits.queue:
                raise QueueFullError(self._retry_after(waiting))
            job_id = secrets.token_urlsafe(12)
            folder = self.root / job_id
            job = Job(
                id=job_id,
                settings=settings,
                folder=folder,
                upload=folder / f"{UPLOAD_STEM}{suffix}",
                download_name=_download_name(filename, suffix),
                created=time.monotonic(),
            )
            self._jobs[job_id] = job
        try:
            folder.mkdir(mode=0o700)
            job.upload.write_bytes(data)
        except OSError:
            self.remove(job_id)
            raise
        self._executor.submit(self._run, job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int:
        """1 for the next job to start, 2 for the one after, ...; 0 once it has started."""
        with self._lock:
            if job.status is not JobStatus.QUEUED:
                return 0
            return sum(
                other.status is JobStatus.QUEUED and other.created <= job.created
                for other in self._jobs.values()
            )

    def counts(self) -> dict[str, int]:
        with self._lock:
            statuses = [job.status for job in self._jobs.values()]
        return {status.value: statuses.count(status) for status in JobStatus}

    def remove(self, job_id: str) -> None:
        """Forget a job and delete its files; a running job is cancelled once its work ends."""
        with self._lock:
            job = self._jobs.pop(job_id, None)
            if job is None:
                return
            was_running = job.status is JobStatus.RUNNING
            if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
                job.status, job.error, job.error_status = JobStatus.CANCELLED, "the job was cancelled", 410
        if not was_running:
            self._end(job)
            shutil.rmtree(job.folder, ignore_errors=True)

    def expire(self) -> None:
        """Remove the jobs that ended more than `keep_seconds` ago."""
        deadline = time.monotonic() - self.limits.keep_seconds
        with self._lock:
            stale = [job.id for job in self._jobs.values() if job.ended is not None and job.ended < deadline]
        for job_id in stale:
            self.remove(job_id)

    def close(self) -> None:
        """Cancel the jobs not started, wait for the running ones, delete every file."""
        with self._lock:
            self._closing = True
            queued = [job for job in self._jobs.values() if job.status is JobStatus.QUEUED]
            for job in queued:
                job.status, job.error, job.error_status = (
                    JobStatus.CANCELLED,
                    "the server is shutting down",
                    503,
                )
        for job in queued:
            self._end(job)
        self._executor.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def _retry_after(self, waiting: int) -> int:
        typical = (
            sum(self._recent_seconds) / len(self._recent_seconds)
            if self._recent_seconds
            else TYPICAL_JOB_SECONDS
        )
        return max(1, math.ceil(typical * waiting / self.limits.workers))

    def _run(self, job: Job) -> None:
        with self._lock:
            if job.status is not JobStatus.QUEUED:
                return
            if time.monotonic() - job.created > self.limits.timeout_seconds:
                job.status, job.error, job.error_status = (
                    JobStatus.FAILED,
                    f"waited in the queue for over {self.limits.timeout_seconds:g} s; try again later",
                    503,
                )
            else:
                job.status = JobStatus.RUNNING
        if job.status is JobStatus.RUNNING:
            started = time.perf_counter()
            self._cloak(job)
            self._recent_seconds.append(time.perf_counter() - started)
        job.upload.unlink(missing_ok=True)
        with self._lock:
            abandoned = job.status is JobStatus.CANCELLED or self._closing
        if abandoned:
            shutil.rmtree(job.folder, ignore_errors=True)
        self._end(job)

    def _cloak(self, job: Job) -> None:
        try:
            cloaker = self._cloakers.get(job.settings)
            report = cloak_file(
                cloaker,
                PhotoFile(job.upload),
                OutputOptions(output_dir=job.folder, max_pixels=self.limits.max_pixels),
            )
        except UlixesError as error:
            self._fail(job, str(error), 500)
            return
        except Exception:
            log.exception("a cloaking job failed")
            self._fail(job, "internal error while cloaking; see the server log", 500)
            return
        if report.error is not None:
            self._fail(job, report.error.replace(str(job.upload), UPLOAD_STEM), 422)
        elif report.output is None:
            self._fail(job, "no face found in the photo; nothing was cloaked", 422)
        else:
            with Image.open(report.output) as written:
                media_type = Image.MIME.get(written.format or "", "application/octet-stream")
            with self._lock:
                if job.status is JobStatus.RUNNING:
                    job.status, job.report, job.media_type = JobStatus.DONE, report, media_type

    def _fail(self, job: Job, message: str, status: int) -> None:
        with self._lock:
            if job.status is JobStatus.RUNNING:
                job.status, job.error, job.error_status = JobStatus.FAILED, message, status

    def _end(self, job: Job) -> None:
        job.ended = time.monotonic()
        if not job.finished.done():
            job.finished.set_result(job)


def _download_name(filename: str, suffix: str) -> str:
    """`<stem>_cloaked<ext>` from the client's file name, reduced to characters safe in any header."""
    stem = re.sub(r"[^\w.-]+", "_", Path(filename).stem).strip("._")[:100] or "photo"
    return f"{stem}_cloaked{suffix}"
