"""FaceModel: canonical-chip embeddings equal the native model's, and the cloak graph cache."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from ulixes_onnx.engine import create_session
from ulixes_onnx.errors import ModelError
from ulixes_onnx.face_model import FaceModel, distances
from ulixes_onnx.store import ModelStore


@pytest.fixture(scope="module")
def dlib_model(store: ModelStore) -> FaceModel:
    return FaceModel("dlib-resnet", store, threads=2)


def test_canonical_chips_give_the_native_embeddings(dlib_model: FaceModel, store: ModelStore) -> None:
    rng = np.random.default_rng(1)
    chips = rng.uniform(-1, 1, (3, 3, 150, 150)).astype(np.float32)
    native = ort.InferenceSession(store.get("dlib-resnet").path, providers=["CPUExecutionProvider"])
    expected = native.run(None, {"rgb": (chips + 1) * 127.5})[0]
    np.testing.assert_allclose(dlib_model.embed(chips), expected, atol=2e-5)


def test_step_outputs_match_their_definitions(dlib_model: FaceModel) -> None:
    rng = np.random.default_rng(2)
    chips = rng.uniform(-1, 1, (2, 3, 150, 150)).astype(np.float32)
    embeddings = dlib_model.embed(chips)
    e_pos, e_neg = embeddings[::-1], embeddings
    step = dlib_model.step(chips, e_pos, e_neg, margin=0.5, neg_weight=1.0)
    d_pos = np.linalg.norm(embeddings - e_pos, axis=1)
    np.testing.assert_allclose(step.d_pos, d_pos, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(step.loss, np.maximum(step.d_neg - step.d_pos + 0.5, 0), atol=1e-5)
    assert step.grad.shape == chips.shape and np.isfinite(step.grad).all()


def test_cloak_graph_is_cached_and_a_tampered_copy_is_rebuilt(
    dlib_model: FaceModel, store: ModelStore
) -> None:
    path = dlib_model.cloak_graph_path
    assert path.parent == store.model_dir(dlib_model.card)
    original = path.read_bytes()
    path.write_bytes(original[:1000])
    rebuilt = FaceModel("dlib-resnet", store, threads=1)
    assert rebuilt.cloak_graph_path == path and path.read_bytes() == original


def test_sessions_run_the_graphs_as_optimised_for_this_machine(
    dlib_model: FaceModel, store: ModelStore
) -> None:
    directory = store.model_dir(dlib_model.card)
    assert len(list(directory.glob("forward-optimised-*.onnx"))) == 1
    assert len(list(directory.glob("cloak-euclidean-optimised-*.onnx"))) == 1
    chips = np.random.default_rng(3).uniform(-1, 1, (2, 3, 150, 150)).astype(np.float32)
    feeds = {"x": chips, "e_pos": np.zeros((2, 128), np.float32), "e_neg": np.ones((2, 128), np.float32)}
    feeds |= {"margin": np.float32([1.0]), "neg_weight": np.float32([1.0])}
    fresh = create_session(dlib_model.cloak_graph_path, threads=2)
    loss, grad = fresh.run(["loss", "grad"], feeds)
    step = dlib_model.step(chips, feeds["e_pos"], feeds["e_neg"], margin=1.0, neg_weight=1.0)
    np.testing.assert_array_equal(step.loss, loss)
    np.testing.assert_array_equal(step.grad, grad)


def test_detector_is_not_an_embedding_model(store: ModelStore) -> None:
    with pytest.raises(ModelError, match="'mtcnn' is a detector, not a face-embedding model"):
        FaceModel("mtcnn", store)


def test_wrong_chip_shape_is_refused(dlib_model: FaceModel) -> None:
    with pytest.raises(ValueError, match=r"takes chips \[N, 3, 150, 150\]"):
        dlib_model.embed(np.zeros((1, 3, 160, 160), np.float32))


def test_distances() -> None:
    a = np.array([[3.0, 4.0], [1.0, 0.0]])
    b = np.array([[0.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(distances(a, np.zeros_like(a), "euclidean"), [5.0, 1.0])
    np.testing.assert_allclose(distances(a[1:], b[1:], "cosine"), [1.0])
    np.testing.assert_allclose(distances(a, a * 2, "cosine"), [0.0, 0.0], atol=1e-12)


def test_feature_step_measures_and_pushes_the_feature_layer(dlib_model: FaceModel) -> None:
    rng = np.random.default_rng(5)
    chips = rng.uniform(-1, 1, (2, 3, 150, 150)).astype(np.float32)
    features = dlib_model.features(chips)
    assert features.shape == (2, 128, 8, 8)
    embeddings = dlib_model.embed(chips)
    plain = dlib_model.step(chips, embeddings, embeddings, margin=1.0, neg_weight=0.0)
    moved = np.clip(chips + 0.05 * np.sign(rng.standard_normal(chips.shape)), -1, 1).astype(np.float32)
    pushed = dlib_model.step(
        moved, embeddings, embeddings, margin=1.0, neg_weight=0.0, f_pos=features, feature_weight=2.0
    )
    unpushed = dlib_model.step(moved, embeddings, embeddings, margin=1.0, neg_weight=0.0)
    # at the original, features equal their own reference; moved, they differ, and the step's
    # gradient is no longer the embedding loss's alone
    at_original = dlib_model.step(
        chips, embeddings, embeddings, margin=1.0, neg_weight=0.0, f_pos=features, feature_weight=2.0
    )
    assert np.all(at_original.d_feat < 1e-3) and plain.d_feat is None
    assert np.all(pushed.d_feat > 0.01)
    np.testing.assert_allclose(pushed.loss, unpushed.loss, atol=1e-5)
    assert not np.allclose(pushed.grad, unpushed.grad, atol=1e-6)


def test_feature_weight_needs_the_original_features(dlib_model: FaceModel) -> None:
    chips = np.zeros((1, 3, 150, 150), np.float32)
    embeddings = dlib_model.embed(chips)
    with pytest.raises(ValueError, match="needs the original faces' features"):
        dlib_model.step(chips, embeddings, embeddings, margin=1.0, feature_weight=1.0)


def test_a_model_without_a_feature_layer_refuses_the_feature_objective(
    dlib_model: FaceModel, store: ModelStore
) -> None:
    from dataclasses import replace

    card = replace(dlib_model.card, cloak=replace(dlib_model.card.cloak, feature_layer=None))
    model = FaceModel(card, store, threads=1)
    with pytest.raises(ModelError, match="has no feature layer"):
        model.features(np.zeros((1, 3, 150, 150), np.float32))


def test_noise_step_runs_a_perturbed_copy_of_the_network(dlib_model: FaceModel) -> None:
    rng = np.random.default_rng(6)
    chips = rng.uniform(-1, 1, (2, 3, 150, 150)).astype(np.float32)
    embeddings = dlib_model.embed(chips)
    far = embeddings + 0.3
    # dlib's ResNet: 29 Relus, the widest 256 channels
    assert len(dlib_model.noise_channels) == 29 and max(dlib_model.noise_channels) == 256
    ones = [np.ones((2, channels), np.float32) for channels in dlib_model.noise_channels]
    plain = dlib_model.step(chips, far, far, margin=2.0, neg_weight=0.0)
    unit = dlib_model.step(chips, far, far, margin=2.0, neg_weight=0.0, noise=ones)
    np.testing.assert_allclose(unit.d_pos, plain.d_pos, atol=1e-5)
    np.testing.assert_allclose(unit.grad, plain.grad, atol=1e-4 * float(np.abs(plain.grad).max()))
    noisy = [rng.uniform(0.9, 1.1, (2, count)).astype(np.float32) for count in dlib_model.noise_channels]
    ghost = dlib_model.step(chips, far, far, margin=2.0, neg_weight=0.0, noise=noisy)
    assert np.all(np.abs(ghost.emb - plain.emb).max(axis=1) > 1e-3)


def test_noise_needs_one_array_per_activation_layer_and_no_feature_weight(dlib_model: FaceModel) -> None:
    chips = np.zeros((1, 3, 150, 150), np.float32)
    embeddings = dlib_model.embed(chips)
    with pytest.raises(ValueError, match="has 29 activation layers, not 2"):
        dlib_model.step(chips, embeddings, embeddings, 1.0, noise=[np.ones((1, 32), np.float32)] * 2)
    ones = [np.ones((1, channels), np.float32) for channels in dlib_model.noise_channels]
    with pytest.raises(ValueError, match="cannot be combined"):
        dlib_model.step(
            chips,
            embeddings,
            embeddings,
            1.0,
            f_pos=np.ones((1, 128, 8, 8), np.float32),
            feature_weight=1.0,
            noise=ones,
        )


def test_skip_decayed_step_keeps_the_forward_and_decays_the_residual_branches(dlib_model: FaceModel) -> None:
    chips = np.random.default_rng(4).uniform(-1, 1, (2, 3, 150, 150)).astype(np.float32)
    far = np.zeros((2, 128), np.float32)
    true = dlib_model.step(chips, far, far, margin=2.0, neg_weight=0.0)
    decayed = dlib_model.step(chips, far, far, margin=2.0, neg_weight=0.0, skip_decay=0.3)
    np.testing.assert_allclose(decayed.emb, true.emb, atol=1e-5)
    np.testing.assert_allclose(decayed.loss, true.loss, atol=1e-5)
    # 0.20 measured: 14 residual branches at 0.3 turn the direction well away from the true one
    cosine = np.sum(decayed.grad * true.grad) / (np.linalg.norm(decayed.grad) * np.linalg.norm(true.grad))
    assert 0.1 < cosine < 0.4


def test_skip_decay_cannot_be_combined_with_noise(dlib_model: FaceModel) -> None:
    chips = np.zeros((1, 3, 150, 150), np.float32)
    far = np.zeros((1, 128), np.float32)
    ones = [np.ones((1, channels), np.float32) for channels in dlib_model.noise_channels]
    with pytest.raises(ValueError, match="cannot be combined"):
        dlib_model.step(chips, far, far, 1.0, noise=ones, skip_decay=0.5)


def test_a_network_without_residual_branches_ignores_skip_decay_but_not_linearity(
    store: ModelStore,
) -> None:
    sface = FaceModel("sface", store)
    chips = np.random.default_rng(5).uniform(-1, 1, (1, 3, 112, 112)).astype(np.float32)
    far = np.ones((1, 128), np.float32)
    true = sface.step(chips, far, far, margin=2.0, neg_weight=0.0)
    decayed = sface.step(chips, far, far, margin=2.0, neg_weight=0.0, skip_decay=0.3)
    np.testing.assert_allclose(decayed.grad, true.grad, atol=1e-4 * np.abs(true.grad).max())
    linear = sface.step(chips, far, far, margin=2.0, neg_weight=0.0, backward_linearity=1.0)
    np.testing.assert_allclose(linear.loss, true.loss, atol=1e-5)
    # 0.10 measured with its 14 late PRelus taken for the identity
    cosine = np.sum(linear.grad * true.grad) / (np.linalg.norm(linear.grad) * np.linalg.norm(true.grad))
    assert 0.03 < cosine < 0.3
