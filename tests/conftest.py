"""Fixtures shared by the test suite: a model store built once per session, real faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data

from ulixes_onnx.store import ModelStore

FACES_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "faces-dev"


@pytest.fixture(scope="session")
def faces_dev() -> Path:
    """The labelled development photos (never copied into the repository)."""
    if not FACES_DEV.is_dir():
        pytest.skip(f"development photos not found at {FACES_DEV}")
    return FACES_DEV


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """A store with the default models built, private to this test session."""
    model_store = ModelStore(tmp_path_factory.mktemp("models"))
    model_store.get("dlib-resnet")
    model_store.get("mtcnn")
    return model_store


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()
