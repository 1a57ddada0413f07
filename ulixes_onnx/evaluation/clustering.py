"""Clustering, or unsupervised identification (paper section 5.3).

An attacker groups unlabelled photos by person with agglomerative clustering, stopped either at the
model's threshold (merges of clusters farther apart are not made, so a person may split into several
clusters) or at the true number of people. Linkage is average: single linkage would chain different
people through one close pair, complete linkage would split a person over their single worst pair.

The paper's clustering accuracy: each cluster is labelled with its most frequent identity; over the
clusters with more than one photo, the share of photos matching their cluster's label, weighted by
cluster size. A person split into pure clusters still scores 100 %.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import AgglomerativeClustering

CLOAKED_FRACTIONS = (0.0, 0.1, 0.5, 1.0)
# The paper averages ten random draws of which photos are cloaked.
REPEATS = 10
LINKAGE = "average"


def clustering_accuracy(clusters: Sequence[int], identities: Sequence[str]) -> float | None:
    """The paper's accuracy (see the module docstring); None when every cluster is a singleton."""
    members: dict[int, list[str]] = {}
    for cluster, identity in zip(clusters, identities, strict=True):
        members.setdefault(cluster, []).append(identity)
    sized = [names for names in members.values() if len(names) > 1]
    if not sized:
        return None
    majority = sum(Counter(names).most_common(1)[0][1] for names in sized)
    return majority / sum(len(names) for names in sized)


def agglomerate(
    embeddings: np.ndarray, metric: str, *, distance: float | None = None, clusters: int | None = None
) -> np.ndarray:
    """Cluster labels of each row, stopping at `distance` or at `clusters` clusters."""
    if len(embeddings) < 2:
        return np.zeros(len(embeddings), int)
    model = AgglomerativeClustering(
        n_clusters=clusters, distance_threshold=distance, metric=metric, linkage=LINKAGE
    )
    return model.fit_predict(np.asarray(embeddings, np.float64))


@dataclass(frozen=True)
class ClusteringOutcome:
    """One clustering run: its accuracy and shape."""

    accuracy: float | None
    clusters: int
    singletons: int
    photos: int


def cluster_mixture(
    clean: np.ndarray,
    cloaked: np.ndarray,
    cloaked_found: np.ndarray,
    identities: Sequence[str],
    cloak_mask: np.ndarray,
    *,
    metric: str,
    distance: float | None = None,
    true_count: bool = False,
) -> ClusteringOutcome:
    """Cluster the photos with those in `cloak_mask` replaced by their cloaked copies.

    A cloaked copy in which no face was found is left out, as an attacker could not cluster it.
    With `true_count`, clustering stops at the number of people among the clustered photos.
    """
    cloak_mask = np.asarray(cloak_mask, bool)
    kept = ~cloak_mask | np.asarray(cloaked_found, bool)
    embeddings = np.where(cloak_mask[:, None], cloaked, clean)[kept]
    names = [name for name, keep in zip(identities, kept, strict=True) if keep]
    labels = agglomerate(
        embeddings,
        metric,
        distance=None if true_count else distance,
        clusters=len(set(names)) if true_count else None,
    )
    sizes = Counter(labels.tolist())
    return ClusteringOutcome(
        accuracy=clustering_accuracy(labels.tolist(), names),
        clusters=len(sizes),
        singletons=sum(size == 1 for size in sizes.values()),
        photos=len(names),
    )


def cloak_masks(count: int, fraction: float, repeats: int, seed: int) -> list[np.ndarray]:
    """Which photos are cloaked in each repeat: a random `fraction` of them (one draw if 0 or 1)."""
    chosen = round(fraction * count)
    if chosen in (0, count):
        return [np.full(count, chosen == count)]
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(repeats):
        mask = np.zeros(count, bool)
        mask[rng.choice(count, size=chosen, replace=False)] = True
        masks.append(mask)
    return masks
