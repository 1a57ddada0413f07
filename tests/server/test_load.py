"""50 concurrent uploads to a live server on loopback: every one answered, memory flat, no file left."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from benchmarks.serve_load import RssSampler, astronaut_png, files_under, upload_all
from tests.server.conftest import LiveServer
from ulixes_onnx.server.app import create_app
from ulixes_onnx.server.jobs import Limits

# Slow: 50 concurrent cloaks on a live server.
pytestmark = pytest.mark.slow

UPLOADS = 50


def test_fifty_concurrent_uploads(store):
    photo = astronaut_png()
    with LiveServer(create_app(store, Limits(queue=4))) as server:
        root = server.app.state.service.queue.root
        with RssSampler(os.getpid()) as rss:
            asyncio.run(upload_all(server.url, photo, 2))  # warm-up: sessions and buffers at their size
            warm = rss.current()
            started = time.monotonic()
            answers = asyncio.run(upload_all(server.url, photo, UPLOADS, timeout=300))
            elapsed = time.monotonic() - started
            after = rss.current()
        statuses = [answer.status for answer in answers]
        assert len(answers) == UPLOADS and set(statuses) <= {200, 503}
        assert statuses.count(200) >= 1 and statuses.count(503) >= 1  # the queue bound was reached
        assert elapsed < 120
        # Photos in flight are bounded by the queue, so memory is too: not 50 photos' worth.
        assert after - warm < 200e6 and rss.peak - warm < 300e6
        assert files_under(root) == []
