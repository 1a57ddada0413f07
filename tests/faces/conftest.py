"""Fixtures for the face tests: one detector per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from ulixes_onnx.faces import MTCNN, mtcnn_paths
from ulixes_onnx.store import ModelStore


@pytest.fixture(scope="session")
def model_paths(store: ModelStore) -> tuple[Path, Path, Path]:
    return mtcnn_paths(store)


@pytest.fixture(scope="session")
def detector(model_paths: tuple[Path, Path, Path]) -> MTCNN:
    return MTCNN(*model_paths)
