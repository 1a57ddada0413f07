"""The perceptual shaping of the loop: the opponent colour basis and the per-pixel budget."""

from __future__ import annotations

import numpy as np

from ulixes_onnx.cloaking.perceptual import BUDGET_RANGE, OPPONENT, budget_map, to_opponent, to_rgb


def test_the_opponent_basis_is_orthonormal_and_round_trips() -> None:
    np.testing.assert_allclose(OPPONENT @ OPPONENT.T, np.eye(3), atol=1e-6)
    rgb = np.random.default_rng(0).normal(size=(5, 7, 3)).astype(np.float32)
    opponent = to_opponent(rgb)
    assert opponent.shape == rgb.shape and opponent.dtype == np.float32
    np.testing.assert_allclose(opponent, rgb @ OPPONENT.T, atol=1e-5)
    np.testing.assert_allclose(to_rgb(opponent), rgb, atol=1e-5)
    # lightness is the first axis: a gray change has no colour
    gray = to_opponent(np.full((1, 1, 3), 2.0, np.float32))[0, 0]
    np.testing.assert_allclose(gray, [2 * np.sqrt(3), 0, 0], atol=1e-5)


def test_the_budget_is_larger_in_texture_than_on_flat_regions() -> None:
    canvas = np.full((64, 64, 3), 120.0, np.float32)
    canvas[:, 32:] += np.random.default_rng(1).normal(0, 20, (64, 32, 3)).astype(np.float32)
    budget = budget_map(canvas, np.ones((64, 64), np.float32), 1.0)
    assert budget.shape == (64, 64)
    assert BUDGET_RANGE[0] <= budget.min() and budget.max() <= BUDGET_RANGE[1]
    assert budget[:, 40:].mean() > 4 * budget[:, :24].mean()
