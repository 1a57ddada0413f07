"""Identification classifiers and fold protocol on synthetic embeddings with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from ulixes_onnx.evaluation.identification import (
    CLASSIFIERS,
    MLP_TARGET_ACCURACY,
    MLPToTrainingAccuracy,
    identify,
    round_robin_folds,
)

IDENTITIES = ["A"] * 3 + ["B"] * 3 + ["C"] * 3


def _embeddings(seed: int = 0) -> np.ndarray:
    """Three photos per identity, tightly around identity-specific unit axes (8-d)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(8)[[0] * 3 + [1] * 3 + [2] * 3]
    return centres + 0.01 * rng.standard_normal(centres.shape)


def test_folds_deal_each_identitys_photos_round_robin() -> None:
    assert round_robin_folds(["A", "A", "B", "A", "B"]).tolist() == [0, 1, 0, 2, 1]
    assert round_robin_folds(["A", "A", "B", "A", "B"], max_folds=2).tolist() == [0, 1, 0, 0, 1]


def test_clean_photos_are_identified_and_cloaks_that_move_to_another_identity_defeat_all() -> None:
    clean = _embeddings()
    # Each cloaked photo lands on the next identity's centre: A -> B, B -> C, C -> A.
    cloaked = np.roll(clean, -3, axis=0)
    scores = identify(clean, cloaked, np.ones(9, bool), IDENTITIES, metric="euclidean", threshold=0.6)
    assert set(scores) == set(CLASSIFIERS)
    for name, score in scores.items():
        assert score.tested == 9
        assert score.cloaked == 0.0, name
        # The net stops training at 95 % training accuracy (the paper's rule), so its margins are thin
        # and one clean test photo may fall on the wrong side; every other classifier is exact here.
        assert score.clean >= (7 / 9 if name == "mlp" else 1.0), name


def test_distance_bound_rejects_faces_far_from_everyone_that_nearest_neighbour_still_labels() -> None:
    clean = _embeddings()
    # Cloaks push every face a little away: still nearest its own identity, but 0.7 > 0.6 away.
    cloaked = clean + 0.7 * np.eye(8)[7]
    scores = identify(
        clean,
        cloaked,
        np.ones(9, bool),
        IDENTITIES,
        metric="euclidean",
        threshold=0.6,
        classifiers=("nn", "dbnn"),
    )
    assert scores["nn"].cloaked == 1.0
    assert scores["dbnn"].cloaked == 0.0 and scores["dbnn"].clean == 1.0


def test_cloaked_photos_without_a_face_count_as_misidentified() -> None:
    clean = _embeddings()
    found = np.ones(9, bool)
    found[[0, 4]] = False
    scores = identify(clean, clean, found, IDENTITIES, metric="euclidean", threshold=0.6, classifiers=("nn",))
    assert scores["nn"].cloaked == pytest.approx(7 / 9)


def test_cosine_models_compare_directions() -> None:
    clean = _embeddings() * np.repeat([1.0, 5.0, 0.2], 3)[:, None]  # lengths must not matter
    scores = identify(clean, clean, np.ones(9, bool), IDENTITIES, metric="cosine", threshold=0.3)
    assert all(score.clean == 1.0 for name, score in scores.items() if name != "mlp")


def test_the_net_trains_until_its_training_accuracy_reaches_the_target() -> None:
    net = MLPToTrainingAccuracy(seed=0).fit(_embeddings(), np.array(IDENTITIES, dtype=object))
    assert net.training_accuracy >= MLP_TARGET_ACCURACY and net.epochs >= 1
