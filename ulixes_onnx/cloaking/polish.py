"""Perceptual polish: once a face is as far from its original as its targets ask, move its change to
where people see it least, at the photo's resolution, without bringing the face back.

The loop's ascent (loop.py) follows the models' gradients: it reaches the targets, but what it leaves on
the face is shaped by the models, and on large faces it shows as smooth blotches and ridges on skin.
The polish then climbs SSIMULACRA2 itself (its exact gradient on the face region where people look at it,
visibility.py; on a canvas shrunk from the photo, the score the photo's region would get) while keeping
every model's distance: each step moves the change along the score's gradient with the part that would
bring a model nearer to the original projected out, or, when a model has fallen below its distance,
along that model's gradient back up. Each distance is kept on the plain
view and, separately, on average over random views of the model's chip, cut from the face as the saved
file will show it (as input diversity does in the loop), so the change that survives does not hang on one
exact sampling of the chip: with the plain view counted in that average, the change fitted to it carried
the random views, and sface lost a third of a 133-px face's distance one pixel of alignment away. Every
step is smoothed at the chip's scale, as a change finer than a chip pixel moves a model only through
aliasing, which another resampling of the photo would not reproduce (such a change showed as a fine
lattice at 1:1). The state with the best score among those at every model's distance, on the plain view
(at each alignment the face has had) and on average over the random views, is kept. The pipeline gives
the polish each face's canvas realigned where the detector finds the face with the ascent's change
(`realign`): the change moves the landmarks a recogniser aligns the face by, and a polish that kept the
distance only where the face was found before lost it there (sface: 0.02-0.10) and cost the face another
round. Steps are taken in the loop's opponent basis, the colour axes scaled by its chroma share and
within the face's per-pixel bounds: SSIMULACRA2 weighs colour lightly, and with colour free the score
rose further while the whites of the eyes turned cyan at 1:1.

Measured on the development photos: benchmarks/results/perceptual-polish-2026-12-06.md and
in-round-realignment-2026-12-07.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from ulixes_onnx.cloaking.loop import (
    PERCENTILE_STRIDE,
    STEP_PERCENTILE,
    Boost,
    CanvasCloak,
    FaceState,
    ModelView,
    activation_factors,
    ascend,
    jitter,
    random_alignment,
    stacked_by_layer,
)
from ulixes_onnx.cloaking.perceptual import to_opponent
from ulixes_onnx.faces.canvas import ChipOperator, FaceCanvas

# Given the positions of faces among those being cloaked and their changes after the ascent, the canvases
# to polish them on (aligned where a detector finds them in the photo with those changes).
Realign = Callable[[list[int], list[CanvasCloak]], list[FaceCanvas]]

# Only faces the photo shows at least at the chip's scale are polished (about 110-px faces for
# dlib-resnet): polishing takes three to four times as long as a face's ascent, and smaller faces, whose
# change the photo shows finer than the chip, score higher without it (`bench`'s 88-px faces: 86.8).
# From 2x down to 1x, faces of 176-204 px went from 65.2 to 78.5 (perceptual-polish-2026-12-06.md).
POLISH_MIN_MAGNIFICATION = 1.0
# Random views of each model's chip per polish step, beside its plain views (one per alignment).
POLISH_RANDOM_VIEWS = 1
# The random views' jitter (as `diversity` in the loop).
POLISH_JITTER = 0.05
# Polish steps are this many times the loop's step.
POLISH_STEP_FACTOR = 2.0
# Each step is smoothed by a Gaussian of this many of the lead model's chip pixels.
POLISH_SMOOTHING = 0.5
# A face whose kept state scores this (SSIMULACRA2's "visually lossless") stops being polished: what
# more steps would gain, people could not see (`bench`'s 133-px face got there in half its steps).
POLISH_GOOD_ENOUGH = 90.0


def cloak_canvases(
    views: list[ModelView],
    canvases: Sequence[FaceCanvas],
    *,
    start: Sequence[np.ndarray] | None = None,
    face_keys: Sequence[int] | None = None,
    boosts: Sequence[Boost] | None = None,
    realign: Realign | None = None,
) -> list[CanvasCloak]:
    """Cloak faces on their canvases (`ascend`, see there for the arguments), then polish those that
    reached their targets (or stopped making progress near them) and that the photo shows at least
    POLISH_MIN_MAGNIFICATION times larger than the lead model's chip, for `polish` steps (the first
    view's settings), on the canvases `realign` gives them if given (the ascent's change moves the
    landmarks a recogniser aligns the face by, and the polish should keep the distance there too)."""
    results = ascend(views, canvases, start=start, face_keys=face_keys, boosts=boosts)
    steps = views[0].settings.polish
    chosen = [
        i
        for i, result in enumerate(results)
        if _polishable(result) and canvases[i].magnification(views[0].index) >= POLISH_MIN_MAGNIFICATION
    ]
    if not steps or not chosen:
        return results
    keys = list(range(len(canvases))) if face_keys is None else list(face_keys)
    boosts = [Boost()] * len(canvases) if boosts is None else list(boosts)
    polished_canvases = [canvases[i] for i in chosen]
    if realign is not None:
        polished_canvases = realign(chosen, [results[i] for i in chosen])
    polished = polish(
        views,
        polished_canvases,
        [results[i] for i in chosen],
        face_keys=[keys[i] for i in chosen],
        boosts=[boosts[i] for i in chosen],
        positives=[None if view.positives is None else view.positives[chosen] for view in views],
    )
    for index, result in zip(chosen, polished, strict=True):
        results[index] = result
    return results


def _polishable(result: CanvasCloak) -> bool:
    """Whether every model ended the face at its target or where it stopped making progress (not at
    a bound or a step limit, short of where the face should be)."""
    return all(
        reason in ("target-reached", "loss-zero", "slow-progress") for reason in result.stop_reasons.values()
    )


def _floor(view: ModelView, result: CanvasCloak, boost: Boost) -> float:
    """The distance a polished face must keep from a model's original: where the ascent left it, or
    the model's `away` target if it went past that."""
    reached = result.distances[view.model.name]
    if view.settings.strategy == "away":
        return min(reached, view.settings.target * boost.target)
    return reached


def polish(
    views: list[ModelView],
    canvases: Sequence[FaceCanvas],
    results: Sequence[CanvasCloak],
    *,
    face_keys: Sequence[int],
    boosts: Sequence[Boost],
    positives: Sequence[np.ndarray | None],
) -> list[CanvasCloak]:
    """Polish cloaked faces (`results` of the loop on `canvases`) for the first view's `polish` steps
    (a face stops once its kept state scores POLISH_GOOD_ENOUGH): the change with the best SSIMULACRA2
    that keeps every model's distance (`_floor`) on the plain view and on average over the random
    views. `positives` per view: the original faces' embeddings (None:
    embedded from the canvases)."""
    lead = views[0].settings
    faces = [
        FaceState(canvas, lead, result.state, key, boost)
        for canvas, result, key, boost in zip(canvases, results, face_keys, boosts, strict=True)
    ]
    rngs = [np.random.default_rng([lead.seed, key, 1]) for key in face_keys]
    placements = [[canvas.plain_operators(view.index) for canvas in canvases] for view in views]
    originals = [
        view.model.embed(
            np.stack([ops[0].forward(face.clean) for ops, face in zip(per_view, faces, strict=True)])
        )
        if given is None
        else given
        for view, per_view, given in zip(views, placements, positives, strict=True)
    ]
    away_from = [np.array(original, np.float32, copy=True) for original in originals]
    floors = np.array([[_floor(view, r, b) for r, b in zip(results, boosts, strict=True)] for view in views])
    # A face with a quality bound already holds the reference of its judged region.
    references = [face.quality_reference or face.new_quality_reference() for face in faces]
    # The score's gradient on each whole canvas: zero outside the judged region, which never changes.
    score_gradients = [np.zeros_like(face.clean) for face in faces]
    # In canvas pixels: the lead model's chip pixel spans `magnification` photo pixels.
    smoothing = [POLISH_SMOOTHING * c.magnification(views[0].index) * c.scale for c in canvases]
    preconditioner = np.array([1.0, lead.chroma, lead.chroma], np.float32)
    best = [(-np.inf, face.opponent, dict(r.distances)) for face, r in zip(faces, results, strict=True)]
    taken = [0] * len(faces)
    for _ in range(lead.polish):
        active = [i for i in range(len(faces)) if best[i][0] < POLISH_GOOD_ENOUGH]
        if not active:
            break
        nearest = [row[active] for row in away_from]
        plain_distances, mean_distances, gradients, plain_gradients = _views_of_models(
            views,
            [[per_view[i] for i in active] for per_view in placements],
            [faces[i] for i in active],
            [rngs[i] for i in active],
            [row[active] for row in originals],
            nearest,
        )
        for row, updated in zip(away_from, nearest, strict=True):
            row[active] = updated
        # j: the face's place among the active ones, whose views were just taken; i: among all.
        for j, i in enumerate(active):
            face = faces[i]
            taken[i] += 1
            below = [v for v in range(len(views)) if mean_distances[v, j] < floors[v, i]]
            below_plain = [v for v in range(len(views)) if plain_distances[v, j] < floors[v, i]]
            if below or below_plain:
                # Not a state to keep (a model is nearer than its floor): no need for its score.
                direction = (
                    sum(_unit(gradients[v][j]) for v in below)
                    + sum(_unit(plain_gradients[v][j]) for v in below_plain)
                ) * preconditioner
            else:
                score, score_gradient = references[i].score_and_gradient(
                    face.canvas.image[face.judged] + face.delta[face.judged] * np.float32(127.5)
                )
                if np.all(plain_distances[:, j] >= floors[:, i]) and score > best[i][0]:
                    reached = {view.model.name: float(plain_distances[v, j]) for v, view in enumerate(views)}
                    best[i] = (score, face.opponent, reached)
                score_gradients[i][face.judged] = score_gradient * face.mask[face.judged]
                direction = to_opponent(score_gradients[i]) * preconditioner
                for per_face in [*gradients, *plain_gradients]:
                    direction = _keeping(direction, per_face[j], preconditioner)
            _step(face, direction, smoothing[i], lead.step * POLISH_STEP_FACTOR)

    polished = []
    for face, result, (_, state, distances), steps in zip(faces, results, best, taken, strict=True):
        face.move_to(state)
        polished.append(
            CanvasCloak(
                face.delta,
                face.opponent,
                result.steps + steps,
                face.dssim(),
                dict(result.stop_reasons),
                distances,
            )
        )
    return polished


def _views_of_models(
    views: list[ModelView],
    placements: list[list[list[ChipOperator]]],
    faces: list[FaceState],
    rngs: list[np.random.Generator],
    originals: list[np.ndarray],
    away_from: list[np.ndarray],
) -> tuple[np.ndarray, np.ndarray, list[list[np.ndarray]], list[list[np.ndarray]]]:
    """Each model's distance from each face's original (or the nearest of its references) on the
    plain view (the nearest over the face's alignments, `placements` per view and face) and averaged
    over POLISH_RANDOM_VIEWS random views of the face as saved ([views, faces] each), and the
    gradients on the canvas of that average and of the plain views' sum, in the opponent basis
    ([views][faces] of [H, W, 3] each); one model run per view for all faces. The gradients are taken
    from `away_from` [views][faces, D] (as the loop does: the original, or the reference the face came
    nearest to on the last plain view), which is updated."""
    count = len(faces)
    plain_distances = np.zeros((len(views), count))
    mean_distances = np.zeros((len(views), count))
    gradients: list[list[np.ndarray]] = []
    plain_gradients: list[list[np.ndarray]] = []
    for v, view in enumerate(views):
        operators = []
        for i, face in enumerate(faces):
            size = face.canvas.chip_sizes[view.index]
            randoms = []
            for _ in range(POLISH_RANDOM_VIEWS):
                shaken = jitter(rngs[i], size, POLISH_JITTER)
                alignment = random_alignment(face.canvas, rngs[i])
                randoms.append(face.canvas.operator(view.index, shaken, alignment))
            operators.append([*placements[v][i], *randoms])
        owners = np.array([i for i, ops in enumerate(operators) for _ in ops])
        placed = [len(placements[v][i]) for i in range(count)]
        chips = np.stack(
            [
                op.forward(face.cloaked if k < n else face.saved())
                for ops, face, n in zip(operators, faces, placed, strict=True)
                for k, op in enumerate(ops)
            ]
        )
        targets = away_from[v][owners]
        # A margin past any distance a face reaches: the loss stays positive and its gradient is minus
        # that of the distance.
        margins = np.full(len(chips), 4.0, np.float32)
        noise = _random_view_noise(view, rngs, placed, [len(ops) for ops in operators])
        result = view.model.step(
            chips,
            targets,
            targets,
            margins,
            np.zeros(len(chips), np.float32),
            noise=noise,
            skip_decay=view.settings.skip_decay,
            backward_linearity=view.settings.backward_linearity,
        )
        starts = np.searchsorted(owners, np.arange(count))  # each face's first view: its current plain one
        distances = result.d_pos
        if view.references is not None:
            distances, nearest = view.nearest(result.emb, originals[v][owners])
            away_from[v] = nearest[starts]
        plain_distances[v] = [distances[s : s + n].min() for s, n in zip(starts, placed, strict=True)]
        mean_distances[v] = [
            distances[s + n : s + len(ops)].mean()
            for s, n, ops in zip(starts, placed, operators, strict=True)
        ]
        gradients.append(
            [
                _on_canvas(ops[n:], result.grad[s + n : s + len(ops)], face)
                for ops, s, n, face in zip(operators, starts, placed, faces, strict=True)
            ]
        )
        plain_gradients.append(
            [
                _on_canvas(ops[:n], result.grad[s : s + n], face)
                for ops, s, n, face in zip(operators, starts, placed, faces, strict=True)
            ]
        )
    return plain_distances, mean_distances, gradients, plain_gradients


def _random_view_noise(
    view: ModelView, rngs: list[np.random.Generator], placed: list[int], counts: list[int]
) -> list[np.ndarray] | None:
    """Per activation layer, the channel factors of each chip: 1 on the plain views, drawn as the loop
    draws them on the random views (None without activation noise)."""
    spread = view.settings.activation_noise
    if spread == 0:
        return None
    channels = view.model.noise_channels
    return stacked_by_layer(
        [
            activation_factors(rng, channels, spread if k >= plain else 0.0)
            for rng, plain, count in zip(rngs, placed, counts, strict=True)
            for k in range(count)
        ]
    )


def _on_canvas(operators: list[ChipOperator], chip_gradients: np.ndarray, face: FaceState) -> np.ndarray:
    """The gradient of a distance on a face's canvas, in the opponent basis, from the loss gradients
    [N, 3, S, S] of the chips `operators` cut (the loss falls as the distance grows)."""
    return to_opponent(
        -sum(op.adjoint(g) for op, g in zip(operators, chip_gradients, strict=True)) * face.mask
    )


def _step(face: FaceState, direction: np.ndarray, smoothing: float, step: float) -> None:
    """Move a face's change along `direction` (opponent basis), smoothed, scaled so that a high
    percentile of its elements on the judged region moves by `step`, and kept within the face's
    per-pixel bounds."""
    if smoothing >= 0.3:
        direction = cv2.GaussianBlur(direction, (0, 0), smoothing)
    scale = float(np.percentile(np.abs(direction[face.judged]).ravel()[::PERCENTILE_STRIDE], STEP_PERCENTILE))
    if scale == 0 or not np.isfinite(scale):
        return
    direction *= np.float32(step / scale)
    np.clip(direction, -step, step, out=direction)
    moved = face.opponent + direction
    face.move_to(np.clip(moved, face.negative_bound, face.bound, out=moved))


def _unit(gradient: np.ndarray) -> np.ndarray:
    """A gradient scaled to max-norm 1 (0 stays 0)."""
    largest = float(np.abs(gradient).max())
    return gradient / largest if largest > 0 else gradient


def _keeping(direction: np.ndarray, gradient: np.ndarray, preconditioner: np.ndarray) -> np.ndarray:
    """`direction` without the part that would lower the distance whose `gradient` is given: a
    direction that lowers it loses its component along the preconditioned gradient, which then moves
    the distance by 0 to first order."""
    slope = float(np.vdot(direction, gradient))
    if slope >= 0:
        return direction
    along = gradient * preconditioner
    return direction - (slope / float(np.vdot(along, gradient))) * along
