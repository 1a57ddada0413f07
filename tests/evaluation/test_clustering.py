"""Agglomerative clustering and the paper's clustering accuracy against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from ulixes_onnx.evaluation.clustering import agglomerate, cloak_masks, cluster_mixture, clustering_accuracy


def test_accuracy_takes_the_majority_per_cluster_weighted_by_size_without_singletons() -> None:
    # Cluster 0: A, A, B (2 of 3 right); cluster 1: B, B (2 of 2); cluster 2: the singleton C is excluded.
    clusters = [0, 0, 0, 1, 1, 2]
    identities = ["A", "A", "B", "B", "B", "C"]
    assert clustering_accuracy(clusters, identities) == pytest.approx(4 / 5)


def test_a_person_split_into_pure_clusters_scores_full_accuracy() -> None:
    assert clustering_accuracy([0, 0, 1, 1, 2, 2], ["A", "A", "A", "A", "B", "B"]) == 1.0


def test_accuracy_is_undefined_when_every_cluster_is_a_singleton() -> None:
    assert clustering_accuracy([0, 1, 2], ["A", "A", "B"]) is None


POINTS = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [5.1, 0.0], [10.0, 0.0]])


def test_distance_stop_and_cluster_count_stop() -> None:
    by_distance = agglomerate(POINTS, "euclidean", distance=0.6)
    assert len(set(by_distance)) == 3
    assert by_distance[0] == by_distance[1] and by_distance[2] == by_distance[3] != by_distance[4]
    # Average linkage: {5, 5.1} joins 10 (mean distance 4.95) before joining {0, 0.1} (5.0).
    by_count = agglomerate(POINTS, "euclidean", clusters=2)
    assert by_count[2] == by_count[3] == by_count[4] != by_count[0] == by_count[1]


def test_cloaked_photos_replace_clean_ones_and_faceless_copies_are_left_out() -> None:
    clean = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [5.1, 0.0]])
    cloaked = clean.copy()
    cloaked[1] = [5.05, 0.0]  # photo 1 of A, cloaked, lands among B's photos
    identities = ["A", "A", "B", "B"]
    mask = np.array([False, True, False, False])
    found = np.ones(4, bool)
    mixed = cluster_mixture(clean, cloaked, found, identities, mask, metric="euclidean", distance=0.6)
    # Clusters {A} (a singleton, excluded) and {A, B, B}: 2 of 3 right.
    assert mixed.accuracy == pytest.approx(2 / 3)
    assert (mixed.clusters, mixed.singletons, mixed.photos) == (2, 1, 4)
    found[1] = False
    left_out = cluster_mixture(clean, cloaked, found, identities, mask, metric="euclidean", distance=0.6)
    assert left_out.photos == 3 and left_out.accuracy == 1.0
    counted = cluster_mixture(
        clean, cloaked, np.ones(4, bool), identities, mask, metric="euclidean", true_count=True
    )
    assert counted.clusters == 2


def test_cloak_masks_draw_the_fraction_and_repeat_only_when_random() -> None:
    masks = cloak_masks(10, 0.5, repeats=4, seed=1)
    assert len(masks) == 4 and all(mask.sum() == 5 for mask in masks)
    assert any((masks[0] != other).any() for other in masks[1:])
    assert [m.tolist() for m in masks] == [m.tolist() for m in cloak_masks(10, 0.5, repeats=4, seed=1)]
    (none,) = cloak_masks(10, 0.0, repeats=4, seed=1)
    (every,) = cloak_masks(10, 1.0, repeats=4, seed=1)
    assert not none.any() and every.all()
