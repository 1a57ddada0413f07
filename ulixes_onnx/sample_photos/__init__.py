"""The real photos shipped with the package (sources and licences in SOURCES.md next to them): the
astronaut Eileen Collins (NASA, public domain) and a cameraman (Lav Varshney, CC0).

They sit below every other layer because both ends use them: model conversion (zoo/conversion.py)
checks a converted network on the astronaut's face, and photos/samples.py hands them to `models check`,
the demo and the benchmarks.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
from PIL import Image


def read(name: str) -> np.ndarray:
    """The pixels of one shipped photo, e.g. "astronaut.png", as uint8 (grayscale [H, W], RGB [H, W, 3])."""
    with resources.files(__package__).joinpath(name).open("rb") as file:
        return np.array(Image.open(file))
