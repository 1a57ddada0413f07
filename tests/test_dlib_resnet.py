"""The ONNX rebuild of dlib's ResNet reproduces dlib's own descriptors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.dlib_reference import dlib_chips, dlib_descriptor, read_rgb
from ulixes_onnx.cards import get_card
from ulixes_onnx.errors import ModelError
from ulixes_onnx.store import ModelStore
from ulixes_onnx.zoo import builder_for
from ulixes_onnx.zoo.dlib_resnet import INPUT_NAME, OUTPUT_NAME

MIN_CHIPS = 20


@pytest.fixture(scope="module")
def real_chips(astronaut: np.ndarray, faces_dev: Path) -> np.ndarray:
    chips = dlib_chips(astronaut)
    for photo in sorted(faces_dev.glob("*/*"))[::3]:
        chips += dlib_chips(read_rgb(photo))
        if len(chips) >= MIN_CHIPS + 5:
            break
    return np.stack(chips)


def test_descriptors_match_dlib(store: ModelStore, real_chips: np.ndarray) -> None:
    session = ort.InferenceSession(store.get("dlib-resnet").path, providers=["CPUExecutionProvider"])
    native = real_chips.transpose(0, 3, 1, 2).astype(np.float32)
    ours = session.run([OUTPUT_NAME], {INPUT_NAME: native})[0]
    reference = np.stack([dlib_descriptor(chip) for chip in real_chips])
    assert len(real_chips) >= MIN_CHIPS
    assert ours.shape == (len(real_chips), 128)
    assert np.abs(ours - reference).max() <= 1e-5


def test_truncated_weights_are_a_clear_error(tmp_path: Path, store: ModelStore) -> None:
    card = get_card("dlib-resnet")
    source = store.source_paths(card)["weights"]
    truncated = tmp_path / source.name
    truncated.write_bytes(source.read_bytes()[:5_000_000])
    with pytest.raises(ModelError, match=r"not a readable dlib network .*file ends early"):
        builder_for(card)(card, {"weights": truncated})


def test_build_is_deterministic(store: ModelStore) -> None:
    card = get_card("dlib-resnet")
    first = builder_for(card)(card, store.source_paths(card))
    assert first == builder_for(card)(card, store.source_paths(card))
