"""The Ulixes cloaking loop (paper sections 3.2-3.3 and 4) on face canvases at the photo's resolution.

The variable is each face's change on its canvas (faces/canvas.py); every model sees its chip cut
from the changed canvas. Every step runs each model's cloak graph once for all faces still in
progress and moves the change against the gradient of the adversarial triplet loss,

    g = d max(w * d(f(x), n) - d(f(x), p) + m, 0) / dx

(minus `feature_weight` times the gradient of the relative change of a mid-level feature map that the
model's card names, when that weight is set: engine/cloak_graph.py), brought back onto the canvas
through the chip operator's adjoint, shaped by a per-pixel perceptual budget in an opponent colour
basis (perceptual.py) and bounded by it. This pushes the face's
embedding away from the positive p (the original face's embedding) and towards the negative n.
Descending the loss is the paper's stated intent (eq. 5 writes the update with a sum of scaled
gradients; the sign here is the one that lowers L_ADV).

Strategies choose the negatives (one objective per negative, applied in sequence):
- `away`: no negative (w = 0, m = target distance): plain ascent of d(f(x), p) until it reaches the
  target, started from a tiny seeded random perturbation (the gradient is exactly 0 at x = original);
- `self`: n = f(x + 1e-5), the paper's "no sample selection" (section 4.5);
- `nearest`: the closest pool embedding farther than the margin, else `self` (section 4.4);
- `farthest`: the farthest pool embedding (4.1);  `random`: k random ones (4.2);
- `random-farthest`: the farthest, then k random ones (4.3).

An objective ends when its loss is 0 on the step's view and on the plain view at every alignment the
face has had (the current and, once it is re-aligned, the original) or
when d(f(x), p) grew by less than `min_progress` per step over a window of steps (the paper's t,
scaled to the step; judged on the chord length for cosine models, see `_stalled`); a face stops early
when its canvas's DSSIM passes `max_dssim` or its SSIMULACRA2 where people look at it falls below
`min_quality` (both checked every few steps, at the photo's resolution up to the canvas cap; the face
goes back to its last state that passed), or at `max_steps`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from ulixes_onnx.cloaking.dssim import DssimReference
from ulixes_onnx.cloaking.perceptual import budget_map, to_opponent, to_rgb
from ulixes_onnx.cloaking.visibility import SCALES, Ssimulacra2Reference
from ulixes_onnx.errors import UlixesError
from ulixes_onnx.face_model import FaceModel
from ulixes_onnx.faces.canvas import ChipOperator, FaceCanvas, symmetric_blur

STRATEGIES = ("away", "self", "nearest", "farthest", "random", "random-farthest")
POOL_STRATEGIES = ("nearest", "farthest", "random", "random-farthest")
# The pool strategies that rank the pool; a joint ensemble ranks it once for all its models.
RANKING_STRATEGIES = ("nearest", "farthest", "random-farthest")
SELF_NEGATIVE_OFFSET = 1e-5
# The away objective starts this far (in step units) from the original so that its gradient exists.
AWAY_START_NOISE = 0.1
# Progress is judged over this many steps: with per-pixel bounds and input diversity single steps are
# uneven (saturating pixels, another random view every step).
STALL_WINDOW = 5
# The step size the paper's t (`min_progress`) goes with: t is scaled to the step in use.
PAPER_STEP = 0.01
# An `away` face takes steps this many times the step size until it is this share of the way to its
# target: the same protection and visibility in 0.73x the steps on the 20 largest development faces
# (large steps all the way overshoot the target and show more on the hardest faces; measured:
# benchmarks/results/steps-2026-12-06.md).
FAST_STEP_FACTOR = 2.0
FAST_UNTIL = 0.75
# The percentile of the movable elements' step sizes that is scaled to the full step.
STEP_PERCENTILE = 99
# ... estimated on every this many elements (within 1 % of the exact one on a canvas, at a sixth of the
# time: the exact percentile was a tenth of a step on large faces).
PERCENTILE_STRIDE = 8
# DSSIM and SSIMULACRA2 take about a step's time and several on a large canvas: the bounds are checked on
# every this many steps' state (and on the last), and a face that breaks one goes back to the last state
# that passed.
BOUNDS_CHECK_EVERY = 4


class CloakSettingsError(UlixesError):
    """Cloaking parameters that cannot work together."""


@dataclass(frozen=True)
class LoopSettings:
    """How one model cloaks its chips; distances are in the model's own units."""

    strategy: str = "away"
    step: float = 0.004
    margin: float = 0.6
    target: float = 0.8
    min_progress: float = 0.005
    max_dssim: float = 0.03
    min_quality: float = 0.0
    max_steps: int = 100
    random_negatives: int = 5
    seed: int = 0
    # Grey levels of lightness at the face's median contrast. At 8, most faces of 500 px and more
    # stalled short of their targets and took a second round on top of the first (mostly less visible
    # for it: benchmarks/results/chip-sampling-2026-12-06.md).
    budget: float = 16.0
    chroma: float = 0.2
    diversity: float = 0.0
    momentum: float = 0.0
    smoothing: float = 0.0
    feature_weight: float = 0.0
    # The chance that a step leaves out one model's gradient (ensembles; each step keeps at least one).
    model_dropout: float = 0.0
    # Each ascent step, and each random view of the polish, multiplies every activation layer's channels
    # by factors drawn uniformly from [1 - this, 1 + this]: it runs another perturbed copy of each model.
    activation_noise: float = 0.0
    # The factor on the gradient through every residual branch on the way back (the skip-gradient
    # method; 1: the true gradient), and how far the late activation layers pass the gradient back
    # unchanged (the linear backward pass; 0: the true gradient). Distances and targets are always the
    # true network's; the polish follows the chosen gradient too, because on the true one it took back
    # what the chosen one had added (benchmarks/results/backward-passes-2026-12-07.md).
    skip_decay: float = 1.0
    backward_linearity: float = 0.0
    polish: int = 0

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
        if not 0 <= self.min_quality < 100:
            raise CloakSettingsError(
                f"the SSIMULACRA2 bound must be in [0, 100) (0: none), not {self.min_quality}"
            )
        if self.budget <= 0 or not 0 <= self.chroma <= 1:
            raise CloakSettingsError("the budget must be positive and the chroma share in [0, 1]")
        if not 0 <= self.diversity <= 0.3 or not 0 <= self.momentum < 1 or self.smoothing < 0:
            raise CloakSettingsError(
                "diversity must be in [0, 0.3], momentum in [0, 1) and smoothing at least 0"
            )
        if self.feature_weight < 0 or self.polish < 0:
            raise CloakSettingsError("the feature weight and the polish steps must be at least 0")
        if not 0 <= self.model_dropout < 1:
            raise CloakSettingsError(f"the model dropout must be in [0, 1), not {self.model_dropout}")
        if not 0 <= self.activation_noise < 1:
            raise CloakSettingsError(f"the activation noise must be in [0, 1), not {self.activation_noise}")
        if self.activation_noise > 0 and self.feature_weight > 0:
            raise CloakSettingsError("activation noise and a feature weight cannot be combined")
        if not 0 < self.skip_decay <= 1:
            raise CloakSettingsError(f"the skip-gradient decay must be in (0, 1], not {self.skip_decay}")
        if not 0 <= self.backward_linearity <= 1:
            raise CloakSettingsError(
                f"the backward linearity must be in [0, 1], not {self.backward_linearity}"
            )
        chosen_backward = self.skip_decay < 1 or self.backward_linearity > 0
        if chosen_backward and (self.activation_noise > 0 or self.feature_weight > 0):
            raise CloakSettingsError(
                "the skip-gradient decay and the backward linearity cannot be combined with activation "
                "noise or a feature weight"
            )


@dataclass(frozen=True)
class Boost:
    """How much one face's `away` target and per-pixel budget are raised over the settings' (later
    rounds of the closed loop raise them for the faces that need it)."""

    target: float = 1.0
    budget: float = 1.0


@dataclass(frozen=True)
class Objective:
    """One triplet target: loss = max(neg_weight * d(f(x), negative) - d(f(x), p) + margin, 0)."""

    negative: np.ndarray
    margin: float
    neg_weight: float


@dataclass(frozen=True)
class ModelView:
    """One model's view of the faces being cloaked: its chips are cut from each face's canvas by the
    canvas's operator number `index`. `positives` are the embeddings to move away from (default: the
    model's embeddings of the original faces); `references` [R, D] are the person's other photos,
    which every face also moves away from: its loss and distance are taken to whichever of its
    positive and the references is nearest."""

    model: FaceModel
    settings: LoopSettings
    index: int = 0
    positives: np.ndarray | None = None
    pool: np.ndarray | None = None
    references: np.ndarray | None = None

    def nearest(self, embeddings: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`nearest_of` with this view's model and references."""
        return nearest_of(self.model, embeddings, positives, self.references)


def nearest_of(
    model: FaceModel, embeddings: np.ndarray, positives: np.ndarray, references: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Each face's distance to the nearest of its positive and the references [R, D] (if any), and
    that embedding ([N], [N, D])."""
    candidates = positives[:, None, :]
    if references is not None and len(references):
        candidates = np.concatenate(
            [candidates, np.broadcast_to(references, (len(positives), *references.shape))], axis=1
        )
    distances = model.distance(embeddings[:, None, :], candidates)
    nearest = np.argmin(distances, axis=1)
    rows = np.arange(len(positives))
    return distances[rows, nearest], candidates[rows, nearest]


@dataclass(frozen=True)
class CanvasCloak:
    """The outcome for one face: the change to its canvas and, per model, why it stopped and how far
    it got.

    `delta` float32 [H, W, 3] is the masked RGB change in canonical units (2.0 spans 0..255), `state`
    the loop's variable it was made from (opponent coordinates before the mask), from which a later
    round continues; `dssim` is measured on the canvas, i.e. at (close to) the photo's resolution.
    """

    delta: np.ndarray
    state: np.ndarray
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


def _stalled_over(
    model: FaceModel, seen: list[float], distance: float, window: int, min_progress: float
) -> bool:
    """Whether the mean distance of the last `window` steps (this one included) beats the mean of the
    `window` steps before them by less than `window` x `min_progress`: means, because with input
    diversity every step sees another view and single distances are noisy."""
    if len(seen) < 2 * window - 1:
        return False
    recent = [*seen[len(seen) - window + 1 :], distance]
    before = seen[len(seen) - 2 * window + 1 : len(seen) - window + 1]
    return _stalled(model, float(np.mean(before)), float(np.mean(recent)), window * min_progress)


def plan_objectives(
    model: FaceModel,
    chips: np.ndarray,
    positives: np.ndarray,
    settings: LoopSettings,
    pool: np.ndarray | None,
    face_keys: Sequence[int] | None = None,
    farness: np.ndarray | None = None,
) -> list[list[Objective]]:
    """The sequence of objectives for each face, by strategy; random draws are seeded by the seed and
    each face's key (default: its position). `farness` [faces, pool] ranks the pool faces for
    `farthest` and `nearest` (default: this model's distances; `nearest` takes no pool face whose
    ranking is infinite); a joint ensemble passes `ensemble_farness`, so that all its models pull
    each face towards the same person."""
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
        ranking = distances if farness is None else farness[index]
        farthest = Objective(pool[int(np.argmax(ranking))], settings.margin, 1.0)
        randoms = [
            Objective(pool[choice], settings.margin, 1.0)
            for choice in rng.choice(len(pool), size=min(settings.random_negatives, len(pool)), replace=False)
        ]
        if strategy == "nearest":
            candidates = np.flatnonzero((distances > settings.margin) & np.isfinite(ranking))
            if len(candidates):
                nearest = candidates[np.argmin(ranking[candidates])]
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


def ensemble_farness(views: Sequence[ModelView], positives: Sequence[np.ndarray]) -> np.ndarray | None:
    """[faces, pool] each pool face's distance from each face, in units of each model's threshold,
    averaged over the views' models (for `nearest`, infinite where a pool face lies within any
    model's margin); None unless several views share a strategy that ranks the pool.

    Left to themselves, the models of a joint ensemble pick different people: on the development
    photos each model's farthest pool face is another model's for only 8-15 % of the faces, so the
    change would pull towards three people at once, a direction fitted to no one.
    """
    strategy = views[0].settings.strategy
    if len(views) < 2 or strategy not in RANKING_STRATEGIES:
        return None
    pools = [view.pool for view in views]
    if any(pool is None for pool in pools):
        return None  # plan_objectives says which model lacks one
    if len({len(pool) for pool in pools}) != 1:
        raise CloakSettingsError(
            "an ensemble's pool needs the same pool faces for every model; build the pool with all of them"
        )
    farness = np.zeros((len(positives[0]), len(pools[0])))
    for view, positive in zip(views, positives, strict=True):
        # One face at a time: all faces against the whole pool at once would hold faces x pool x
        # embedding size in memory.
        distances = np.stack([view.model.distance(embedding[None], view.pool) for embedding in positive])
        farness += distances / view.model.threshold / len(views)
        if strategy == "nearest":
            farness[distances <= view.settings.margin] = np.inf
    return farness


def jitter(rng: np.random.Generator, size: int, amount: float) -> np.ndarray:
    """A random similarity of the chip about its centre: scale within 1 +- amount, shift within
    +- amount / 2 of the side, rotation within +- 30 * amount degrees (input diversity)."""
    scale = 1 + rng.uniform(-amount, amount)
    angle = np.deg2rad(rng.uniform(-30 * amount, 30 * amount))
    shift = rng.uniform(-amount / 2, amount / 2, 2) * size
    centre = (size - 1) / 2
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.hstack([rotation, (centre - rotation @ [centre, centre] + shift)[:, None]])


def random_alignment(canvas: FaceCanvas, rng: np.random.Generator) -> int:
    """Which of a face's alignments a random view cuts its chips at (`FaceCanvas.operator`): once the
    cloak has moved the landmarks a detector aligns by, a change made for one alignment alone lost
    most of its distance at the other (sface 0.69 -> 0.31 on a 509-pixel face), so random views
    cover both. No draw for a face with one alignment, whose views stay as they were."""
    return int(rng.integers(canvas.alignment_count)) if canvas.alignment_count > 1 else 0


def chip_blur(chip: np.ndarray, sigma: float) -> np.ndarray:
    """A [3, S, S] chip blurred by a Gaussian (self-adjoint, so it also carries the gradient back)."""
    return symmetric_blur(chip.transpose(1, 2, 0), sigma).transpose(2, 0, 1)


class FaceState:
    """One face in the loop: its canvas in canonical units, the change so far and its bounds."""

    def __init__(
        self, canvas: FaceCanvas, settings: LoopSettings, start: np.ndarray | None, key: int, boost: Boost
    ) -> None:
        self.canvas = canvas
        self.settings = settings
        self.clean = canvas.image * np.float32(1 / 127.5) - np.float32(1)
        # Repeated per channel: multiplying by a broadcast [H, W, 1] mask takes 2-3x as long.
        self.mask = np.repeat(canvas.mask[:, :, None], 3, axis=2)
        relative = budget_map(canvas.image, canvas.mask, 1 / canvas.scale)[:, :, None]
        # Per-pixel bound of each opponent axis, in canonical units.
        # Texture hides a change of lightness, not a shift of colour over it (an iris keeps its
        # pattern and changes colour): the colour axes' budget does not grow past the median's.
        colour = np.minimum(relative, np.float32(1)) * np.float32(settings.chroma)
        self.bound = np.concatenate([relative, colour, colour], axis=2) * np.float32(
            settings.budget * boost.budget / 127.5
        )
        self.negative_bound = -self.bound
        # A canvas-sized map for the step's intermediate values.
        self.scratch = np.empty_like(self.clean)
        self.rng = np.random.default_rng([settings.seed, key])
        if start is None:
            noise = self.rng.uniform(-1, 1, self.clean.shape).astype(np.float32)
            self.move_to(np.clip(AWAY_START_NOISE * settings.step * noise, self.negative_bound, self.bound))
        else:
            self.move_to(np.clip(start, self.negative_bound, self.bound))
        self.momentum = np.zeros_like(self.opponent)
        self.judged = canvas.judged or (slice(None), slice(None))
        # DSSIM on the 0..255 scale, with black at 0: the canvas's -1..1 shifted to 0..2.
        self.dssim_reference = DssimReference(self.clean + 1, data_range=2.0)
        self.quality_reference = self.new_quality_reference() if settings.min_quality > 0 else None
        # The last state that was checked against the bounds and passed (the start passed in its round).
        self.passed = self.opponent
        self.unchecked = False

    def new_quality_reference(self) -> Ssimulacra2Reference:
        """SSIMULACRA2 of the face's judged region, scored on the canvas as the photo's region would
        be: a canvas shrunk 2^k times from the photo holds the photo's scales from the k-th on."""
        shrink = math.log2(1 / self.canvas.scale)
        # A canvas 64 times smaller than its photo would hold none of the photo's six scales: it is
        # scored from the coarsest.
        return Ssimulacra2Reference(self.canvas.image[self.judged], first_scale=min(shrink, SCALES - 1))

    def move_to(self, opponent: np.ndarray) -> None:
        """Make `opponent` the current state, with its masked RGB change `delta` and the canvas with
        that change, `cloaked` (which the models' chips are cut from)."""
        self.opponent = opponent
        change = to_rgb(opponent)
        change *= self.mask
        change += self.clean
        # Keep the cloaked pixels inside the valid range.
        np.clip(change, -1, 1, out=change)
        self.delta = change - self.clean
        # Not `change` itself: chips are cut from the original plus the delta, as the photo will be
        # (the two differ in float32 rounding).
        self.cloaked = self.clean + self.delta
        self._saved: np.ndarray | None = None

    def saved(self) -> np.ndarray:
        """The cloaked canvas as the saved photo will decode it (the canvas's `as_saved`), or as it is
        where that is not known."""
        if self.canvas.as_saved is None:
            return self.cloaked
        if self._saved is None:
            decoded = self.canvas.as_saved((self.cloaked + np.float32(1)) * np.float32(127.5))
            self._saved = decoded * np.float32(1 / 127.5) - np.float32(1)
        return self._saved

    def dssim(self) -> float:
        """DSSIM of the canvas with the current change."""
        return self.dssim_reference.dssim(self.cloaked + 1) if self.delta.any() else 0.0

    def quality(self) -> float:
        """SSIMULACRA2 of the face with the current change, where people look at it (needs
        `min_quality`)."""
        assert self.quality_reference is not None
        image = self.canvas.image[self.judged]
        return self.quality_reference.score(image + self.delta[self.judged] * np.float32(127.5))

    def check_bounds(self) -> str | None:
        """Check the current state against the DSSIM and quality bounds: None if it passes (it becomes
        the state to go back to), else the bound it breaks (the face goes back to the last state that
        passed)."""
        self.unchecked = False
        broken = None
        if self.dssim() > self.settings.max_dssim:
            broken = "dssim-bound"
        elif self.settings.min_quality and self.quality() < self.settings.min_quality:
            broken = "quality-bound"
        if broken is None:
            self.passed = self.opponent
        else:
            self.move_to(self.passed)
        return broken


def _movable_magnitudes(shaped: np.ndarray, face: FaceState, stride: int) -> np.ndarray:
    """|shaped| of every `stride`-th element that can still move: not at its bound in the direction
    the step takes it (against `shaped`)."""
    step, state = shaped.ravel()[::stride], face.opponent.ravel()[::stride]
    stuck = (step > 0) & (state <= face.negative_bound.ravel()[::stride])
    stuck |= (step < 0) & (state >= face.bound.ravel()[::stride])
    return np.abs(step[~stuck])


def _dropped_views(
    faces: list[FaceState], active: list[int], view_reasons: list[list[str | None]], dropout: float
) -> dict[int, set[int]]:
    """Per active face, the views whose gradient this step leaves out: each of the views still working
    on the face with probability `dropout` (drawn from the face's own generator), never all of them
    (model dropout: the change must not lean on any one surrogate)."""
    if dropout == 0:
        return {}
    dropped = {}
    for index in active:
        working = [v for v, reasons in enumerate(view_reasons) if reasons[index] is None]
        if len(working) < 2:
            continue
        rng = faces[index].rng
        left_out = {v for v, draw in zip(working, rng.random(len(working)), strict=True) if draw < dropout}
        if len(left_out) == len(working):
            left_out.discard(working[int(rng.integers(len(working)))])
        dropped[index] = left_out
    return dropped


def activation_factors(rng: np.random.Generator, channels: Sequence[int], spread: float) -> list[np.ndarray]:
    """One chip's channel factors for each activation layer (`FaceModel.noise_channels`): uniform in
    [1 - spread, 1 + spread], all 1 at a spread of 0."""
    if spread == 0:
        return [np.ones(count, np.float32) for count in channels]
    return [rng.uniform(1 - spread, 1 + spread, count).astype(np.float32) for count in channels]


def stacked_by_layer(per_chip: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Chips' factors (per chip, per layer) as `FaceModel.step` takes them: per layer, [chips, C]."""
    return [np.stack(layer) for layer in zip(*per_chip, strict=True)]


def _activation_noise(view: ModelView, faces: list[FaceState]) -> list[np.ndarray] | None:
    """Per activation layer, each face's channel factors for this step (None: the plain network)."""
    spread = view.settings.activation_noise
    if spread == 0:
        return None
    channels = view.model.noise_channels
    return stacked_by_layer([activation_factors(face.rng, channels, spread) for face in faces])


def _confirmed_on_plain_views(
    view: ModelView,
    placements: list[list[ChipOperator]],
    faces: list[FaceState],
    rows: list[int],
    losses: np.ndarray,
    targets: list[Objective],
    positives: np.ndarray,
    measured: list[int | None],
) -> tuple[np.ndarray, dict[int, int]]:
    """Which faces' objectives are met: their loss is 0 on this step's view and on the plain view at
    every alignment the face has had (`placements`, per face: the current first), as a recogniser
    aligning it at either measures it; one lucky view ends nothing. `measured` per row: the
    alignment whose plain view the step's view was (None for a random view). Also, per row it does not
    confirm, the first alignment whose plain view fell short."""
    met = np.asarray(losses) <= 0
    checks = [
        (r, k) for r in np.flatnonzero(met) for k in range(len(placements[rows[r]])) if k != measured[r]
    ]
    if not checks:
        return met, {}
    chips = np.stack([placements[rows[r]][k].forward(faces[rows[r]].saved()) for r, k in checks])
    embeddings = view.model.embed(chips)
    nearest, _ = view.nearest(embeddings, positives[[rows[r] for r, _ in checks]])
    short: dict[int, int] = {}
    for (r, k), embedding, distance in zip(checks, embeddings, nearest, strict=True):
        target = targets[r]
        loss = target.neg_weight * float(view.model.distance(embedding[None], target.negative[None])[0])
        if loss + target.margin - float(distance) > 0 and r not in short:
            met[r] = False
            short[r] = k
    return met, short


def _placed_distances(
    view: ModelView, placements: list[list[ChipOperator]], images: Sequence[np.ndarray], positives: np.ndarray
) -> np.ndarray:
    """Each face's distance from its positive (or nearest reference) on the plain view, the nearest
    over the alignments it has had (`placements`, per face), one model run for all: a recogniser may
    align the face at any of them."""
    owners = [i for i, operators in enumerate(placements) for _ in operators]
    chips = np.stack(
        [op.forward(image) for operators, image in zip(placements, images, strict=True) for op in operators]
    )
    distances = view.nearest(view.model.embed(chips), positives[owners])[0]
    nearest = np.full(len(placements), np.inf)
    np.minimum.at(nearest, owners, distances)
    return nearest


def ascend(
    views: list[ModelView],
    canvases: Sequence[FaceCanvas],
    *,
    start: Sequence[np.ndarray] | None = None,
    face_keys: Sequence[int] | None = None,
    boosts: Sequence[Boost] | None = None,
) -> list[CanvasCloak]:
    """Cloak faces on their canvases; all faces advance together, one run per model and step.

    Each step cuts every model's chip from the cloaked canvas (through a random jitter and blur when
    `diversity` is on, at the current or the original alignment of a realigned face, or at the one whose
    plain view last fell short of a target the step before had reached; every view cuts it from the
    canvas as the saved file will show it, `as_saved`, and the gradient is taken as if saving changed
    nothing), runs the models' cloak graphs, brings each gradient back onto the canvas through the
    operator's adjoint, sums the models' gradients (each scaled to unit max-norm so that no model
    dominates; a model stops contributing to a face once its objectives are done), smooths it
    (`smoothing`), accumulates momentum, shapes it by the perceptual budget and moves the change in the
    opponent basis by up to `step` (scaled to a high percentile of the movable elements; twice that while
    an `away` face is far from its target), within its per-pixel bounds. Step size, bounds, DSSIM bound,
    step limit and seed come from the first view.
    `start` continues from earlier states (`CanvasCloak.state`); `boosts` raise single faces' `away`
    targets and budgets; `face_keys` seed each face's random draws (default: its position), so that a
    face is cloaked the same whatever else is in the batch.
    """
    count = len(canvases)
    if count == 0:
        return []
    lead = views[0].settings
    keys = list(range(count)) if face_keys is None else list(face_keys)
    boosts = [Boost()] * count if boosts is None else list(boosts)
    faces = [
        FaceState(canvas, lead, None if start is None else start[i], key, boost)
        for i, (canvas, key, boost) in enumerate(zip(canvases, keys, boosts, strict=True))
    ]
    placements = [[canvas.plain_operators(view.index) for canvas in canvases] for view in views]
    plain = [[operators[0] for operators in per_view] for per_view in placements]
    original_chips = [
        np.stack([op.forward(face.clean) for op, face in zip(ops, faces, strict=True)]) for ops in plain
    ]
    positives = [
        view.model.embed(chips) if view.positives is None else view.positives
        for view, chips in zip(views, original_chips, strict=True)
    ]
    # The original faces' mid-level features, for views that also disrupt them.
    feature_positives = [
        view.model.features(chips) if view.settings.feature_weight > 0 else None
        for view, chips in zip(views, original_chips, strict=True)
    ]
    farness = ensemble_farness(views, positives)
    plans = [
        [
            [replace(objective, margin=objective.margin * boost.target) for objective in plan]
            if view.settings.strategy == "away"
            else plan
            for plan, boost in zip(
                plan_objectives(view.model, chips, positive, view.settings, view.pool, keys, farness),
                boosts,
                strict=True,
            )
        ]
        for view, chips, positive in zip(views, original_chips, positives, strict=True)
    ]
    # What each face moves away from: its positive, or the reference it has come nearer to.
    away_from = [np.array(positive, np.float32, copy=True) for positive in positives]
    steps = np.zeros(count, int)
    objective = np.zeros((len(views), count), int)
    history: list[list[list[float]]] = [[[] for _ in range(count)] for _ in views]
    view_reasons: list[list[str | None]] = [[None] * count for _ in views]
    face_reasons: list[str | None] = [None] * count
    # (view, face) -> the alignment whose plain view last fell short of a target the step's view had
    # reached: the next step of that view cuts the face's chip there.
    retry: dict[tuple[int, int], int] = {}
    # (view, face) -> the alignment of the plain views whose distances the face's history holds (without
    # random views).
    judged_at: dict[tuple[int, int], int] = {}
    while True:
        active = [i for i in range(count) if face_reasons[i] is None]
        if not active:
            break
        direction: dict[int, np.ndarray] = {}
        # How far each face is towards its `away` target (the least of its models'): far from it, steps
        # are larger.
        progress: dict[int, float] = {}
        advanced: set[int] = set()  # faces where an objective ended: evaluate the next one first
        dropped = _dropped_views(faces, active, view_reasons, lead.model_dropout)
        for v, view in enumerate(views):
            rows = [i for i in active if view_reasons[v][i] is None]
            if not rows:
                continue
            operators, chips, blurs, measured, retried = [], [], [], [], []
            for i in rows:
                face = faces[i]
                alignment = retry.pop((v, i), None)
                retried.append(alignment is not None)
                if lead.diversity > 0:
                    size = face.canvas.chip_sizes[view.index]
                    shaken = jitter(face.rng, size, lead.diversity)
                    if alignment is None:
                        alignment = random_alignment(face.canvas, face.rng)
                    operator = face.canvas.operator(view.index, shaken, alignment)
                    blur = float(face.rng.uniform(0, 2 * lead.diversity * 5))
                else:
                    alignment = alignment or 0
                    operator, blur = placements[v][i][alignment], 0.0
                measured.append(None if lead.diversity > 0 else alignment)
                operators.append(operator)
                blurs.append(blur)
                # Every view sees the face as the saved file will show it, and its gradient is taken as
                # if saving changed nothing: a 72-px face cloaked on the canvas alone fell from 0.61 to
                # 0.56 in sface once saved as JPEG, short of 0.58, and took two more rounds.
                chips.append(chip_blur(operator.forward(face.saved()), blur))
            targets = [plans[v][i][objective[v, i]] for i in rows]
            margins = np.array([target.margin for target in targets], np.float32)
            neg_weights = np.array([target.neg_weight for target in targets], np.float32)
            result = view.model.step(
                np.stack(chips),
                away_from[v][rows],
                np.stack([target.negative for target in targets]),
                margins,
                neg_weights,
                f_pos=None if feature_positives[v] is None else feature_positives[v][rows],
                feature_weight=view.settings.feature_weight,
                noise=_activation_noise(view, [faces[i] for i in rows]),
                skip_decay=view.settings.skip_decay,
                backward_linearity=view.settings.backward_linearity,
            )
            losses, nearest_distance, nearest = result.loss, result.d_pos, away_from[v][rows]
            if view.references is not None:
                # Past the target only if the nearest of the face's positive and references is.
                nearest_distance, nearest = view.nearest(result.emb, positives[v][rows])
                losses = np.maximum(neg_weights * result.d_neg - nearest_distance + margins, 0.0)
            confirmed, short = _confirmed_on_plain_views(
                view, placements[v], faces, rows, losses, targets, positives[v], measured
            )
            for row, index in enumerate(rows):
                distance = float(nearest_distance[row])
                away_from[v][index] = nearest[row]
                if view.settings.strategy == "away":
                    share = distance / targets[row].margin
                    progress[index] = min(progress.get(index, share), share)
                seen = history[v][index]
                ended = None
                if confirmed[row]:
                    ended = "target-reached" if view.settings.strategy == "away" else "loss-zero"
                elif row in short and not retried[row]:
                    # Past the target here, short at another alignment: the face does not move this
                    # step, and the next one measures it there. Its progress is judged on that step
                    # only, as distances taken at alternating alignments would read as a stall.
                    retry[(v, index)] = short[row]
                    advanced.add(index)
                    continue
                else:
                    if (
                        measured[row] is not None
                        and judged_at.setdefault((v, index), measured[row]) != measured[row]
                    ):
                        # The plain view moved to the other alignment, where the face lies nearer or
                        # farther all along: progress is judged afresh there.
                        seen.clear()
                        judged_at[(v, index)] = measured[row]
                    if _stalled_over(
                        view.model,
                        seen,
                        distance,
                        STALL_WINDOW,
                        view.settings.min_progress * lead.step / PAPER_STEP,
                    ):
                        ended = "slow-progress"
                if ended is not None:
                    objective[v, index] += 1
                    history[v][index] = []
                    if objective[v, index] == len(plans[v][index]):
                        view_reasons[v][index] = ended
                    else:
                        advanced.add(index)
                    continue
                seen.append(distance)
                if losses[row] <= 0 or result.loss[row] <= 0:
                    # A view past the target that a plain view does not confirm (again, on the alignment
                    # that fell short before): no gradient from it, the next step cuts the chip at the
                    # alignment that falls short now. Or, with references, the graph's loss (against the
                    # nearest of the previous step, which the face has now passed) is zero and so is its
                    # gradient: the next step measures against the new nearest.
                    if row in short:
                        retry[(v, index)] = short[row]
                    advanced.add(index)
                    continue
                if v in dropped.get(index, ()):
                    continue
                gradient = operators[row].adjoint(chip_blur(result.grad[row], blurs[row]))
                largest = max(float(gradient.max()), -float(gradient.min()))  # max |gradient|, NaN if any is
                if largest > 0 and np.isfinite(largest):
                    gradient /= largest
                    if index in direction:
                        direction[index] += gradient
                    else:
                        direction[index] = gradient

        for index in active:
            face = faces[index]
            if all(reasons[index] is not None for reasons in view_reasons):
                face_reasons[index] = "done"
                continue
            if steps[index] >= lead.max_steps:
                face_reasons[index] = "max-steps"
                continue
            if index not in direction:
                if index not in advanced:
                    face_reasons[index] = "no-gradient"
                continue
            masked = direction[index]
            masked *= face.mask
            gradient = to_opponent(masked)
            if lead.smoothing > 0:
                gradient = cv2.GaussianBlur(gradient, (0, 0), lead.smoothing / face.canvas.scale)
            scale = float(np.abs(gradient, out=face.scratch).mean())
            if scale == 0 or not np.isfinite(scale):
                face_reasons[index] = "no-gradient"
                continue
            gradient /= scale
            if lead.momentum:
                face.momentum *= lead.momentum
                face.momentum += gradient
            else:
                # 0 x momentum + gradient, but for the sign of zeros (which no result depends on).
                face.momentum = gradient
            shaped = np.multiply(face.momentum, face.bound, out=face.scratch)
            # The step is scaled by a high percentile of the elements that can still move (those at their
            # bound in the step's direction cannot), so a few strong or saturated elements do not shrink
            # everyone else's step; no element moves by more than `step`. The percentile is estimated on
            # every PERCENTILE_STRIDE-th element: only those are told apart (all, if none of them can move).
            sampled = _movable_magnitudes(shaped, face, PERCENTILE_STRIDE)
            if not sampled.size:
                sampled = _movable_magnitudes(shaped, face, 1)
            if not sampled.size:
                face_reasons[index] = "budget-spent"
                continue
            scale = float(np.percentile(sampled, STEP_PERCENTILE))
            if scale == 0:
                face_reasons[index] = "budget-spent"
                continue
            step = lead.step * (FAST_STEP_FACTOR if progress.get(index, 1.0) < FAST_UNTIL else 1.0)
            move = shaped
            move /= scale
            np.clip(move, -1, 1, out=move)
            move *= step
            moved = face.opponent - move
            face.move_to(np.clip(moved, face.negative_bound, face.bound, out=moved))
            steps[index] += 1
            face.unchecked = True
            if steps[index] % BOUNDS_CHECK_EVERY == 0:
                face_reasons[index] = face.check_bounds()

    for index, face in enumerate(faces):
        # A face that ended between two checks: its last steps are checked now.
        if face.unchecked and (broken := face.check_bounds()) is not None:
            face_reasons[index] = broken
            for reasons in view_reasons:
                reasons[index] = None

    images = [face.cloaked for face in faces]
    distances = [_placed_distances(view, placements[v], images, positives[v]) for v, view in enumerate(views)]
    return [
        CanvasCloak(
            face.delta,
            face.opponent,
            int(steps[i]),
            face.dssim(),
            {view.model.name: view_reasons[v][i] or face_reasons[i] for v, view in enumerate(views)},
            {view.model.name: float(distances[v][i]) for v, view in enumerate(views)},
        )
        for i, face in enumerate(faces)
    ]
