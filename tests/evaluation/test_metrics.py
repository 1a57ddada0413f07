"""Verification and perceptibility measures against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ulixes_onnx.evaluation import metrics
from ulixes_onnx.evaluation.report import finite

# Three same-person pairs and three different-person pairs; +inf is a pair with no face on one side.
DISTANCES = np.array([0.2, 0.5, 0.7005, 0.4, 0.9, np.inf])
SAME = np.array([True, True, True, False, False, False])


def test_counts_and_rates_at_a_threshold() -> None:
    result = metrics.verification_at(DISTANCES, SAME, 0.6)
    assert (result.tp, result.fn, result.tn, result.fp) == (2, 1, 2, 1)
    assert result.tp_rate == pytest.approx(2 / 3)
    assert result.fp_rate == pytest.approx(1 / 3)
    assert result.accuracy == pytest.approx(4 / 6)


def test_a_distance_equal_to_the_threshold_is_a_different_person() -> None:
    result = metrics.verification_at(np.array([0.6]), np.array([True]), 0.6)
    assert (result.tp, result.fn) == (0, 1)


def test_threshold_grids_follow_the_metric() -> None:
    euclidean, cosine = metrics.threshold_grid("euclidean"), metrics.threshold_grid("cosine")
    assert len(euclidean) == 3001 and euclidean[0] == 0 and euclidean[-1] == pytest.approx(3.0)
    assert len(cosine) == 2001 and cosine[-1] == pytest.approx(2.0)
    assert np.allclose(np.diff(euclidean), 0.001)


def test_roc_rates_at_chosen_thresholds() -> None:
    tp_rates, fp_rates = metrics.roc(DISTANCES, SAME, np.array([0.0, 0.45, 0.8, 3.0]))
    assert np.allclose(tp_rates, [0, 1 / 3, 1, 1])
    assert np.allclose(fp_rates, [0, 1 / 3, 1 / 3, 2 / 3])


def test_area_under_curve_of_a_square_and_a_diagonal() -> None:
    assert metrics.area_under_curve(np.array([0.0, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)
    assert metrics.area_under_curve(np.array([0.5]), np.array([0.5])) == pytest.approx(0.5)


def test_verify_best_threshold_and_auc() -> None:
    result = metrics.verify(DISTANCES, SAME, 0.6, "euclidean")
    # Accuracy peaks at 5/6 once 0.7005 matches but 0.9 does not; the smallest such grid point is 0.701.
    assert result.best.accuracy == pytest.approx(5 / 6)
    assert result.best.threshold == pytest.approx(0.701)
    # 7 of the 9 (same, different) combinations have the same pair closer: AUC = 7/9.
    assert result.auc == pytest.approx(7 / 9)
    assert result.at_threshold.accuracy == pytest.approx(4 / 6)


def test_relative_change_and_psnr() -> None:
    assert metrics.relative_change(0.8, 0.2) == pytest.approx(-0.75)
    assert math.isnan(metrics.relative_change(0.0, 0.5))
    reference = np.zeros((2, 2, 3))
    assert metrics.psnr(reference, reference + 1) == pytest.approx(20 * math.log10(255))
    assert metrics.psnr(reference, reference) == math.inf


def test_summary_ignores_missing_and_infinite_values() -> None:
    stats = metrics.summary([1.0, 3.0, math.inf, None])
    assert stats == {"count": 2, "mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0}
    assert metrics.summary([])["mean"] is None


def test_report_writes_non_finite_numbers_as_null() -> None:
    assert finite({"a": [1.0, math.nan], "b": {"c": math.inf}, "d": "x"}) == {
        "a": [1.0, None],
        "b": {"c": None},
        "d": "x",
    }
