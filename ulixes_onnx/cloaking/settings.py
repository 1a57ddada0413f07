"""Everything that decides a cloak, in one object: `Cloaker`, `eval`, the server and both commands take it
whole, the commands read their defaults from it, and `eval`'s cache is keyed by it.

Distances (`margin`, `target`, `min_progress`) left as None take each model's card defaults
(`[cloak]` in models/*.toml). The `level` scales how far a face must move: each model's target and
the distance at which the saved copy counts as protected. How far a face moves, not the per-pixel
budget, decides how visible its cloak is (measured: benchmarks/results/visibility-2026-12-05-*.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from ulixes_onnx.cards import ModelCard
from ulixes_onnx.cloaking.loop import STRATEGIES, CloakSettingsError, LoopSettings

ENSEMBLES = ("max", "sum", "joint")
# Two networks of different architecture, training data and loss, cloaked jointly at the `low` level:
# a cloak made with dlib-resnet alone (at `mid`) leaves the recognisers it never saw matching 85-90 %
# of the person's pairs; this one 74 %, at about the same visibility (faces 3-4 points lower on
# average; benchmarks/results/default-ensemble-2026-12-06.md). Both build from PyPI packages without
# the export toolchain.
DEFAULT_MODELS = ("dlib-resnet", "sface")
# How far each level moves a face, relative to the cards' targets and protection distances.
LEVELS = {"low": 0.85, "mid": 1.0, "high": 1.15}
# The loop's own defaults: the settings share them, but for input diversity, momentum and the perceptual
# polish (off in the loop alone, so that a bare loop is plain gradient ascent; on in the settings for
# the transfer, protection and visibility they measurably give: benchmarks/results/
# perceptual-polish-2026-12-06.md, momentum-with-polish-2026-12-07.md).
_LOOP = LoopSettings()
# The per-pixel budget (grey levels of lightness at the face's median contrast) a face starts with;
# the closed loop doubles it for a face whose loop stops short of its target.
DEFAULT_BUDGET = _LOOP.budget


@dataclass(frozen=True)
class CloakSettings:
    """How faces are cloaked (see the README's "What `cloak` does" for each setting's meaning)."""

    models: tuple[str, ...] = DEFAULT_MODELS
    ensemble: str = "joint"
    strategy: str = "away"
    level: str = "low"
    budget: float | None = None
    target: float | None = None
    margin: float | None = None
    min_progress: float | None = None
    step: float = _LOOP.step
    chroma: float = _LOOP.chroma
    diversity: float = 0.05
    momentum: float = 0.5
    smoothing: float = _LOOP.smoothing
    feature_weight: float = _LOOP.feature_weight
    model_dropout: float = _LOOP.model_dropout
    activation_noise: float = _LOOP.activation_noise
    skip_decay: float = _LOOP.skip_decay
    backward_linearity: float = _LOOP.backward_linearity
    polish: int = 40
    canvas_cap: float = 4.0
    max_dssim: float = _LOOP.max_dssim
    min_quality: float = _LOOP.min_quality
    max_steps: int = _LOOP.max_steps
    max_rounds: int = 3
    random_negatives: int = _LOOP.random_negatives
    seed: int = _LOOP.seed
    min_face_size: float = 20.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(dict.fromkeys(self.models)))
        if not self.models:
            raise CloakSettingsError("give at least one model to cloak with")
        for value, allowed, what in (
            (self.ensemble, ENSEMBLES, "ensemble"),
            (self.strategy, STRATEGIES, "strategy"),
            (self.level, tuple(LEVELS), "level"),
        ):
            if value not in allowed:
                raise CloakSettingsError(f"unknown {what} {value!r}; use one of: {', '.join(allowed)}")
        if self.max_rounds < 1:
            raise CloakSettingsError("max rounds must be at least 1")
        if self.canvas_cap < 1:
            raise CloakSettingsError(f"the canvas cap must be at least 1, not {self.canvas_cap}")
        # The loop's own checks, once, with every model-independent value.
        self.loop_settings(None)

    @property
    def label(self) -> str:
        """A short name for tables: the model, or `ensemble(model+model)`."""
        if len(self.models) == 1:
            return self.models[0]
        return f"{self.ensemble}({'+'.join(self.models)})"

    def loop_settings(self, card: ModelCard | None) -> LoopSettings:
        """The loop's settings for one model, its card's defaults filled in (None: the loop's own
        defaults, for checking the settings)."""
        defaults = _LOOP
        cloak = None if card is None else card.cloak
        return LoopSettings(
            strategy=self.strategy,
            step=self.step,
            margin=_first(self.margin, cloak and cloak.margin, defaults.margin),
            target=_first(
                self.target,
                cloak and cloak.away_target * LEVELS[self.level],
                defaults.target * LEVELS[self.level],
            ),
            min_progress=_first(self.min_progress, cloak and cloak.min_progress, defaults.min_progress),
            max_dssim=self.max_dssim,
            min_quality=self.min_quality,
            max_steps=self.max_steps,
            random_negatives=self.random_negatives,
            seed=self.seed,
            budget=DEFAULT_BUDGET if self.budget is None else self.budget,
            chroma=self.chroma,
            diversity=self.diversity,
            momentum=self.momentum,
            smoothing=self.smoothing,
            feature_weight=self.feature_weight,
            model_dropout=self.model_dropout,
            activation_noise=self.activation_noise,
            skip_decay=self.skip_decay,
            backward_linearity=self.backward_linearity,
            polish=self.polish,
        )


def protect_distance(settings: CloakSettings, card: ModelCard) -> float:
    """How far from the original a model must place the saved copy for it to count as protected."""
    return card.cloak.protect_distance * LEVELS[settings.level]


def overrides_from(assignments: list[str], *, fixed: tuple[str, ...] = ()) -> dict[str, object]:
    """`CloakSettings` fields from FIELD=VALUE strings (the benchmarks' `--set`), each value typed as
    the field's default: tuples split at commas, distances left as None read as numbers. A name that
    is no field, or one of `fixed` (set by its own option), is refused, and so are values the
    settings do not accept (checked with the other fields at their defaults)."""
    defaults = CloakSettings()
    fields: dict[str, object] = {}
    for assignment in assignments:
        name, _, value = assignment.partition("=")
        if name in fixed:
            raise CloakSettingsError(
                f"--set {assignment}: not a setting this command lets --set change (it has its own option)"
            )
        if name.startswith("_") or name not in CloakSettings.__dataclass_fields__:
            raise CloakSettingsError(f"--set {assignment}: not a setting this command lets --set change")
        default = getattr(defaults, name)
        try:
            if isinstance(default, tuple):
                fields[name] = tuple(value.split(","))
            elif default is None:
                fields[name] = float(value)
            else:
                fields[name] = type(default)(value)
        except ValueError:
            kind = "a whole number" if isinstance(default, int) else "a number"
            raise CloakSettingsError(f"--set {assignment}: {value!r} is not {kind}") from None
    try:
        CloakSettings(**fields)  # type: ignore[arg-type]
    except CloakSettingsError as error:
        raise CloakSettingsError(f"--set {' '.join(assignments)}: {error}") from None
    return fields


def _first(*values: float | None) -> float:
    return next(value for value in values if value is not None)
