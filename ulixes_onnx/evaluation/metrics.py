"""Verification and perceptibility measures (paper section 5.1): pure functions of distances and pixels.

A pair is judged "same person" when its distance is below the threshold, as the models' cards define
it. A distance of +inf stands for a pair that cannot be compared (no face found on one side): it is
never judged the same person.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

THRESHOLD_STEP = 0.001
# Upper ends of the threshold grid: the paper's 0..3 for L2 distances (of unit-scale embeddings);
# cosine distances lie in 0..2.
GRID_END = {"euclidean": 3.0, "cosine": 2.0}


@dataclass(frozen=True)
class VerificationAtThreshold:
    """Confusion counts and rates of same/different decisions at one threshold."""

    threshold: float
    tp: int
    fn: int
    tn: int
    fp: int

    @property
    def tp_rate(self) -> float:
        positives = self.tp + self.fn
        return self.tp / positives if positives else float("nan")

    @property
    def fp_rate(self) -> float:
        negatives = self.tn + self.fp
        return self.fp / negatives if negatives else float("nan")

    @property
    def accuracy(self) -> float:
        return (self.tp + self.tn) / (self.tp + self.fn + self.tn + self.fp)


@dataclass(frozen=True)
class VerificationResult:
    """Verification of a set of pairs: at the model's threshold, at the best one, and the ROC curve."""

    at_threshold: VerificationAtThreshold
    best: VerificationAtThreshold
    auc: float
    thresholds: np.ndarray
    tp_rates: np.ndarray
    fp_rates: np.ndarray


def verification_at(distances: np.ndarray, same: np.ndarray, threshold: float) -> VerificationAtThreshold:
    distances = np.asarray(distances, np.float64)
    same = np.asarray(same, bool)
    matched = distances < threshold
    return VerificationAtThreshold(
        threshold=float(threshold),
        tp=int(np.sum(matched & same)),
        fn=int(np.sum(~matched & same)),
        tn=int(np.sum(~matched & ~same)),
        fp=int(np.sum(matched & ~same)),
    )


def threshold_grid(metric: str) -> np.ndarray:
    """Thresholds 0, 0.001, ... up to the metric's grid end, inclusive."""
    steps = round(GRID_END[metric] / THRESHOLD_STEP)
    return np.arange(steps + 1) * THRESHOLD_STEP


def roc(distances: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True- and false-positive rates at each threshold."""
    distances = np.asarray(distances, np.float64)
    same = np.asarray(same, bool)
    matched = distances[None, :] < np.asarray(thresholds, np.float64)[:, None]
    positives, negatives = max(1, int(same.sum())), max(1, int((~same).sum()))
    return matched[:, same].sum(axis=1) / positives, matched[:, ~same].sum(axis=1) / negatives


def area_under_curve(fp_rates: np.ndarray, tp_rates: np.ndarray) -> float:
    """Trapezoidal area under the ROC points, closed with the corners (0, 0) and (1, 1)."""
    order = np.lexsort((tp_rates, fp_rates))
    x = np.concatenate([[0.0], np.asarray(fp_rates)[order], [1.0]])
    y = np.concatenate([[0.0], np.asarray(tp_rates)[order], [1.0]])
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def verify(distances: np.ndarray, same: np.ndarray, threshold: float, metric: str) -> VerificationResult:
    """Everything the report says about one set of pair distances."""
    thresholds = threshold_grid(metric)
    tp_rates, fp_rates = roc(distances, same, thresholds)
    positives, negatives = int(np.sum(same)), int(np.sum(~np.asarray(same, bool)))
    accuracies = (tp_rates * positives + (1 - fp_rates) * negatives) / (positives + negatives)
    best = int(np.argmax(accuracies))  # the smallest threshold among equally good ones
    return VerificationResult(
        at_threshold=verification_at(distances, same, threshold),
        best=verification_at(distances, same, float(thresholds[best])),
        auc=area_under_curve(fp_rates, tp_rates),
        thresholds=thresholds,
        tp_rates=tp_rates,
        fp_rates=fp_rates,
    )


def relative_change(before: float, after: float) -> float:
    """(after - before) / before: -0.76 means a 76 % drop, as in the paper's tables."""
    return (after - before) / before if before else float("nan")


def psnr(reference: np.ndarray, changed: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB; +inf for identical images."""
    error = np.mean((np.asarray(reference, np.float64) - np.asarray(changed, np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(data_range**2 / error))


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """Count, mean, standard deviation (population), min and max of the finite values."""
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    if not len(finite):
        return {"count": 0, "mean": None, "std": None, "min": None, "max": None}
    return {
        "count": len(finite),
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "min": float(finite.min()),
        "max": float(finite.max()),
    }
