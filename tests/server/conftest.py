"""Fixtures of the server tests: the sample photo as a file, an app under TestClient, a live server."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.testclient import TestClient

from ulixes_onnx.server.app import LOOPBACK_HOSTS, create_app
from ulixes_onnx.server.jobs import Limits
from ulixes_onnx.store import ModelStore


@pytest.fixture(scope="session")
def astronaut_png(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("serve") / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    return path


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@contextmanager
def serving_client(
    store: ModelStore, limits: Limits | None = None, **options: object
) -> Iterator[TestClient]:
    """A TestClient of an app whose lifespan runs for the block (queue, sessions, temp folder)."""
    with TestClient(create_app(store, limits, **options)) as client:
        yield client


def temp_root(client: TestClient) -> Path:
    return client.app.state.service.queue.root


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


class LiveServer:
    """The app on uvicorn on a free loopback port, in a thread of the test process."""

    def __init__(self, app: Starlette) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.app = app
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=120)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=120)


@pytest.fixture
def live_server(store: ModelStore) -> Iterator[LiveServer]:
    with LiveServer(create_app(store, Limits(queue=4), allowed_hosts=LOOPBACK_HOSTS)) as server:
        yield server
