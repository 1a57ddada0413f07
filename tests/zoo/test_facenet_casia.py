"""facenet-casia from David Sandberg's 20180408-102900 release, in both forms users download: the frozen
graph (.pb) and the checkpoint (.meta with its .index and .data files).

The real weights cannot be fetched here. facenet_tf1_release.py builds the same network in the export
toolchain with random weights, as facenet's training script builds it (a TensorFlow 1 training graph:
"input" fed by a queue, batch norm and dropout under tf.cond on the placeholder "phase_train",
"embeddings"), and saves it in both forms as the release was saved. Each form goes through the card's
builder as the user's file would; the conversion checks ONNX against TensorFlow running the file with
phase_train False (and fails above 1e-4).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.test_cli import run_cli
from tests.zoo.conftest import gradient_check_errors, sha256_hex
from ulixes_onnx.cards import get_card
from ulixes_onnx.engine import create_session
from ulixes_onnx.errors import ModelError
from ulixes_onnx.zoo.conversion import FIDELITY_TOLERANCE, ConvertedModel, convert, native_input, probe_chips

# Slow: converts FaceNet graphs in the export toolchain.
pytestmark = pytest.mark.slow

CARD = get_card("facenet-casia")
RELEASE_BUILDER = Path(__file__).with_name("facenet_tf1_release.py")
# Inception-ResNet A, B and C blocks: 5, 10 and 5 in the release. One of each keeps every kind of layer
# and node the exporter meets; the full depth (a 95 MB graph, as released) takes 2.5 times as long.
BLOCKS = [1, 1, 1]
FORMS = {"frozen graph": "20180408-102900.pb", "checkpoint": "model-20180408-102900.meta"}


@pytest.fixture(scope="module")
def release(export_python, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("facenet-casia-release")
    np.save(folder / "probe.npy", native_input(probe_chips(*CARD.input.size), CARD.input))
    job = {"folder": str(folder), "seed": 7, "repeats": BLOCKS, "probe": str(folder / "probe.npy")}
    (folder / "job.json").write_text(json.dumps(job))
    built = subprocess.run(
        [str(export_python), str(RELEASE_BUILDER), str(folder / "job.json")], capture_output=True, text=True
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def exported(release, export_python) -> dict[str, ConvertedModel]:
    return {
        form: convert(CARD, {"graph": release / name}, python=export_python) for form, name in FORMS.items()
    }


def test_both_forms_match_tensorflow_in_inference_mode(release, exported):
    probe = np.load(release / "probe.npy")
    inference, training = np.load(release / "inference.npy"), np.load(release / "training.npy")
    # The training mode (batch statistics, dropout) gives other embeddings: a wrong branch would show.
    assert np.abs(training - inference).max() > 0.1
    for form, result in exported.items():
        print(f"facenet-casia from the {form}: max |ONNX - TF| = {result.max_abs_difference:.2e}")
        assert result.max_abs_difference < FIDELITY_TOLERANCE
        session = create_session(result.model, threads=1)
        (batch,) = session.run(None, {CARD.input.tensor: probe})
        # The embeddings TensorFlow gave before saving: both files hold that model.
        np.testing.assert_allclose(batch, inference, atol=FIDELITY_TOLERANCE)
        singles = [session.run(None, {CARD.input.tensor: chip[None]})[0][0] for chip in probe]
        np.testing.assert_allclose(batch, singles, atol=1e-5)


def test_both_forms_give_the_same_model(exported):
    assert sha256_hex(exported["frozen graph"].model) == sha256_hex(exported["checkpoint"].model)


def test_cloak_graph_gradient_matches_finite_differences(exported):
    # The calibrated random network has gradients of a trained one's size (|g| ~ 0.07, not ~2e-4), so
    # float32 resolves a step of 1e-3; a longer one mostly measures its ReLU kinks.
    errors = gradient_check_errors(exported["checkpoint"].model, CARD, step=1e-3)
    print(f"facenet-casia gradient check: directional errors {[f'{error:.1e}' for error in errors]}")
    assert max(errors) < 5e-3, errors


def _another_network(release: Path, folder: Path) -> Path:
    return Path(shutil.copy(release / "other-network.pb", folder))


def _meta_file_alone(release: Path, folder: Path) -> Path:
    return Path(shutil.copy(release / FORMS["checkpoint"], folder))


def _release_zip(release: Path, folder: Path) -> Path:
    # The zip users download, given instead of a file in it (its header is what counts: one small member).
    return Path(shutil.make_archive(str(folder / "20180408-102900"), "zip", release, "other-network.pb"))


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (_another_network, r"other-network.pb has no tensor 'embeddings:0'"),
        (_meta_file_alone, r"no checkpoint beside model-20180408-102900.meta"),
        (_release_zip, r"20180408-102900.zip is not a TensorFlow GraphDef"),
    ],
)
def test_wrong_files_are_refused_in_one_line(release, export_python, tmp_path, given, message):
    with pytest.raises(ModelError, match=message) as refused:
        convert(CARD, {"graph": given(release, tmp_path)}, python=export_python)
    assert "\n" not in str(refused.value)


def test_models_list_names_both_forms(tmp_path):
    listed = run_cli("models", "list", "--json", models_dir=tmp_path)
    assert listed.returncode == 0, listed.stderr
    (row,) = [row for row in json.loads(listed.stdout) if row["name"] == CARD.name]
    assert row["status"] == "needs user weights"
    assert "20180408-102900.pb" in row["needs"] and "model-20180408-102900.meta" in row["needs"]
