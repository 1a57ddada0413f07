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
(the paper's t); a face stops early when the next step would take its chip's DSSIM past `max_dssim`,
or at `max_steps`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.metrics import structural_similarity

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
class ChipCloak:
    """The outcome for one face: the cloaked chip and how the loop ended."""

    chip: np.ndarray
    steps: int
    stop_reason: str
    dssim: float
    distance: float


def chip_dssim(chip: np.ndarray, original: np.ndarray) -> float:
    """DSSIM = (1 - SSIM) / 2 between two canonical chips [3, H, W] (scikit-image's SSIM)."""
    similarity = structural_similarity(chip, original, channel_axis=0, data_range=2.0)
    return float((1.0 - similarity) / 2.0)


def plan_objectives(
    model: FaceModel,
    chips: np.ndarray,
    positives: np.ndarray,
    settings: LoopSettings,
    pool: np.ndarray | None,
) -> list[list[Objective]]:
    """The sequence of objectives for each face, by strategy."""
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
    for index, positive in enumerate(positives):
        rng = np.random.default_rng([settings.seed, index])
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
    model: FaceModel,
    originals: np.ndarray,
    settings: LoopSettings,
    *,
    positives: np.ndarray | None = None,
    start: np.ndarray | None = None,
    pool: np.ndarray | None = None,
) -> list[ChipCloak]:
    """Cloak canonical chips [N, 3, H, W] of one model; all faces advance together, one run a step.

    `positives` default to the originals' embeddings; `start` continues from already cloaked chips
    (DSSIM is always measured against `originals`).
    """
    originals = np.asarray(originals, np.float32)
    count = len(originals)
    if count == 0:
        return []
    positives = model.embed(originals) if positives is None else np.asarray(positives, np.float32)
    plans = plan_objectives(model, originals, positives, settings, pool)
    chips = originals.copy() if start is None else np.array(start, np.float32)
    if settings.strategy == "away":
        for index in range(count):
            noise = np.random.default_rng([settings.seed, index]).uniform(-1, 1, chips[index].shape)
            chips[index] = np.clip(chips[index] + AWAY_START_NOISE * settings.step * noise, -1, 1)

    steps = np.zeros(count, int)
    objective = np.zeros(count, int)
    previous = np.full(count, np.nan)
    dssim = np.array([chip_dssim(chips[i], originals[i]) for i in range(count)])
    reasons: list[str | None] = [None] * count
    while True:
        active = [i for i in range(count) if reasons[i] is None]
        if not active:
            break
        targets = [plans[i][objective[i]] for i in active]
        result = model.step(
            chips[active],
            positives[active],
            np.stack([target.negative for target in targets]),
            np.array([target.margin for target in targets], np.float32),
            np.array([target.neg_weight for target in targets], np.float32),
        )
        for row, index in enumerate(active):
            distance = float(result.d_pos[row])
            ended = None
            if result.loss[row] <= 0:
                ended = "target-reached" if settings.strategy == "away" else "loss-zero"
            elif not np.isnan(previous[index]) and distance - previous[index] < settings.min_progress:
                ended = "slow-progress"
            if ended is not None:
                objective[index] += 1
                previous[index] = np.nan
                if objective[index] == len(plans[index]):
                    reasons[index] = ended
                continue
            if steps[index] >= settings.max_steps:
                reasons[index] = "max-steps"
                continue
            gradient = result.grad[row]
            largest = float(np.abs(gradient).max())
            if largest == 0.0 or not np.isfinite(largest):
                reasons[index] = "no-gradient"
                continue
            candidate = np.clip(chips[index] - (settings.step / largest) * gradient, -1, 1)
            candidate_dssim = chip_dssim(candidate, originals[index])
            if candidate_dssim > settings.max_dssim:
                reasons[index] = "dssim-bound"
                continue
            chips[index] = candidate
            dssim[index] = candidate_dssim
            steps[index] += 1
            previous[index] = distance

    final_distances = model.distance(model.embed(chips), positives)
    return [
        ChipCloak(chips[i], int(steps[i]), str(reasons[i]), float(dssim[i]), float(final_distances[i]))
        for i in range(count)
    ]
