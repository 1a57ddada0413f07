"""The chip-level Ulixes loop: strategies, stopping rules, determinism and bad settings."""

from __future__ import annotations

import numpy as np
import pytest

from ulixes_onnx import samples
from ulixes_onnx.cloak import (
    CloakSettingsError,
    LoopSettings,
    View,
    cloak_chips,
    plan_objectives,
)
from ulixes_onnx.dssim import chip_dssim
from ulixes_onnx.faces import chip_spec, detector_from_store, extract_chips
from ulixes_onnx.recognition import FaceModel, distances
from ulixes_onnx.store import ModelStore

NAME = "dlib-resnet"


@pytest.fixture(scope="module")
def dlib_model(store: ModelStore) -> FaceModel:
    return FaceModel("dlib-resnet", store, threads=2)


@pytest.fixture(scope="module")
def chips(store: ModelStore) -> np.ndarray:
    detector = detector_from_store(store)
    photos = [samples.astronaut(), samples.cameraman()]
    layout = chip_spec("dlib-150-pad0.25")
    return np.concatenate([extract_chips(p, detector.detect(p)[:1], layout).chips for p in photos])


def test_away_reaches_its_target_within_the_dssim_bound(dlib_model: FaceModel, chips: np.ndarray) -> None:
    settings = LoopSettings(strategy="away", target=0.8, max_dssim=0.03)
    results = cloak_chips([View(dlib_model, settings)], chips)
    originals = dlib_model.embed(chips)
    for result, chip, original in zip(results, chips, originals, strict=True):
        assert result.stop_reasons[NAME] == "target-reached"
        assert result.distances[NAME] >= 0.79
        assert dlib_model.distance(dlib_model.embed(result.chip[None]), original[None])[0] >= 0.79
        assert 0 < result.dssim <= 0.03
        assert result.dssim == pytest.approx(chip_dssim(result.chip, chip))
        assert np.abs(result.chip).max() <= 1.0
        # every step moves each element by at most the step size
        assert np.abs(result.chip - chip).max() <= 0.01 * (result.steps + 0.1) + 1e-6


def test_results_are_deterministic_for_a_seed(dlib_model: FaceModel, chips: np.ndarray) -> None:
    settings = LoopSettings(strategy="away", target=0.5, seed=3)
    first = cloak_chips([View(dlib_model, settings)], chips[:1])[0]
    second = cloak_chips([View(dlib_model, settings)], chips[:1])[0]
    np.testing.assert_array_equal(first.chip, second.chip)
    other_seed = cloak_chips(
        [View(dlib_model, LoopSettings(strategy="away", target=0.5, seed=4))], chips[:1]
    )[0]
    assert not np.array_equal(first.chip, other_seed.chip)


def test_a_batch_gives_each_face_its_own_result(dlib_model: FaceModel, chips: np.ndarray) -> None:
    settings = LoopSettings(strategy="away", target=0.5)
    together = cloak_chips([View(dlib_model, settings)], chips)
    alone = cloak_chips([View(dlib_model, settings)], chips[:1])[0]
    assert together[0].steps == alone.steps
    np.testing.assert_allclose(together[0].chip, alone.chip, atol=1e-5)


def test_self_is_inert_on_dlib_and_stops_on_slow_progress(dlib_model: FaceModel, chips: np.ndarray) -> None:
    results = cloak_chips(
        [View(dlib_model, LoopSettings(strategy="self", margin=0.6, min_progress=0.005))], chips
    )
    assert {result.stop_reasons[NAME] for result in results} <= {"slow-progress", "loss-zero"}
    assert all(result.steps < 10 and result.distances[NAME] < 0.6 for result in results)


def test_dssim_bound_and_step_limit_stop_faces(dlib_model: FaceModel, chips: np.ndarray) -> None:
    bounded = cloak_chips([View(dlib_model, LoopSettings(target=2.0, max_dssim=0.001))], chips[:1])[0]
    assert bounded.stop_reasons[NAME] == "dssim-bound" and bounded.dssim <= 0.001
    limited = cloak_chips([View(dlib_model, LoopSettings(target=2.0, max_steps=3))], chips[:1])[0]
    assert limited.stop_reasons[NAME] == "max-steps" and limited.steps == 3


def test_continuing_from_a_cloaked_start(dlib_model: FaceModel, chips: np.ndarray) -> None:
    first = cloak_chips([View(dlib_model, LoopSettings(target=0.4))], chips[:1])[0]
    more = cloak_chips([View(dlib_model, LoopSettings(target=0.7))], chips[:1], start=first.chip[None])[0]
    assert more.distances[NAME] >= 0.69 and more.dssim > first.dssim


class _EuclideanModel:
    """Just what plan_objectives uses: a name, embeddings and distances."""

    name = "toy"

    def embed(self, chips: np.ndarray) -> np.ndarray:
        return chips.reshape(len(chips), -1)[:, :2]

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return distances(a, b, "euclidean")


POOL = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 5.0], [0.2, 0.0]])


@pytest.mark.parametrize(
    ("strategy", "expected_first", "count"),
    [
        ("farthest", [0.0, 5.0], 1),
        ("nearest", [1.0, 0.0], 1),
        ("random", None, 3),
        ("random-farthest", [0.0, 5.0], 4),
    ],
)
def test_pool_strategies_pick_their_negatives(strategy: str, expected_first, count: int) -> None:
    settings = LoopSettings(strategy=strategy, margin=0.5, random_negatives=3)
    chips = np.zeros((1, 2, 1, 1), np.float32)
    plans = plan_objectives(_EuclideanModel(), chips, np.zeros((1, 2)), settings, POOL)
    assert len(plans[0]) == count
    if expected_first is not None:
        np.testing.assert_array_equal(plans[0][0].negative, expected_first)
    assert all(objective.margin == 0.5 and objective.neg_weight == 1.0 for objective in plans[0])
    if strategy.startswith("random"):
        randoms = [tuple(objective.negative) for objective in plans[0][-3:]]
        assert len(set(randoms)) == 3


def test_nearest_falls_back_to_self_when_no_negative_is_beyond_the_margin() -> None:
    settings = LoopSettings(strategy="nearest", margin=10.0)
    chips = np.zeros((1, 2, 1, 1), np.float32)
    plan = plan_objectives(_EuclideanModel(), chips, np.zeros((1, 2)), settings, POOL)[0]
    np.testing.assert_allclose(plan[0].negative, [1e-5, 1e-5])


def test_away_plan_has_no_negative_weight() -> None:
    settings = LoopSettings(strategy="away", target=0.8)
    plan = plan_objectives(_EuclideanModel(), np.zeros((2, 2, 1, 1)), np.ones((2, 2)), settings, None)
    assert [(o.margin, o.neg_weight) for p in plan for o in p] == [(0.8, 0.0), (0.8, 0.0)]


def test_pool_strategies_need_a_pool() -> None:
    with pytest.raises(CloakSettingsError, match="needs a pool of other people's faces"):
        plan_objectives(
            _EuclideanModel(), np.zeros((1, 2, 1, 1)), np.zeros((1, 2)), LoopSettings("random"), None
        )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"strategy": "closest"}, "unknown strategy 'closest'"),
        ({"step": 0}, "the step must be in"),
        ({"max_steps": 0}, "at least 1"),
        ({"max_dssim": 0}, "DSSIM bound"),
    ],
)
def test_bad_settings(settings: dict, message: str) -> None:
    with pytest.raises(CloakSettingsError, match=message):
        LoopSettings(**settings)


def test_joint_views_follow_both_models(dlib_model: FaceModel, chips: np.ndarray) -> None:
    # the same model seen through a mirror is a second, differently aligned view of the face
    mirror = np.tile(np.array([[-1.0, 0.0, 149.0], [0.0, 1.0, 0.0]]), (1, 1, 1))
    views = [
        View(dlib_model, LoopSettings(target=0.5)),
        View(dlib_model, LoopSettings(target=0.5), warps=mirror),
    ]
    (result,) = cloak_chips(views, chips[:1])
    mirrored = result.chip[:, :, ::-1]
    original = dlib_model.embed(chips[:1])
    assert dlib_model.distance(dlib_model.embed(result.chip[None]), original)[0] >= 0.49
    assert (
        dlib_model.distance(
            dlib_model.embed(mirrored[None].copy()), dlib_model.embed(chips[:1, :, :, ::-1].copy())
        )[0]
        >= 0.49
    )
