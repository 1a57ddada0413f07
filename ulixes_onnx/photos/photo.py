"""A decoded photo: its upright samples, viewed as 8-bit RGB for detection and cloaking, plus the
alpha channel and the metadata a faithful copy needs. decoding.py makes a `Photo` from a file and
encoding.py writes one back with new pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_JPEG_QUALITY = 95

# Multiplying 8-bit units by 257 maps 0..255 exactly onto 0..65535.
SIXTEEN_BIT_SCALE = 257.0


@dataclass(frozen=True)
class PhotoMetadata:
    """What a faithful copy of the photo needs besides its pixels.

    `exif` is Pillow's serialised EXIF as read (an orientation outside 1..8 becomes 1, as it was
    read); `png_text` and `tiff_tags` are the text metadata written only with `keep_exif`;
    `jpeg_quality` is estimated from the quantisation tables and is `DEFAULT_JPEG_QUALITY`
    for other formats.
    """

    icc_profile: bytes | None = None
    exif: bytes | None = None
    xmp: bytes | None = None
    dpi: tuple[float, float] | None = None
    png_text: dict[str, str] = field(default_factory=dict)
    tiff_tags: dict[int, str] = field(default_factory=dict)
    tiff_compression: str | None = None
    webp_lossless: bool = False
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    jpeg_subsampling: str | None = None
    jpeg_qtables: tuple[tuple[int, ...], ...] | None = None
    jpeg_progressive: bool = False
    source_orientation: int = 1


@dataclass(frozen=True, eq=False)
class Photo:
    """An upright decoded photo.

    `samples` holds the original colour samples (uint8 or uint16; HxW for gray, HxWx3 for colour)
    and `alpha` the alpha channel in the same dtype, so unchanged pixels can be written back
    exactly; both are read-only. Detection and cloaking use `rgb8`; `rgb` has the exact values.
    """

    samples: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    format: str
    source: Path
    metadata: PhotoMetadata
    notes: tuple[str, ...] = ()

    @property
    def is_gray(self) -> bool:
        return self.samples.ndim == 2

    @property
    def width(self) -> int:
        return self.samples.shape[1]

    @property
    def height(self) -> int:
        return self.samples.shape[0]

    @property
    def rgb(self) -> np.ndarray:
        """float32 HxWx3 in 0..255 units, gray replicated: a new array per call (150 MB at 12 MP)."""
        return float_rgb(self.samples, self.bit_depth)

    @property
    def rgb8(self) -> np.ndarray:
        """uint8 HxWx3, gray replicated and 16-bit samples rounded: the samples themselves for 8-bit
        colour photos (read-only), a new array otherwise."""
        samples = self.samples
        if self.bit_depth == 16:
            samples = np.rint(samples / SIXTEEN_BIT_SCALE).astype(np.uint8)
        if samples.ndim == 2:
            return np.repeat(samples[:, :, None], 3, axis=2)
        return samples


def float_rgb(samples: np.ndarray, bit_depth: int) -> np.ndarray:
    """float32 HxWx3 in 0..255 units of integer samples of `bit_depth` bits, gray replicated."""
    rgb = samples.astype(np.float32)
    if bit_depth == 16:
        rgb /= SIXTEEN_BIT_SCALE
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    return rgb
