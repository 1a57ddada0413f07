"""Fixtures for the model zoo tests: the export toolchain, conversions done once per session."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.engine.test_cloak_graph import directional_errors
from ulixes_onnx.cards import ModelCard
from ulixes_onnx.engine import build_cloak_graph, create_session, with_canonical_input
from ulixes_onnx.face_model import adapter_spec
from ulixes_onnx.zoo.conversion import native_input, probe_chips
from ulixes_onnx.zoo.toolchain import installed_toolchain

SETUP_HINT = "python tools/export_models.py --setup-toolchain (or set ULIXES_ONNX_EXPORT_PYTHON)"


@pytest.fixture(scope="session")
def export_python() -> Path:
    python = installed_toolchain()
    if python is None:
        pytest.skip(f"the model export toolchain is not installed: {SETUP_HINT}")
    return python


def sha256_hex(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString()).hexdigest()


def gradient_check_errors(model: onnx.ModelProto, card: ModelCard, step: float = 1e-2) -> list[float]:
    """Directional finite-difference errors of the model's cloak graph on a real face chip."""
    forward = with_canonical_input(model, adapter_spec(card))
    session = create_session(build_cloak_graph(forward, card.embedding.metric))
    chip = probe_chips(*card.input.size)[:1]
    embedding = create_session(model).run(None, {card.input.tensor: native_input(chip, card.input)})[0]
    rng = np.random.default_rng(0)
    feeds = {
        "x": chip,
        # Away from the original embedding, as a cloaking step after the first one.
        "e_pos": (embedding + rng.normal(0, 0.05 * np.abs(embedding).max(), embedding.shape)).astype(
            np.float32
        ),
        "e_neg": np.zeros_like(embedding),
        "margin": np.float32([1.0]),
        "neg_weight": np.float32([0.0]),
    }
    # loss = margin - d_pos: a margin near d_pos keeps the loss small, so that float32 resolves the
    # finite differences of models with small gradients.
    (d_pos,) = session.run(["d_pos"], feeds)
    feeds["margin"] = (2 * d_pos).astype(np.float32)
    # The directions have unit norm over the whole chip, so even the default step moves each pixel by far
    # less than a grey level; smaller steps drown in float32 rounding for random-weight networks, whose
    # gradients are tiny (|g| ~ 2e-4 for the random InceptionResnetV1).
    return directional_errors(session, feeds, step=step)
