"""Option parsing shared by the commands: every cloaking option once, its default read from
`CloakSettings`, how far faces move under "Protection" and the algorithm's settings under "Advanced"."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated

import typer

from ulixes_onnx.atomic import same_file
from ulixes_onnx.cloaking.loop import STRATEGIES, CloakSettingsError
from ulixes_onnx.cloaking.settings import ENSEMBLES, LEVELS, CloakSettings
from ulixes_onnx.errors import UsageError

DEFAULTS = CloakSettings()
PROTECTION = "Protection"
ADVANCED = "Advanced: the cloaking algorithm"
DEFAULT_MODEL_LIST = ",".join(DEFAULTS.models)

Level = Annotated[
    str,
    typer.Option(
        metavar="|".join(LEVELS),
        help="How far each face must move, and so how visible the cloak is.",
        rich_help_panel=PROTECTION,
    ),
]
Target = Annotated[
    float | None,
    typer.Option(
        metavar="DISTANCE",
        help="Distance from the original to reach, the same for every model (default: each model's card).",
        rich_help_panel=PROTECTION,
    ),
]
Strategy = Annotated[
    str,
    typer.Option(
        metavar="NAME", help=f"Negative examples: {', '.join(STRATEGIES)}.", rich_help_panel=ADVANCED
    ),
]
Ensemble = Annotated[
    str,
    typer.Option(
        metavar="|".join(ENSEMBLES),
        help="Several models: the larger or the summed change, or one joint loop.",
        rich_help_panel=ADVANCED,
    ),
]
Pool = Annotated[
    Path | None,
    typer.Option(
        metavar="PATH",
        help="Other people's faces for pool strategies: a folder or a .npz pool.",
        rich_help_panel=ADVANCED,
    ),
]
References = Annotated[
    list[Path] | None,
    typer.Option(
        "--reference",
        metavar="PHOTO",
        help="Another photo of yourself (repeat, or a folder): faces are also cloaked away from it, "
        "and measured against it.",
        rich_help_panel=PROTECTION,
    ),
]
Margin = Annotated[
    float | None,
    typer.Option(
        metavar="DISTANCE", help="Triplet margin (default: each model's card).", rich_help_panel=ADVANCED
    ),
]
MinProgress = Annotated[
    float | None,
    typer.Option(
        metavar="DISTANCE",
        help="Stop when five steps move the face less than five times this (the paper's t; default: card).",
        rich_help_panel=ADVANCED,
    ),
]
Budget = Annotated[
    float | None,
    typer.Option(
        metavar="LEVELS",
        help="Per-pixel budget a face starts with, grey levels of lightness at the median contrast.",
        rich_help_panel=ADVANCED,
    ),
]
Chroma = Annotated[
    float,
    typer.Option(
        metavar="SHARE", help="Colour budget as a share of the lightness budget.", rich_help_panel=ADVANCED
    ),
]
Diversity = Annotated[
    float,
    typer.Option(
        metavar="SHARE",
        help="Input diversity: each step sees the face rescaled, shifted and rotated by up to this share.",
        rich_help_panel=ADVANCED,
    ),
]
Momentum = Annotated[
    float, typer.Option(metavar="FACTOR", help="Momentum of the steps (0: none).", rich_help_panel=ADVANCED)
]
FeatureWeight = Annotated[
    float,
    typer.Option(
        metavar="WEIGHT",
        help="Also push each model's mid-level features away, with this weight (0: none).",
        rich_help_panel=ADVANCED,
    ),
]
ActivationNoise = Annotated[
    float,
    typer.Option(
        metavar="SPREAD",
        help="Each step scales every activation channel of the models by a factor in 1 +- SPREAD (0: none).",
        rich_help_panel=ADVANCED,
    ),
]
SkipDecay = Annotated[
    float,
    typer.Option(
        metavar="FACTOR",
        help="The models' gradients through residual branches scaled by FACTOR on the way back "
        "(1: true; ignored by models without residual connections).",
        rich_help_panel=ADVANCED,
    ),
]
BackwardLinearity = Annotated[
    float,
    typer.Option(
        metavar="SHARE",
        help="The late Relu-family activation layers pass this share of the gradient back unchanged "
        "(0: true gradient; ignored by models without them).",
        rich_help_panel=ADVANCED,
    ),
]
ModelDropout = Annotated[
    float,
    typer.Option(
        metavar="CHANCE",
        help="Ensembles: the chance that a step leaves out each model's gradient (0: none).",
        rich_help_panel=ADVANCED,
    ),
]
Polish = Annotated[
    int,
    typer.Option(
        metavar="N",
        help="Steps moving each large face's cloak to where it shows least, at the same distance (0: none).",
        rich_help_panel=PROTECTION,
    ),
]
Smoothing = Annotated[
    float,
    typer.Option(
        metavar="PIXELS",
        help="Gaussian on each step's gradient, in photo pixels (0: none).",
        rich_help_panel=ADVANCED,
    ),
]
CanvasCap = Annotated[
    float,
    typer.Option(
        metavar="RATIO",
        help="Canvas pixels per pixel of the finest model chip on large faces.",
        rich_help_panel=ADVANCED,
    ),
]
Step = Annotated[
    float, typer.Option(metavar="SIZE", help="Step size in [-1, 1] pixel units.", rich_help_panel=ADVANCED)
]
MaxDssim = Annotated[
    float,
    typer.Option(
        metavar="DSSIM", help="Stop before a face canvas's DSSIM exceeds this.", rich_help_panel=ADVANCED
    ),
]
MinQuality = Annotated[
    float,
    typer.Option(
        metavar="SCORE",
        help="Stop cloaking a face before its SSIMULACRA2 would fall below this (70: high quality, "
        "90: visually lossless; 0: no bound); a face stopped short is reported not protected.",
        rich_help_panel=PROTECTION,
    ),
]
MaxSteps = Annotated[
    int, typer.Option(metavar="N", help="Most steps per face and round.", rich_help_panel=ADVANCED)
]
MaxRounds = Annotated[
    int, typer.Option(metavar="N", help="Most verify-and-continue rounds.", rich_help_panel=ADVANCED)
]
Seed = Annotated[
    int, typer.Option(metavar="N", help="Random seed (results are deterministic).", rich_help_panel=ADVANCED)
]
MinFaceSize = Annotated[
    float,
    typer.Option(metavar="PIXELS", help="Smallest face searched for, in pixels.", rich_help_panel=ADVANCED),
]


def choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    """`value` if it is one of `allowed`, else a usage error naming the option."""
    if value not in allowed:
        raise typer.BadParameter(f"{value!r} is not one of: {', '.join(allowed)}", param_hint=option)
    return value


def model_names(value: str, option: str) -> tuple[str, ...]:
    """The comma-separated model names of an option, in order, each once."""
    names = tuple(dict.fromkeys(name.strip() for name in value.split(",") if name.strip()))
    if not names:
        raise typer.BadParameter("give at least one model name", param_hint=option)
    return names


# Every CloakSettings field but `models` as a command-line option, its default the settings' own.
SETTING_OPTIONS = {
    "level": Level,
    "target": Target,
    "min_quality": MinQuality,
    "polish": Polish,
    "strategy": Strategy,
    "ensemble": Ensemble,
    "margin": Margin,
    "min_progress": MinProgress,
    "budget": Budget,
    "chroma": Chroma,
    "diversity": Diversity,
    "momentum": Momentum,
    "smoothing": Smoothing,
    "feature_weight": FeatureWeight,
    "model_dropout": ModelDropout,
    "activation_noise": ActivationNoise,
    "skip_decay": SkipDecay,
    "backward_linearity": BackwardLinearity,
    "canvas_cap": CanvasCap,
    "step": Step,
    "max_dssim": MaxDssim,
    "max_steps": MaxSteps,
    "max_rounds": MaxRounds,
    "seed": Seed,
    "min_face_size": MinFaceSize,
}


def cloak_settings(models: str, models_option: str = "--models", **values: object) -> CloakSettings:
    """The settings the cloaking options of a command describe; a bad combination is a usage error."""
    choice(str(values["level"]), tuple(LEVELS), "--level")
    choice(str(values["strategy"]), STRATEGIES, "--strategy")
    choice(str(values["ensemble"]), ENSEMBLES, "--ensemble")
    try:
        return CloakSettings(models=model_names(models, models_option), **values)  # type: ignore[arg-type]
    except CloakSettingsError as error:
        raise typer.BadParameter(str(error)) from None


def _help_panel(parameter: inspect.Parameter) -> str | None:
    for info in getattr(parameter.annotation, "__metadata__", ()):
        return getattr(info, "rich_help_panel", None)
    return None


def with_cloak_settings(
    models_option: str, models_help: str
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command every cloaking option (after its own) and call it with them as one
    `settings: CloakSettings` argument; `models_option` names the option that lists the models."""
    models_name = models_option.removeprefix("--").replace("-", "_")

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        own = [
            p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "settings"
        ]
        # The command's own Protection and Advanced options (e.g. --reference, --pool) go last, after
        # the shared ones of their panels, and the panels come in the order: the command's options,
        # Protection, Advanced.
        own_advanced = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in own
            if _help_panel(p) in (PROTECTION, ADVANCED)
        ]
        own = [p for p in own if _help_panel(p) not in (PROTECTION, ADVANCED)]
        added = [
            inspect.Parameter(
                models_name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[
                    str,
                    typer.Option(
                        models_option, metavar="NAMES", help=models_help, rich_help_panel=PROTECTION
                    ),
                ],
                default=DEFAULT_MODEL_LIST,
            ),
            *(
                inspect.Parameter(
                    name, inspect.Parameter.KEYWORD_ONLY, annotation=option, default=getattr(DEFAULTS, name)
                )
                for name, option in SETTING_OPTIONS.items()
            ),
        ]

        @functools.wraps(command)
        def run(*args: object, **kwargs: object) -> None:
            # Called directly (e.g. `ctx.invoke` from another command), options left out keep defaults.
            values = {name: kwargs.pop(name, getattr(DEFAULTS, name)) for name in SETTING_OPTIONS}
            settings = cloak_settings(
                str(kwargs.pop(models_name, DEFAULT_MODEL_LIST)), models_option, **values
            )
            command(*args, settings=settings, **kwargs)

        run.__signature__ = inspect.Signature([*own, *added, *own_advanced])  # type: ignore[attr-defined]
        return run

    return decorate


def check_new_file(option: str, path: Path, inputs: Iterable[Path], overwrite: bool, what: str) -> None:
    """Refuse, before any work, a file `option` names that could not be written or would replace an
    input; `what` names the file in the messages ("the report", "the pool")."""
    clash = next((entry for entry in inputs if same_file(path, entry)), None)
    if clash is not None:
        raise UsageError(f"{option} {path} is the input {clash}; {what} needs a path of its own")
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; give the path of a file")
    if not path.parent.is_dir():
        raise UsageError(f"{option} {path}: the folder {path.parent} does not exist; create it first")
    if os.path.lexists(path) and not overwrite:
        raise UsageError(f"{option} {path} exists already; remove it or use --overwrite")
    if not os.access(path.parent, os.W_OK):
        raise UsageError(f"{option} {path}: the folder {path.parent} is not writable")
