"""The chip-level Ulixes loop: strategies, stopping rules, determinism and bad settings."""

from __future__ import annotations

import io
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ulixes_onnx.cloaking import loop as loop_module
from ulixes_onnx.cloaking import polish as polish_module
from ulixes_onnx.cloaking.loop import (
    BOUNDS_CHECK_EVERY,
    FAST_STEP_FACTOR,
    FAST_UNTIL,
    STALL_WINDOW,
    Boost,
    CloakSettingsError,
    FaceState,
    LoopSettings,
    ModelView,
    _dropped_views,
    _movable_magnitudes,
    ensemble_farness,
    jitter,
    plan_objectives,
    random_alignment,
)
from ulixes_onnx.cloaking.polish import POLISH_JITTER, POLISH_MIN_MAGNIFICATION, cloak_canvases
from ulixes_onnx.cloaking.visibility import ssimulacra2
from ulixes_onnx.face_model import FaceModel, distances
from ulixes_onnx.faces import chip_spec, detector_from_store, extract_chips
from ulixes_onnx.faces.canvas import FaceCanvas, compose, make_canvas
from ulixes_onnx.photos import samples
from ulixes_onnx.store import ModelStore

NAME = "dlib-resnet"


@pytest.fixture(scope="module")
def dlib_model(store: ModelStore) -> FaceModel:
    return FaceModel("dlib-resnet", store, threads=2)


@pytest.fixture(scope="module")
def canvases(store: ModelStore) -> list[FaceCanvas]:
    detector = detector_from_store(store)
    layout = chip_spec("dlib-150-pad0.25")
    made = []
    for photo in (samples.astronaut(), samples.cameraman()):
        aligned = extract_chips(photo, detector.detect(photo)[:1], layout)
        made.append(make_canvas(photo, aligned.matrices, [150], cap=4.0))
    return made


def _distance(
    model: FaceModel, canvas: FaceCanvas, delta: np.ndarray | None = None, alignment: int = 0
) -> float:
    """The distance of the chip at one of the face's alignments from the original's at the current one."""
    clean = canvas.image / 127.5 - 1
    chip = canvas.operator(0, alignment=alignment).forward(clean if delta is None else clean + delta)
    original = canvas.operator(0).forward(clean)
    return float(model.distance(model.embed(chip[None]), model.embed(original[None]))[0])


def test_away_reaches_its_target_within_the_per_pixel_budget(dlib_model, canvases) -> None:
    settings = LoopSettings(strategy="away", target=0.7, budget=16.0, chroma=0.2)
    results = cloak_canvases([ModelView(dlib_model, settings)], canvases)
    for result, canvas in zip(results, canvases, strict=True):
        assert result.stop_reasons[NAME] == "target-reached"
        assert result.distances[NAME] >= 0.69
        assert _distance(dlib_model, canvas, result.delta) >= 0.69
        assert 0 < result.dssim <= settings.max_dssim
        # nothing changes outside the mask, and no element moves past its bound (in 0..255 units:
        # lightness the budget at most BUDGET_RANGE[1] times; colour axes the chroma share of the
        # budget, never more, since texture does not hide a colour shift)
        assert not result.delta[canvas.mask == 0].any()
        change = result.state * 127.5  # opponent coordinates
        assert np.abs(change[..., 0]).max() <= 16.0 * 4.0 + 1e-3
        assert np.abs(change[..., 1:]).max() <= 16.0 * 0.2 + 1e-3


def _jpeg_round_trip(pixels: np.ndarray, quality: int = 30) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)).save(
        buffer, format="JPEG", quality=quality
    )
    with Image.open(buffer) as decoded:
        return np.asarray(decoded, np.float32)


def test_the_ascent_reaches_its_target_in_the_face_as_saved(dlib_model, canvases) -> None:
    # Random views and the plain views that confirm a target see the canvas as the saved file will
    # show it: a face confirmed on the canvas alone lost its distance in a JPEG.
    saved = replace(canvases[0], as_saved=_jpeg_round_trip)
    settings = LoopSettings(target=0.7, budget=16.0, diversity=0.05)
    result = cloak_canvases([ModelView(dlib_model, settings)], [saved])[0]
    assert result.stop_reasons[NAME] == "target-reached"
    as_saved = _jpeg_round_trip(saved.image + result.delta * np.float32(127.5)) / np.float32(127.5) - 1
    assert _distance(dlib_model, saved, as_saved - (saved.image / 127.5 - 1)) >= 0.69


def test_results_are_deterministic_for_a_seed(dlib_model, canvases) -> None:
    settings = LoopSettings(strategy="away", target=0.5, seed=3, diversity=0.1, momentum=0.5)
    first = cloak_canvases([ModelView(dlib_model, settings)], canvases[:1])[0]
    second = cloak_canvases([ModelView(dlib_model, settings)], canvases[:1])[0]
    np.testing.assert_array_equal(first.delta, second.delta)
    other_seed = cloak_canvases([ModelView(dlib_model, LoopSettings(target=0.5, seed=4))], canvases[:1])[0]
    assert not np.array_equal(first.delta, other_seed.delta)


def test_a_batch_gives_each_face_its_own_result(dlib_model, canvases) -> None:
    settings = LoopSettings(strategy="away", target=0.5)
    together = cloak_canvases([ModelView(dlib_model, settings)], canvases)
    alone = cloak_canvases([ModelView(dlib_model, settings)], canvases[:1])[0]
    assert together[0].steps == alone.steps
    np.testing.assert_allclose(together[0].delta, alone.delta, atol=1e-5)


def test_self_is_inert_on_dlib_and_stops_on_slow_progress(dlib_model, canvases) -> None:
    results = cloak_canvases(
        [ModelView(dlib_model, LoopSettings(strategy="self", margin=0.6, min_progress=0.005))], canvases
    )
    assert {result.stop_reasons[NAME] for result in results} <= {"slow-progress", "loss-zero"}
    # it drifts (the random start and the max-norm steps move the face a little), but stalls far
    # from the threshold within a few windows of steps
    assert all(result.steps < 5 * STALL_WINDOW and result.distances[NAME] < 0.3 for result in results)


def test_dssim_bound_and_step_limit_stop_faces(dlib_model, canvases) -> None:
    bounded = cloak_canvases(
        [
            ModelView(
                dlib_model,
                LoopSettings(target=2.0, max_dssim=0.002, budget=64.0, min_progress=-1.0, step=0.02),
            )
        ],
        canvases[:1],
    )[0]
    assert bounded.stop_reasons[NAME] == "dssim-bound" and 0 < bounded.dssim <= 0.002
    limited = cloak_canvases([ModelView(dlib_model, LoopSettings(target=2.0, max_steps=3))], canvases[:1])[0]
    assert limited.stop_reasons[NAME] == "max-steps" and limited.steps == 3


def test_quality_bound_keeps_the_face_above_it_where_people_look(dlib_model, canvases) -> None:
    canvas = canvases[0]
    box = canvas.judging(slice(canvas.y0 + 40, canvas.y0 + 200), slice(canvas.x0 + 30, canvas.x0 + 190))
    settings = LoopSettings(target=0.9, budget=16.0)
    free = cloak_canvases([ModelView(dlib_model, settings)], [box])[0]
    rows, cols = box.judged
    original = box.image[rows, cols]
    free_quality = ssimulacra2(original, original + free.delta[rows, cols] * 127.5)
    floor = free_quality + (100 - free_quality) / 2
    bounded = cloak_canvases([ModelView(dlib_model, replace(settings, min_quality=floor))], [box])[0]
    assert bounded.stop_reasons[NAME] == "quality-bound"
    assert ssimulacra2(original, original + bounded.delta[rows, cols] * 127.5) >= floor
    assert 0 < bounded.steps < free.steps
    assert 0.05 < bounded.distances[NAME] < free.distances[NAME]


def test_quality_bound_checks_the_last_steps_of_a_face(dlib_model, canvases) -> None:
    # The face ends (at its step limit) between two checks: its last steps are checked all the same,
    # and it goes back to the last state that passed, here its start.
    settings = LoopSettings(target=2.0, budget=16.0, step=0.02, max_steps=BOUNDS_CHECK_EVERY - 1)
    ended = cloak_canvases([ModelView(dlib_model, settings)], canvases[:1])[0]
    assert ended.stop_reasons[NAME] == "max-steps"
    original = canvases[0].image
    quality = ssimulacra2(original, original + ended.delta * 127.5)
    floor = quality + (100 - quality) / 4
    bounded = cloak_canvases([ModelView(dlib_model, replace(settings, min_quality=floor))], canvases[:1])[0]
    assert bounded.stop_reasons[NAME] == "quality-bound"
    assert ssimulacra2(original, original + bounded.delta * 127.5) >= floor
    assert bounded.distances[NAME] < 0.05 < ended.distances[NAME]


def test_steps_are_larger_far_from_the_target(dlib_model, canvases) -> None:
    settings = LoopSettings(target=0.8, budget=64.0, max_steps=1)
    noise = np.random.default_rng(0).uniform(-1e-4, 1e-4, canvases[0].image.shape).astype(np.float32)
    far = cloak_canvases([ModelView(dlib_model, settings)], canvases[:1], start=[noise])[0]
    assert np.abs(far.state - noise).max() == pytest.approx(FAST_STEP_FACTOR * settings.step, rel=1e-3)
    reached = cloak_canvases(
        [ModelView(dlib_model, replace(settings, max_steps=100, target=0.5))], canvases[:1]
    )[0]
    assert reached.distances[NAME] > FAST_UNTIL * 0.6
    near = cloak_canvases(
        [ModelView(dlib_model, replace(settings, target=0.6))], canvases[:1], start=[reached.state]
    )[0]
    assert np.abs(near.state - reached.state).max() == pytest.approx(settings.step, rel=1e-3)


def test_continuing_from_an_earlier_state(dlib_model, canvases) -> None:
    first = cloak_canvases([ModelView(dlib_model, LoopSettings(target=0.4))], canvases[:1])[0]
    more = cloak_canvases(
        [ModelView(dlib_model, LoopSettings(target=0.7))], canvases[:1], start=[first.state]
    )[0]
    assert more.distances[NAME] >= 0.69 and more.dssim > first.dssim


def test_input_diversity_and_momentum_still_reach_the_target(dlib_model, canvases) -> None:
    settings = LoopSettings(
        target=0.7, budget=16.0, diversity=0.1, momentum=0.5, smoothing=1.0, min_progress=-1.0
    )
    result = cloak_canvases([ModelView(dlib_model, settings)], canvases[:1])[0]
    assert result.stop_reasons[NAME] == "target-reached"
    # a random view past the target ends nothing until the plain view confirms it
    assert result.distances[NAME] >= 0.7


def test_random_views_cover_every_alignment_a_face_has_had(canvases) -> None:
    canvas = canvases[0]
    rng = np.random.default_rng(5)
    # one alignment: no draw, so a face's random views are what they were before realignment existed
    assert random_alignment(canvas, rng) == 0
    assert rng.bit_generator.state == np.random.default_rng(5).bit_generator.state
    realigned = replace(canvas, original_to_chip=canvas.to_chip)
    assert {random_alignment(realigned, rng) for _ in range(40)} == {0, 1}


def test_a_realigned_face_reaches_its_target_at_both_alignments(
    dlib_model, canvases, monkeypatch: pytest.MonkeyPatch
) -> None:
    canvas = canvases[0]
    # the cloak moved the landmarks: the next round cuts chips 4 chip pixels to the left
    shift = np.array([[1.0, 0.0, 4.0], [0.0, 1.0, 0.0]])
    moved = (compose(shift, canvas.to_chip[0]),)
    realigned = replace(canvas, to_chip=moved, original_to_chip=canvas.to_chip)
    cut = []
    operator = FaceCanvas.operator

    def recording(self, model_index, jitter=None, alignment=0):
        cut.append((jitter is not None, alignment))
        return operator(self, model_index, jitter, alignment)

    monkeypatch.setattr(FaceCanvas, "operator", recording)
    settings = LoopSettings(target=0.6, budget=16.0, diversity=0.05, polish=10)
    result = cloak_canvases([ModelView(dlib_model, settings)], [realigned])[0]
    monkeypatch.undo()
    assert result.stop_reasons[NAME] == "target-reached"
    assert {alignment for jittered, alignment in cut if jittered} == {0, 1}
    # the target holds at both alignments, and the nearer is reported
    at_each = [_distance(dlib_model, realigned, result.delta, alignment) for alignment in (0, 1)]
    assert result.distances[NAME] == pytest.approx(min(at_each), abs=1e-4)
    assert min(at_each) >= 0.6


def test_without_random_views_a_realigned_face_steps_at_the_alignment_that_falls_short(
    dlib_model, canvases
) -> None:
    canvas = canvases[0]
    shift = np.array([[1.0, 0.0, 4.0], [0.0, 1.0, 0.0]])
    # cloaked for the moved alignment only, the face is past the target there and short where it was
    moved_only = replace(canvas, to_chip=(compose(shift, canvas.to_chip[0]),))
    settings = LoopSettings(target=0.55, budget=16.0)
    first = cloak_canvases([ModelView(dlib_model, settings)], [moved_only])[0]
    realigned = replace(moved_only, original_to_chip=canvas.to_chip)
    assert (
        _distance(dlib_model, realigned, first.delta, 1)
        < 0.55
        <= _distance(dlib_model, moved_only, first.delta)
    )
    result = cloak_canvases([ModelView(dlib_model, settings)], [realigned], start=[first.state])[0]
    assert result.stop_reasons[NAME] == "target-reached" and result.steps > 0
    assert min(_distance(dlib_model, realigned, result.delta, k) for k in (0, 1)) >= 0.55


def test_progress_is_judged_on_one_alignment_at_a_time(dlib_model, canvases) -> None:
    canvas = canvases[0]
    # landmarks moved by 12 chip pixels: the face reaches the target at the current alignment long
    # before the original, where it lies nearer all along; judged on a history of both, that read as a
    # stall at 0.80 there
    shift = np.array([[1.0, 0.0, 12.0], [0.0, 1.0, 0.0]])
    realigned = replace(canvas, to_chip=(compose(shift, canvas.to_chip[0]),), original_to_chip=canvas.to_chip)
    result = cloak_canvases([ModelView(dlib_model, LoopSettings(target=0.9, budget=16.0))], [realigned])[0]
    assert result.stop_reasons[NAME] == "target-reached"
    assert min(_distance(dlib_model, realigned, result.delta, k) for k in (0, 1)) >= 0.9


def test_feature_objective_reaches_the_target_and_changes_the_cloak(dlib_model, canvases) -> None:
    settings = LoopSettings(target=0.6, budget=16.0)
    plain = cloak_canvases([ModelView(dlib_model, settings)], canvases[:1])[0]
    featured = cloak_canvases([ModelView(dlib_model, replace(settings, feature_weight=1.0))], canvases[:1])[0]
    assert featured.stop_reasons[NAME] == "target-reached" and featured.distances[NAME] >= 0.59
    assert np.abs(featured.delta - plain.delta).max() > 1e-3


def test_activation_noise_reaches_the_target_on_the_plain_network_and_changes_the_cloak(
    dlib_model, canvases
) -> None:
    settings = LoopSettings(target=0.6, budget=16.0)
    plain = cloak_canvases([ModelView(dlib_model, settings)], canvases[:1])[0]
    noisy = cloak_canvases([ModelView(dlib_model, replace(settings, activation_noise=0.05))], canvases[:1])[0]
    # the target is confirmed on the plain network, whatever the perturbed copies measured
    assert noisy.stop_reasons[NAME] == "target-reached" and noisy.distances[NAME] >= 0.59
    assert _distance(dlib_model, canvases[0], noisy.delta, 0) >= 0.59
    assert np.abs(noisy.delta - plain.delta).max() > 1e-3


@pytest.mark.parametrize("backward", [{"skip_decay": 0.5}, {"backward_linearity": 0.3}])
def test_a_chosen_backward_pass_reaches_the_target_on_the_true_network_and_changes_the_cloak(
    dlib_model, canvases, backward
) -> None:
    settings = LoopSettings(target=0.6, budget=16.0)
    plain = cloak_canvases([ModelView(dlib_model, settings)], canvases[:1])[0]
    chosen = cloak_canvases([ModelView(dlib_model, replace(settings, **backward))], canvases[:1])[0]
    assert chosen.stop_reasons[NAME] == "target-reached"
    assert _distance(dlib_model, canvases[0], chosen.delta, 0) >= 0.59
    assert np.abs(chosen.delta - plain.delta).max() > 1e-3


@pytest.fixture(scope="module")
def large_face(store: ModelStore) -> FaceCanvas:
    """The astronaut three times larger (a 260-pixel face): the photo shows the chip stretched."""
    photo = samples.rescaled(samples.astronaut(), 3.0)
    aligned = extract_chips(
        photo, detector_from_store(store).detect(photo)[:1], chip_spec("dlib-150-pad0.25")
    )
    return make_canvas(photo, aligned.matrices, [150], cap=4.0)


def test_a_shrunk_canvas_is_scored_from_the_photos_scale(store: ModelStore, large_face: FaceCanvas) -> None:
    # The large face held at one canvas pixel per chip pixel: its canvas is the photo shrunk.
    photo = samples.rescaled(samples.astronaut(), 3.0)
    aligned = extract_chips(
        photo, detector_from_store(store).detect(photo)[:1], chip_spec("dlib-150-pad0.25")
    )
    shrunk = make_canvas(photo, aligned.matrices, [150], cap=1.0)
    assert shrunk.scale < 0.5
    settings = LoopSettings()
    reference = FaceState(shrunk, settings, None, 0, Boost()).new_quality_reference()
    assert reference._first_scale == pytest.approx(np.log2(1 / shrunk.scale))
    assert large_face.scale == 1.0
    assert FaceState(large_face, settings, None, 0, Boost()).new_quality_reference()._first_scale == 0


def _face_quality(canvas: FaceCanvas, delta: np.ndarray) -> float:
    region = canvas.judged or (slice(None), slice(None))
    original = canvas.image[region]
    return ssimulacra2(original, original + delta[region] * np.float32(127.5))


def test_polish_makes_the_change_less_visible_at_the_same_distance(dlib_model, large_face) -> None:
    assert large_face.magnification(0) >= POLISH_MIN_MAGNIFICATION
    settings = LoopSettings(target=0.6, budget=16.0, diversity=0.05)
    plain = cloak_canvases([ModelView(dlib_model, settings)], [large_face])[0]
    polished = cloak_canvases([ModelView(dlib_model, replace(settings, polish=12))], [large_face])[0]
    assert polished.stop_reasons == plain.stop_reasons
    assert polished.steps == plain.steps + 12
    # kept at the target on the plain view, as reported
    assert polished.distances[NAME] >= 0.6
    assert abs(_distance(dlib_model, large_face, polished.delta) - polished.distances[NAME]) < 1e-3
    assert _face_quality(large_face, polished.delta) > _face_quality(large_face, plain.delta) + 2


def test_the_polish_views_of_a_realigned_face_cut_its_chips_at_both_alignments(
    dlib_model, large_face, monkeypatch: pytest.MonkeyPatch
) -> None:
    shift = np.array([[1.0, 0.0, 4.0], [0.0, 1.0, 0.0]])
    moved = (compose(shift, large_face.to_chip[0]),)
    realigned = replace(large_face, to_chip=moved, original_to_chip=large_face.to_chip)
    drawn = []

    def recording(canvas: FaceCanvas, rng: np.random.Generator) -> int:
        drawn.append(random_alignment(canvas, rng))
        return drawn[-1]

    monkeypatch.setattr(polish_module, "random_alignment", recording)
    settings = LoopSettings(target=0.6, budget=16.0, diversity=0.05, polish=6)
    result = cloak_canvases([ModelView(dlib_model, settings)], [realigned])[0]
    assert len(drawn) == 6 and set(drawn) == {0, 1}
    # the state kept holds its distance at both alignments, and the nearer is reported
    at_each = [_distance(dlib_model, realigned, result.delta, alignment) for alignment in (0, 1)]
    assert result.distances[NAME] == pytest.approx(min(at_each), abs=1e-4)
    assert min(at_each) >= 0.6


def _polish_views(model: FaceModel, canvas: FaceCanvas):
    """A face cloaked on `canvas`, its original embedding, what one polish step's `_views_of_models`
    returns for it, and the random view that step drew (drawn again from the same seed)."""
    settings = LoopSettings(target=0.6, budget=16.0, diversity=0.05)
    cloaked = cloak_canvases([ModelView(model, settings)], [canvas])[0]
    face = FaceState(canvas, settings, cloaked.state, 0, Boost())
    original = model.embed(canvas.operator(0).forward(face.clean)[None])
    rng, twin = np.random.default_rng(3), np.random.default_rng(3)
    views = polish_module._views_of_models(
        [ModelView(model, settings)], [[canvas.plain_operators(0)]], [face], [rng], [original], [original]
    )
    random_view = canvas.operator(0, jitter(twin, 150, POLISH_JITTER), random_alignment(canvas, twin))
    return face, original, views, random_view


def test_the_polish_averages_its_distance_over_the_random_views_alone(dlib_model, large_face) -> None:
    # Counted in that average, the plain view the change is fitted to carried the random ones, and a
    # kept change lost much of its distance where a detector aligned the face a pixel away.
    face, original, (plain, mean, gradients, plain_gradients), random_view = _polish_views(
        dlib_model, large_face
    )

    def random_distance(state: np.ndarray) -> float:
        face.move_to(state)
        return float(
            dlib_model.distance(dlib_model.embed(random_view.forward(face.cloaked)[None]), original)[0]
        )

    start = face.opponent
    assert mean[0, 0] == pytest.approx(random_distance(start), abs=1e-4)
    assert plain[0, 0] == pytest.approx(_distance(dlib_model, large_face, face.delta), abs=1e-4)
    assert abs(mean[0, 0] - plain[0, 0]) > 1e-3
    # each gradient is that of its own views' distance
    for gradient, distance in ((gradients[0][0], random_distance), (plain_gradients[0][0], None)):
        step = gradient * np.float32(2e-3 / np.abs(gradient).max())
        if distance is None:
            face.move_to(start + step)
            moved = _distance(dlib_model, large_face, face.delta) - plain[0, 0]
        else:
            moved = distance(start + step) - mean[0, 0]
        assert moved == pytest.approx(float(np.vdot(gradient, step)), rel=0.2)


def test_the_polish_cuts_its_random_views_from_the_face_as_saved(dlib_model, large_face) -> None:
    saved = replace(large_face, as_saved=_jpeg_round_trip)
    face, original, (plain, mean, _, _), random_view = _polish_views(dlib_model, saved)
    at_random = [
        float(dlib_model.distance(dlib_model.embed(random_view.forward(image)[None]), original)[0])
        for image in (face.saved(), face.cloaked)
    ]
    assert mean[0, 0] == pytest.approx(at_random[0], abs=1e-4)
    assert abs(at_random[0] - at_random[1]) > 1e-3
    # the plain view is the canvas itself
    assert plain[0, 0] == pytest.approx(_distance(dlib_model, saved, face.delta), abs=1e-4)


def test_a_face_whose_kept_state_is_good_enough_stops_being_polished(
    dlib_model, large_face, monkeypatch
) -> None:
    settings = LoopSettings(target=0.6, budget=16.0, diversity=0.05)
    plain = cloak_canvases([ModelView(dlib_model, settings)], [large_face])[0]
    # Any state the polish keeps is good enough: each face stops after its first.
    monkeypatch.setattr(polish_module, "POLISH_GOOD_ENOUGH", 0.0)
    faces = cloak_canvases(
        [ModelView(dlib_model, replace(settings, polish=12))], [large_face, large_face], face_keys=[0, 1]
    )
    for face in faces:
        assert plain.steps < face.steps < plain.steps + 12
        assert face.distances[NAME] >= 0.6
        assert abs(_distance(dlib_model, large_face, face.delta) - face.distances[NAME]) < 1e-3


def test_faces_are_polished_on_the_canvases_realign_gives_them_after_the_ascent(
    dlib_model, large_face
) -> None:
    shift = np.array([[1.0, 0.0, 4.0], [0.0, 1.0, 0.0]])
    realigned = replace(
        large_face, to_chip=(compose(shift, large_face.to_chip[0]),), original_to_chip=large_face.to_chip
    )
    calls = []

    def realign(positions, changes):
        calls.append((positions, changes))
        return [realigned]

    settings = LoopSettings(target=0.6, budget=16.0, diversity=0.05, polish=6)
    result = cloak_canvases([ModelView(dlib_model, settings)], [large_face], realign=realign)[0]
    ((positions, changes),) = calls
    assert positions == [0] and changes[0].steps == result.steps - 6
    # the state kept holds its distance where the face was and where it was found after the ascent
    at_each = [_distance(dlib_model, realigned, result.delta, alignment) for alignment in (0, 1)]
    assert result.distances[NAME] == pytest.approx(min(at_each), abs=1e-4)
    assert min(at_each) >= 0.6


def test_faces_the_photo_shows_at_chip_size_are_not_polished(dlib_model, canvases) -> None:
    assert canvases[0].magnification(0) < POLISH_MIN_MAGNIFICATION
    settings = LoopSettings(target=0.6, budget=16.0)
    plain = cloak_canvases([ModelView(dlib_model, settings)], canvases[:1])[0]
    polished = cloak_canvases(
        [ModelView(dlib_model, replace(settings, polish=3))], canvases[:1], realign=_not_called
    )[0]
    assert polished.steps == plain.steps
    np.testing.assert_array_equal(polished.delta, plain.delta)


def _not_called(positions, changes):
    raise AssertionError("faces that are not polished are not realigned")


def test_faces_short_of_their_target_are_not_polished(dlib_model, large_face) -> None:
    settings = LoopSettings(target=0.9, max_steps=5)
    plain = cloak_canvases([ModelView(dlib_model, settings)], [large_face])[0]
    polished = cloak_canvases([ModelView(dlib_model, replace(settings, polish=3))], [large_face])[0]
    assert plain.stop_reasons[NAME] == polished.stop_reasons[NAME] == "max-steps"
    assert polished.steps == plain.steps
    np.testing.assert_array_equal(polished.delta, plain.delta)


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


class _ScaledModel(_EuclideanModel):
    """A toy model whose threshold is `threshold` and whose distances are `scale` times Euclidean."""

    def __init__(self, scale: float, threshold: float) -> None:
        self.scale, self.threshold = scale, threshold

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.scale * distances(a, b, "euclidean")


_ORIGIN = np.zeros((1, 2))


def _first_negatives(views: list[ModelView], farness: np.ndarray | None) -> list[np.ndarray]:
    """Each view's first negative for one face embedded at the origin."""
    chips = np.zeros((1, 2, 1, 1), np.float32)
    return [
        plan_objectives(view.model, chips, _ORIGIN, view.settings, view.pool, farness=farness)[0][0].negative
        for view in views
    ]


def test_an_ensemble_pulls_every_model_towards_the_same_pool_face() -> None:
    # Alone, model a picks pool face 0 (3 thresholds away) and model b pool face 1 (3 thresholds);
    # on average over the two, face 1 is the farther: (2 + 3) / 2 = 2.5 against (3 + 1) / 2 = 2.
    settings = LoopSettings(strategy="farthest", margin=0.1)
    views = [
        ModelView(_ScaledModel(1.0, 1.0), settings, pool=np.array([[3.0, 0.0], [2.0, 0.0], [0.5, 0.0]])),
        ModelView(_ScaledModel(2.0, 2.0), settings, pool=np.array([[0.0, 1.0], [0.0, 3.0], [0.0, 0.5]])),
    ]
    farness = ensemble_farness(views, [_ORIGIN, _ORIGIN])
    np.testing.assert_allclose(farness, [[2.0, 2.5, 0.5]])
    np.testing.assert_array_equal(_first_negatives(views, None), [[3.0, 0.0], [0.0, 3.0]])
    np.testing.assert_array_equal(_first_negatives(views, farness), [[2.0, 0.0], [0.0, 3.0]])


def test_nearest_by_the_ensemble_skips_pool_faces_within_any_models_margin() -> None:
    # Pool face 0 is the nearest on average but within model b's margin; face 1 is beyond both
    # margins, so both models take it (alone, model a would take face 0).
    settings = LoopSettings(strategy="nearest", margin=0.5)
    views = [
        ModelView(_ScaledModel(1.0, 1.0), settings, pool=np.array([[1.0, 0.0], [2.0, 0.0], [4.0, 0.0]])),
        ModelView(_ScaledModel(1.0, 1.0), settings, pool=np.array([[0.0, 0.2], [0.0, 1.0], [0.0, 3.0]])),
    ]
    farness = ensemble_farness(views, [_ORIGIN, _ORIGIN])
    np.testing.assert_allclose(farness, [[np.inf, 1.5, 3.5]])
    np.testing.assert_array_equal(_first_negatives(views, None), [[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(_first_negatives(views, farness), [[2.0, 0.0], [0.0, 1.0]])


def test_nearest_by_the_ensemble_falls_back_to_self_for_every_model_together() -> None:
    settings = LoopSettings(strategy="nearest", margin=0.5)
    views = [
        ModelView(_ScaledModel(1.0, 1.0), settings, pool=np.array([[0.2, 0.0], [3.0, 0.0]])),
        ModelView(_ScaledModel(1.0, 1.0), settings, pool=np.array([[2.0, 0.0], [0.1, 0.0]])),
    ]
    farness = ensemble_farness(views, [_ORIGIN, _ORIGIN])
    assert np.isinf(farness).all()
    np.testing.assert_allclose(_first_negatives(views, farness), [[1e-5, 1e-5], [1e-5, 1e-5]])


def test_a_joint_loop_ranks_the_pool_once_for_all_its_models(dlib_model, canvases, monkeypatch) -> None:
    seen = []

    def recording(*args, **kwargs):
        seen.append(args[6] if len(args) > 6 else kwargs.get("farness"))
        return plan_objectives(*args, **kwargs)

    monkeypatch.setattr(loop_module, "plan_objectives", recording)
    pool = np.random.default_rng(0).normal(0.0, 0.1, (3, 128)).astype(np.float32)
    settings = LoopSettings(strategy="farthest", max_steps=1)
    views = [ModelView(dlib_model, settings, pool=pool), ModelView(dlib_model, settings, pool=pool)]
    cloak_canvases(views, canvases[:1])
    assert len(seen) == 2 and seen[0] is not None and seen[0] is seen[1]


@pytest.mark.parametrize("strategy", ["away", "random"])
def test_only_strategies_that_rank_the_pool_share_a_choice(strategy: str) -> None:
    settings = LoopSettings(strategy=strategy)
    views = [ModelView(_ScaledModel(1.0, 1.0), settings, pool=POOL)] * 2
    assert ensemble_farness(views, [np.zeros((1, 2))] * 2) is None


def test_an_ensembles_pool_must_hold_the_same_faces_for_every_model() -> None:
    settings = LoopSettings(strategy="farthest")
    views = [
        ModelView(_ScaledModel(1.0, 1.0), settings, pool=POOL),
        ModelView(_ScaledModel(1.0, 1.0), settings, pool=POOL[:2]),
    ]
    with pytest.raises(CloakSettingsError, match="same pool faces for every model"):
        ensemble_farness(views, [np.zeros((1, 2))] * 2)


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
        ({"min_quality": 100}, "SSIMULACRA2 bound"),
        ({"min_quality": -1}, "SSIMULACRA2 bound"),
        ({"budget": 0}, "budget must be positive"),
        ({"diversity": 0.5}, "diversity must be in"),
        ({"momentum": 1.0}, "momentum in"),
        ({"feature_weight": -0.5}, "feature weight and the polish steps must be at least 0"),
        ({"polish": -1}, "feature weight and the polish steps must be at least 0"),
        ({"model_dropout": 1.0}, "model dropout must be in"),
        ({"model_dropout": -0.1}, "model dropout must be in"),
        ({"activation_noise": 1.0}, "activation noise must be in"),
        ({"activation_noise": -0.1}, "activation noise must be in"),
        ({"activation_noise": 0.05, "feature_weight": 1.0}, "cannot be combined"),
        ({"skip_decay": 0.0}, "skip-gradient decay must be in"),
        ({"skip_decay": 1.5}, "skip-gradient decay must be in"),
        ({"skip_decay": 0.5, "activation_noise": 0.05}, "cannot be combined"),
        ({"skip_decay": 0.5, "feature_weight": 1.0}, "cannot be combined"),
        ({"backward_linearity": -0.1}, "backward linearity must be in"),
        ({"backward_linearity": 1.1}, "backward linearity must be in"),
        ({"backward_linearity": 0.5, "activation_noise": 0.05}, "cannot be combined"),
    ],
)
def test_bad_settings(settings: dict, message: str) -> None:
    with pytest.raises(CloakSettingsError, match=message):
        LoopSettings(**settings)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_joint_views_follow_both_models(dlib_model, store: ModelStore, dropout: float) -> None:
    photo = samples.astronaut()
    face = detector_from_store(store).detect(photo)[:1]
    # dlib's chip and a mirrored copy of it are two differently aligned views of the same face
    matrix = extract_chips(photo, face, chip_spec("dlib-150-pad0.25")).matrices[0]
    mirrored = np.array([[-1.0, 0.0, 149.0], [0.0, 1.0, 0.0]]) @ np.vstack([matrix, [0.0, 0.0, 1.0]])
    canvas = make_canvas(photo, [matrix, mirrored], [150, 150], cap=4.0)
    settings = LoopSettings(target=0.5, model_dropout=dropout)
    views = [ModelView(dlib_model, settings, index=0), ModelView(dlib_model, settings, index=1)]
    (result,) = cloak_canvases(views, [canvas])
    assert set(result.stop_reasons.values()) == {"target-reached"}
    clean = canvas.image / 127.5 - 1
    for index in (0, 1):
        operator = canvas.operator(index)
        moved = dlib_model.embed(operator.forward(clean + result.delta)[None])
        assert dlib_model.distance(moved, dlib_model.embed(operator.forward(clean)[None]))[0] >= 0.45


def test_nearest_takes_the_closest_of_the_positive_and_the_references() -> None:
    view = ModelView(_EuclideanModel(), LoopSettings(), references=np.array([[3.0, 0.0], [0.0, 1.0]]))
    embeddings = np.array([[0.0, 2.0], [2.5, 0.0]])
    positives = np.array([[0.0, 0.0], [0.0, 0.0]])
    distance, nearest = view.nearest(embeddings, positives)
    np.testing.assert_allclose(distance, [1.0, 0.5])
    np.testing.assert_allclose(nearest, [[0.0, 1.0], [3.0, 0.0]])
    alone, positive = ModelView(_EuclideanModel(), LoopSettings()).nearest(embeddings, positives)
    np.testing.assert_allclose(alone, [2.0, 2.5])
    np.testing.assert_allclose(positive, positives)


def test_a_face_moves_away_from_the_references_too(dlib_model, canvases) -> None:
    # A reference on the far side of where the face goes alone: without it the face ends near it;
    # with it, the face must end the target's distance from both.
    settings = LoopSettings(strategy="away", target=0.6, diversity=0.0)
    alone = cloak_canvases([ModelView(dlib_model, settings)], canvases[:1])[0]
    operator = canvases[0].operator(0)
    clean = canvases[0].image / 127.5 - 1
    original = dlib_model.embed(operator.forward(clean)[None])[0]
    moved = dlib_model.embed(operator.forward(clean + alone.delta)[None])[0]
    reference = original + 1.2 * (moved - original)  # beyond where the face went
    assert float(dlib_model.distance(moved[None], reference[None])[0]) < 0.3
    result = cloak_canvases([ModelView(dlib_model, settings, references=reference[None])], canvases[:1])[0]
    assert result.stop_reasons[NAME] == "target-reached"
    cloaked = dlib_model.embed(operator.forward(clean + result.delta)[None])
    assert float(dlib_model.distance(cloaked, original[None])[0]) >= 0.59
    assert float(dlib_model.distance(cloaked, reference[None])[0]) >= 0.59
    assert result.distances[NAME] >= 0.59


def test_a_polished_face_stays_away_from_the_references_too(dlib_model, large_face) -> None:
    settings = LoopSettings(strategy="away", target=0.6, diversity=0.0, polish=8)
    operator = large_face.operator(0)
    clean = large_face.image / 127.5 - 1
    original = dlib_model.embed(operator.forward(clean)[None])[0]
    alone = cloak_canvases([ModelView(dlib_model, replace(settings, polish=0))], [large_face])[0]
    moved = dlib_model.embed(operator.forward(clean + alone.delta)[None])[0]
    reference = original + 1.2 * (moved - original)
    view = ModelView(dlib_model, settings, references=reference[None])
    result = cloak_canvases([view], [large_face])[0]
    unpolished = cloak_canvases([replace(view, settings=replace(settings, polish=0))], [large_face])[0]
    assert unpolished.stop_reasons[NAME] == "target-reached"
    assert np.abs(result.delta - unpolished.delta).max() > 0.01  # the polish moved the change
    cloaked = dlib_model.embed(operator.forward(clean + result.delta)[None])
    nearest = min(float(dlib_model.distance(cloaked, point[None])[0]) for point in (original, reference))
    assert nearest >= 0.6 - 1e-4
    assert nearest == pytest.approx(result.distances[NAME], abs=1e-3)


@pytest.mark.parametrize("stride", [1, 8])
def test_movable_magnitudes_leave_out_elements_at_their_bound_in_the_step_direction(stride: int) -> None:
    rng = np.random.default_rng(3)
    bound = rng.uniform(0.5, 1.0, (20, 30, 3)).astype(np.float32)
    bound[0, :4] = 0.0  # an axis without budget: stuck whichever way it is pushed
    opponent = rng.uniform(-1, 1, bound.shape).astype(np.float32) * bound
    at_bound = rng.random(bound.shape) < 0.3
    opponent[at_bound] = np.where(rng.random(at_bound.sum()) < 0.5, -1, 1) * bound[at_bound]
    shaped = rng.normal(0, 1, bound.shape).astype(np.float32)
    shaped[rng.random(bound.shape) < 0.05] = 0.0
    face = SimpleNamespace(opponent=opponent, bound=bound, negative_bound=-bound)
    # The step moves against `shaped`: an element it would push past the bound it sits at is stuck.
    stuck = (shaped > 0) & (opponent <= -bound) | (shaped < 0) & (opponent >= bound)
    expected = np.abs(shaped.ravel()[::stride][~stuck.ravel()[::stride]])
    np.testing.assert_array_equal(_movable_magnitudes(shaped, face, stride), expected)
    assert 0 < expected.size < shaped.size / stride


def _faces_with_generators(count: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(rng=np.random.default_rng([0, key])) for key in range(count)]


def test_model_dropout_leaves_out_models_at_its_rate_and_never_all() -> None:
    faces = _faces_with_generators(2)
    working = [[None, None], [None, None], [None, None]]  # three views, both faces still in progress
    draws = [_dropped_views(faces, [0, 1], working, 0.5) for _ in range(400)]
    for dropped in draws:
        assert set(dropped) == {0, 1}
        assert all(len(left_out) < 3 for left_out in dropped.values())
    # each view is left out about half the time (less: a step that drew all three keeps one)
    rate = np.mean([v in dropped[0] for dropped in draws for v in range(3)])
    assert 0.35 < rate < 0.5


def test_model_dropout_keeps_a_face_s_last_working_model_and_is_off_at_zero() -> None:
    faces = _faces_with_generators(1)
    # view 0 is done with the face: only view 1 still works on it, and it is never left out
    working = [["target-reached"], [None]]
    assert all(not _dropped_views(faces, [0], working, 0.9) for _ in range(50))
    assert _dropped_views(faces, [0], [[None], [None]], 0.0) == {}
