"""The JSON the API answers with: a job's state and, once done, its per-face report."""

from __future__ import annotations

import dataclasses
import mimetypes
from pathlib import Path

from ulixes_onnx.cloaking.pipeline import FaceReport
from ulixes_onnx.server.jobs import Job, JobQueue, JobStatus

# FaceReport fields that are not reported as they are: `face` and `models` are reported in their own
# form, `embeddings` are the original face's identity and never leave the server.
_NOT_AS_IS = ("face", "models", "embeddings")


def job_json(job: Job, queue: JobQueue) -> dict:
    """What `GET /v1/jobs/{id}` answers (and `POST /v1/cloak` once the job has ended)."""
    body: dict = {"id": job.id, "status": job.status.value, "links": {"self": f"/v1/jobs/{job.id}"}}
    if job.status is JobStatus.QUEUED:
        body["position"] = queue.position(job)
    if job.error is not None:
        body["error"] = job.error
    if job.status is JobStatus.DONE and job.report is not None and job.output is not None:
        body["links"]["result"] = f"/v1/jobs/{job.id}/result"
        body["result"] = {
            "status": job.report.status,
            "filename": download_name(job),
            "media_type": job.media_type,
            "size": job.output.stat().st_size,
            "seconds": round(job.report.seconds, 3),
            "settings": {
                "models": list(job.settings.models),
                "target": job.settings.target,
                "level": job.settings.level,
                "min_quality": job.settings.min_quality,
            },
            "notes": list(job.report.notes),
            "faces": [face_json(face) for face in job.report.faces],
        }
    return body


def download_name(job: Job) -> str:
    """The client's file name with `_cloaked`, and the extension of the written format if it had none."""
    if Path(job.download_name).suffix or job.media_type is None:
        return job.download_name
    return job.download_name + (mimetypes.guess_extension(job.media_type) or "")


def face_json(face: FaceReport) -> dict:
    """One face: its box in the upright photo's pixels, whether it is protected and why, each model's
    distance against its threshold, and every other measurement the face report carries (DSSIM today;
    new fields of `FaceReport` appear here as they are added)."""
    measurements = {
        item.name: getattr(face, item.name)
        for item in dataclasses.fields(face)
        if item.name not in _NOT_AS_IS
    }
    return {
        **measurements,
        "box": [round(value, 1) for value in face.box],
        "protected": face.protected,
        "why": why(face),
        "models": {
            name: {**dataclasses.asdict(outcome), "protected": outcome.protected}
            for name, outcome in face.models.items()
        },
    }


def why(face: FaceReport) -> str:
    """One line on why a face is, or is not, protected."""
    if face.skipped is not None:
        return f"not cloaked: {face.skipped}"
    if not face.models:
        return "not cloaked"
    recognised = [
        f"{name} at distance {outcome.distance:.3f}, threshold {outcome.threshold:.3f} "
        f"(loop stopped: {outcome.stop_reason})"
        for name, outcome in face.models.items()
        if not outcome.protected
    ]
    if recognised:
        return "still matched by " + "; ".join(recognised)
    lost = "" if face.redetected else "; the detector no longer finds the face"
    return f"every model places it beyond its threshold{lost}"
