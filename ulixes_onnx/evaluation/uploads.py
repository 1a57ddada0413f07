"""What happens to a photo after upload: re-encoding and downscaling by the sharing service.

Robustness is measured by applying these to the photos the attacker compares (both the clean and the
cloaked copy, so the clean baseline suffers the same loss) before faces are found and embedded.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from ulixes_onnx.photos.samples import rescaled

Transform = Callable[[np.ndarray], np.ndarray]


def _as_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def jpeg(quality: int) -> Transform:
    """Re-encode as a JPEG at `quality` (Pillow's default 4:2:0 chroma subsampling) and decode it."""

    def transform(rgb: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(_as_uint8(rgb)).save(buffer, format="JPEG", quality=quality)
        with Image.open(buffer) as decoded:
            return np.asarray(decoded.convert("RGB"))

    return transform


def downscale(factor: float) -> Transform:
    """Resize by `factor` with area averaging."""

    def transform(rgb: np.ndarray) -> np.ndarray:
        return rescaled(_as_uint8(rgb), factor)

    return transform


UPLOAD_TRANSFORMS: dict[str, Transform] = {
    "jpeg-q85": jpeg(85),
    "jpeg-q75": jpeg(75),
    "downscale-0.5": downscale(0.5),
}
