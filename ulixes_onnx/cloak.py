"""The Ulixes cloaking loop on aligned chips (paper sections 3.2-3.3 and 4).

Every step runs the model's cloak graph once for all faces still in progress and moves each chip
against the gradient of the adversarial triplet loss,

    x <- clip(x - step * g / ||g||_inf, -1, 1),   g = d max(w * d(f(x), n) - d(f(x), p) + m, 0) / dx,

which pushes the face's embedding away from the positive p (always the original face's embedding) and
towards the negative n. Descending the loss is the paper's stated intent (eq. 5 writes the update
with a sum of scaled gradients; the sign here is the one that lowers L_ADV).

Strategies choose the negatives (one objective per negative, applied in sequence):
- `away`: no negative (w = 0, m = target distance): plain ascent of d(f(x), p) until it reaches the
  target, started from a tiny seeded random perturbation (the gradient is exactly 0 at x = original);
- `self`: n = f(x + 1e-5), the paper's "no sample selection" (section 4.5);
- `nearest`: the closest pool embedding farther than the margin, else `self` (section 4.4);
- `farthest`: the farthest pool embedding (4.1);  `random`: k random ones (4.2);
- `random-farthest`: the farthest, then k random ones (4.3).

An objective ends when its loss is 0 or when d(f(x), p) grew by less than `min_progress` in a step
(the paper's t; judged on the chord length for cosine models, see `_stalled`); a face stops early
when the next step would take its chip's DSSIM past `max_dssim`, or at `max_steps`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from ulixes_onnx.dssim import batch_dssim
from ulixes_onnx.errors import UlixesError
from ulixes_onnx.recognition import FaceModel

STRATEGIES = ("away", "self", "nearest", "farthest", "random", "random-farthest")
POOL_STRATEGIES = ("nearest", "farthest", "random", "random-farthest")
SELF_NEGATIVE_OFFSET = 1e-5
# The away objective starts this far (in step units) from the original so that its gradient exists.
AWAY_START_NOISE = 0.1


class CloakSettingsError(UlixesError):
    """Cloaking parameters that cannot work together."""


@dataclass(frozen=True)
class LoopSettings:
    """How one model cloaks its chips; distances are in the model's own units."""

    strategy: str = "away"
    step: float = 0.01
    margin: float = 0.6
    target: float = 0.8
    min_progress: float = 0.005
    max_dssim: float = 0.03
    max_steps: int = 100
    random_negatives: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise CloakSettingsError(
                f"unknown strategy {self.strategy!r}; use one of: {', '.join(STRATEGIES)}"
            )
        if not 0 < self.step <= 1:
            raise CloakSettingsError(f"the step must be in (0, 1] (pixel units of [-1, 1]), not {self.step}")
        if self.max_steps < 1 or self.random_negatives < 1:
            raise CloakSettingsError("max steps and the number of random negatives must be at least 1")
        if not 0 < self.max_dssim <= 1:
            raise CloakSettingsError(f"the DSSIM bound must be in (0, 1], not {self.max_dssim}")


@dataclass(frozen=True)
class Objective:
    """One triplet target: loss = max(neg_weight * d(f(x), negative) - d(f(x), p) + margin, 0)."""

    negative: np.ndarray
    margin: float
    neg_weight: float


@dataclass(frozen=True)
class View:
    """One model's view of the chips being cloaked.

    `warps` [N, 2, 3] map each cloaked chip's pixels to this model's chip when the model wants another
    chip (the joint ensemble); None means the model sees the cloaked chips themselves. `positives`
    default to the model's embeddings of the original chips.
    """

    model: FaceModel
    settings: LoopSettings
    warps: np.ndarray | None = None
    positives: np.ndarray | None = None
    pool: np.ndarray | None = None

    def chips(self, chips: np.ndarray, rows: list[int]) -> np.ndarray:
        if self.warps is None:
            return chips
        size = self.model.chip_size[0]
        return np.stack(
            [
                cv2.warpAffine(
                    chip.transpose(1, 2, 0), self.warps[row], (size, size), flags=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE,
                ).transpose(2, 0, 1)
                for chip, row in zip(chips, rows, strict=True)
            ]
        )  # fmt: skip

    def gradient_in_chip(self, gradient: np.ndarray, row: int, size: int) -> np.ndarray:
        """A gradient on this model's chip, brought back onto the cloaked chip (the warp's adjoint,
        up to a constant factor that the step's normalisation removes)."""
        if self.warps is None:
            return gradient
        back = cv2.warpAffine(
            np.ascontiguousarray(gradient.transpose(1, 2, 0)), self.warps[row], (size, size),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
        )  # fmt: skip
        return back.transpose(2, 0, 1)


@dataclass(frozen=True)
class ChipCloak:
    """The outcome for one face: the cloaked chip and, per model, why it stopped and how far it got."""

    chip: np.ndarray
    steps: int
    dssim: float
    stop_reasons: dict[str, str]
    distances: dict[str, float]


def _stalled(model: FaceModel, before: float, after: float, min_progress: float) -> bool:
    """Whether d(f(x), p) grew by less than `min_progress` (the model's units) in one step.

    The cosine distance 1 - cos grows with the square of the angle from the original, so the first
    steps of every face would look stalled on it. Cosine models are judged on the chord length
    sqrt(2 d) instead (the Euclidean distance between unit embeddings, the scale on which the paper
    sets t for FaceNet), with `min_progress` carried over to that scale at the model's threshold.
    """
    if model.metric != "cosine":
        return after - before < min_progress
    chord_min_progress = min_progress / np.sqrt(2 * model.threshold)
    return float(np.sqrt(2 * max(after, 0.0)) - np.sqrt(2 * max(before, 0.0))) < chord_min_progress


def plan_objectives(
    model: FaceModel,
    chips: np.ndarray,
    positives: np.ndarray,
    settings: LoopSettings,
    pool: np.ndarray | None,
    face_keys: Sequence[int] | None = None,
) -> list[list[Objective]]:
    """The sequence of objectives for each face, by strategy; random draws are seeded by the seed and
    each face's key (default: its position)."""
    strategy = settings.strategy
    if strategy == "away":
        return [[Objective(positive, settings.target, 0.0)] for positive in positives]
    if strategy in POOL_STRATEGIES and (pool is None or len(pool) == 0):
        raise CloakSettingsError(
            f"strategy {strategy!r} needs a pool of other people's faces for {model.name}: "
            "give --pool with a folder of photos or a saved pool file"
        )
    if strategy == "self":
        selves = model.embed(np.clip(chips + SELF_NEGATIVE_OFFSET, -1, 1))
        return [[Objective(negative, settings.margin, 1.0)] for negative in selves]

    plans = []
    keys = range(len(positives)) if face_keys is None else face_keys
    for index, (positive, key) in enumerate(zip(positives, keys, strict=True)):
        rng = np.random.default_rng([settings.seed, key])
        distances = model.distance(positive[None], pool)
        farthest = Objective(pool[int(np.argmax(distances))], settings.margin, 1.0)
        randoms = [
            Objective(pool[choice], settings.margin, 1.0)
            for choice in rng.choice(len(pool), size=min(settings.random_negatives, len(pool)), replace=False)
        ]
        if strategy == "nearest":
            candidates = np.flatnonzero(distances > settings.margin)
            if len(candidates):
                nearest = candidates[np.argmin(distances[candidates])]
                plans.append([Objective(pool[nearest], settings.margin, 1.0)])
            else:
                self_negative = model.embed(np.clip(chips[index : index + 1] + SELF_NEGATIVE_OFFSET, -1, 1))
                plans.append([Objective(self_negative[0], settings.margin, 1.0)])
        elif strategy == "farthest":
            plans.append([farthest])
        elif strategy == "random":
            plans.append(randoms)
        else:
            plans.append([farthest, *randoms])
    return plans


def cloak_chips(
    views: list[View],
    originals: np.ndarray,
    *,
    start: np.ndarray | None = None,
    face_keys: Sequence[int] | None = None,
) -> list[ChipCloak]:
    """Cloak canonical chips [N, 3, H, W]; all faces advance together, one run per model and step.

    With several views (the joint ensemble) every step follows the sum of the models' gradients, each
    scaled to unit max-norm so that no model dominates; a model stops contributing to a face once its
    objectives are done. Step size, DSSIM bound, step limit and seed come from the first view.
    `start` continues from already cloaked chips (DSSIM is always measured against `originals`).
    `face_keys` seed each face's random draws (default: its position), so that a face is cloaked the
    same whatever else is in the batch.
    """
    originals = np.asarray(originals, np.float32)
    count = len(originals)
    if count == 0:
        return []
    lead = views[0].settings
    positives = [
        view.model.embed(view.chips(originals, list(range(count))))
        if view.positives is None
        else view.positives
        for view in views
    ]
    keys = list(range(count)) if face_keys is None else list(face_keys)
    plans = [
        plan_objectives(
            view.model, view.chips(originals, list(range(count))), positive, view.settings, view.pool, keys
        )
        for view, positive in zip(views, positives, strict=True)
    ]
    chips = originals.copy() if start is None else np.array(start, np.float32)
    if any(view.settings.strategy == "away" for view in views):
        for index, key in enumerate(keys):
            noise = np.random.default_rng([lead.seed, key]).uniform(-1, 1, chips[index].shape)
            chips[index] = np.clip(chips[index] + AWAY_START_NOISE * lead.step * noise, -1, 1)

    steps = np.zeros(count, int)
    objective = np.zeros((len(views), count), int)
    previous = np.full((len(views), count), np.nan)
    view_reasons: list[list[str | None]] = [[None] * count for _ in views]
    face_reasons: list[str | None] = [None] * count
    dssim = batch_dssim(chips, originals)
    size = chips.shape[-1]
    while True:
        active = [i for i in range(count) if face_reasons[i] is None]
        if not active:
            break
        direction = np.zeros((count, *chips.shape[1:]), np.float32)
        advanced: set[int] = set()  # faces where an objective ended: evaluate the next one first
        for v, view in enumerate(views):
            rows = [i for i in active if view_reasons[v][i] is None]
            if not rows:
                continue
            targets = [plans[v][i][objective[v, i]] for i in rows]
            result = view.model.step(
                view.chips(chips[rows], rows),
                positives[v][rows],
                np.stack([target.negative for target in targets]),
                np.array([target.margin for target in targets], np.float32),
                np.array([target.neg_weight for target in targets], np.float32),
            )
            for row, index in enumerate(rows):
                distance = float(result.d_pos[row])
                ended = None
                if result.loss[row] <= 0:
                    ended = "target-reached" if view.settings.strategy == "away" else "loss-zero"
                elif not np.isnan(previous[v, index]) and _stalled(
                    view.model, previous[v, index], distance, view.settings.min_progress
                ):
                    ended = "slow-progress"
                if ended is not None:
                    objective[v, index] += 1
                    previous[v, index] = np.nan
                    if objective[v, index] == len(plans[v][index]):
                        view_reasons[v][index] = ended
                    else:
                        advanced.add(index)
                    continue
                gradient = view.gradient_in_chip(result.grad[row], index, size)
                largest = float(np.abs(gradient).max())
                if largest > 0 and np.isfinite(largest):
                    direction[index] += gradient / largest
                previous[v, index] = distance

        moving = []
        for index in active:
            if all(reasons[index] is not None for reasons in view_reasons):
                face_reasons[index] = "done"
            elif steps[index] >= lead.max_steps:
                face_reasons[index] = "max-steps"
            elif not np.any(direction[index]):
                if index not in advanced:
                    face_reasons[index] = "no-gradient"
            else:
                moving.append(index)
        if not moving:
            continue
        largest = np.abs(direction[moving]).reshape(len(moving), -1).max(axis=1)
        candidates = np.clip(
            chips[moving] - (lead.step / largest)[:, None, None, None] * direction[moving], -1, 1
        )
        candidate_dssim = batch_dssim(candidates, originals[moving])
        for row, index in enumerate(moving):
            if candidate_dssim[row] > lead.max_dssim:
                face_reasons[index] = "dssim-bound"
                continue
            chips[index] = candidates[row]
            dssim[index] = candidate_dssim[row]
            steps[index] += 1

    distances = [
        view.model.distance(view.model.embed(view.chips(chips, list(range(count)))), positive)
        for view, positive in zip(views, positives, strict=True)
    ]
    return [
        ChipCloak(
            chips[i],
            int(steps[i]),
            float(dssim[i]),
            {view.model.name: view_reasons[v][i] or face_reasons[i] for v, view in enumerate(views)},
            {view.model.name: float(distances[v][i]) for v, view in enumerate(views)},
        )
        for i in range(count)
    ]
