"""Fixtures for the face tests: one detector per session."""

from __future__ import annotations

import pytest

from ulixes_onnx.faces import MTCNN, bundled_model_paths


@pytest.fixture(scope="session")
def detector() -> MTCNN:
    return MTCNN(*bundled_model_paths())
