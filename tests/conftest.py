"""Fixtures shared by the test suite: a model store built once per session, real faces."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import skimage.data

from ulixes_onnx.cloaking.settings import DEFAULT_MODELS
from ulixes_onnx.face_model import FaceModel
from ulixes_onnx.store import MODELS_DIR_ENV, ModelStore

FACES_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "faces-dev"


@pytest.fixture(scope="session")
def faces_dev() -> Path:
    """The labelled development photos (never copied into the repository)."""
    if not FACES_DEV.is_dir():
        pytest.skip(f"development photos not found at {FACES_DEV}")
    return FACES_DEV


@pytest.fixture(scope="session", autouse=True)
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelStore]:
    """A store with the default models built, private to this test session; it is also the default
    store (`ModelStore()`) while the tests run, so they never touch the user's cache."""
    model_store = ModelStore(tmp_path_factory.mktemp("models"))
    previous = os.environ.get(MODELS_DIR_ENV)
    os.environ[MODELS_DIR_ENV] = str(model_store.root)
    for name in (*DEFAULT_MODELS, "mtcnn"):
        model_store.get(name)
    yield model_store
    if previous is None:
        os.environ.pop(MODELS_DIR_ENV, None)
    else:
        os.environ[MODELS_DIR_ENV] = previous


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture
def warm_store(store: ModelStore) -> ModelStore:
    """The session store with the default models' optimised graphs in place: a process that has to
    make them peaks near 1.6 GB, which would hide what a memory bound measures (other tests may have
    replaced them, e.g. by exercising the store's clean-up of derived files)."""
    for name in DEFAULT_MODELS:
        FaceModel(name, store)
    return store
