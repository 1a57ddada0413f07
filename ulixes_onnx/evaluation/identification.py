"""Supervised identification (paper section 5.2): classifiers trained on clean faces, tested on cloaked ones.

The attacker holds labelled clean photos of the people and classifies new photos. Every photo of an
identity with at least two photos is tested once: photos are dealt into folds round-robin within each
identity, and each fold is classified by classifiers trained on the clean photos of all other folds,
once with its clean and once with its cloaked photos. A cloaked photo in which no face is found cannot
be identified and counts as misclassified.

Cosine-metric embeddings are scaled to unit length first, so the Euclidean classifiers rank them as
the cosine distance does, and the distance bound becomes the equivalent chord length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.neighbors import KNeighborsClassifier, NearestCentroid
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC

CLASSIFIERS = ("nn", "nc", "knn", "wknn", "dbnn", "mlp", "svm")
CLASSIFIER_NAMES = {
    "nn": "nearest neighbour",
    "nc": "nearest centroid",
    "knn": "k-nearest neighbours",
    "wknn": "weighted k-nearest neighbours",
    "dbnn": "distance-bound nearest neighbour",
    "mlp": "fully connected net, 2x20",
    "svm": "linear SVM",
}
# The paper does not give k; 3 suits identities with a handful of photos each.
NEIGHBOURS = 3
MAX_FOLDS = 10
# The paper trains its 2x20 net until training accuracy exceeds 95 %.
MLP_TARGET_ACCURACY = 0.95
MLP_MAX_EPOCHS = 3000
UNKNOWN = ""


class DistanceBoundNearestNeighbour:
    """Nearest neighbour's label if it is within `bound`, else unknown (never correct)."""

    def __init__(self, bound: float) -> None:
        self.bound = bound
        self._neighbours = KNeighborsClassifier(n_neighbors=1)

    def fit(self, features: np.ndarray, labels: np.ndarray) -> DistanceBoundNearestNeighbour:
        self._neighbours.fit(features, labels)
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        distances, _ = self._neighbours.kneighbors(features, n_neighbors=1)
        labels = self._neighbours.predict(features).astype(object)
        labels[distances[:, 0] > self.bound] = UNKNOWN
        return labels


class RmsScaler(TransformerMixin, BaseEstimator):
    """Scales all features by one factor to unit root-mean-square.

    Unlike per-feature standardisation it keeps the embedding's geometry, which the model was trained
    to make meaningful, instead of inflating near-constant features to the size of informative ones.
    """

    def fit(self, features: np.ndarray, labels: np.ndarray | None = None) -> RmsScaler:
        self.scale_ = 1.0 / max(float(np.sqrt(np.mean(np.square(features)))), np.finfo(float).tiny)
        return self

    def transform(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features) * self.scale_


class MLPToTrainingAccuracy:
    """A 2x20 fully connected net trained epoch by epoch until its training accuracy reaches the target."""

    def __init__(self, seed: int) -> None:
        self._scaler = RmsScaler()
        self._net = MLPClassifier(hidden_layer_sizes=(20, 20), random_state=seed)
        self.epochs = 0
        self.training_accuracy = 0.0

    def fit(self, features: np.ndarray, labels: np.ndarray) -> MLPToTrainingAccuracy:
        scaled = self._scaler.fit_transform(features)
        classes = np.unique(labels)
        while self.epochs < MLP_MAX_EPOCHS and self.training_accuracy < MLP_TARGET_ACCURACY:
            self._net.partial_fit(scaled, labels, classes=classes)
            self.epochs += 1
            self.training_accuracy = float(np.mean(self._net.predict(scaled) == labels))
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self._net.predict(self._scaler.transform(features))


def make_classifier(name: str, bound: float, seed: int, neighbours: int = NEIGHBOURS) -> object:
    """A fresh, unfitted classifier with `fit` and `predict`; `bound` is the dbnn distance bound."""
    if name == "nn":
        return KNeighborsClassifier(n_neighbors=1)
    if name == "nc":
        return NearestCentroid()
    if name == "knn":
        return KNeighborsClassifier(n_neighbors=neighbours)
    if name == "wknn":
        return KNeighborsClassifier(n_neighbors=neighbours, weights="distance")
    if name == "dbnn":
        return DistanceBoundNearestNeighbour(bound)
    if name == "mlp":
        return MLPToTrainingAccuracy(seed)
    if name == "svm":
        return make_pipeline(RmsScaler(), SVC(kernel="linear"))
    raise ValueError(f"unknown classifier {name!r}")


def round_robin_folds(labels: Sequence[str], max_folds: int = MAX_FOLDS) -> np.ndarray:
    """Fold index of each sample: an identity's photos go to folds 0, 1, 2, ... in turn.

    With as many folds as the largest identity has photos (at most `max_folds`), each fold tests at
    most one photo per identity while the others stay in training.
    """
    counts: dict[str, int] = {}
    folds = np.empty(len(labels), int)
    for index, label in enumerate(labels):
        folds[index] = counts.get(label, 0)
        counts[label] = folds[index] + 1
    return folds % min(max_folds, max(counts.values()))


@dataclass(frozen=True)
class IdentificationScore:
    clean: float
    cloaked: float
    tested: int


def identify(
    clean: np.ndarray,
    cloaked: np.ndarray,
    cloaked_found: np.ndarray,
    labels: Sequence[str],
    *,
    metric: str,
    threshold: float,
    seed: int = 0,
    classifiers: Sequence[str] = CLASSIFIERS,
) -> dict[str, IdentificationScore]:
    """Accuracy of each classifier on clean and on cloaked test photos (see the module docstring).

    `clean` and `cloaked` are [N, D] embeddings of the same N photos; rows of `cloaked` where
    `cloaked_found` is false (no face found) are ignored and count as misclassified. Every identity
    needs at least two photos.
    """
    labels = np.asarray(labels, dtype=object)
    found = np.asarray(cloaked_found, bool)
    features_clean = _features(clean, metric)
    features_cloaked = _features(np.where(found[:, None], cloaked, clean), metric)
    bound = float(np.sqrt(2 * threshold)) if metric == "cosine" else threshold
    folds = round_robin_folds(list(labels))
    correct = {name: np.zeros((2, len(labels)), bool) for name in classifiers}
    for fold in np.unique(folds):
        test, train = folds == fold, folds != fold
        for name in classifiers:
            # Fewer training photos than neighbours happens only on tiny datasets.
            neighbours = min(NEIGHBOURS, int(train.sum()))
            # NearestCentroid also computes a per-feature spread it does not use for predicting, which
            # divides by zero when every identity has a single training photo.
            with np.errstate(invalid="ignore", divide="ignore"):
                model = make_classifier(name, bound, seed, neighbours).fit(
                    features_clean[train], labels[train]
                )
            correct[name][0, test] = model.predict(features_clean[test]) == labels[test]
            correct[name][1, test] = (model.predict(features_cloaked[test]) == labels[test]) & found[test]
    return {
        name: IdentificationScore(float(hits[0].mean()), float(hits[1].mean()), len(labels))
        for name, hits in correct.items()
    }


def _features(embeddings: np.ndarray, metric: str) -> np.ndarray:
    embeddings = np.asarray(embeddings, np.float64)
    if metric == "cosine":
        return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings
