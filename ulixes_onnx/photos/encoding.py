"""Writing a cloaked photo back faithfully.

`write_photo` writes a cloaked RGB array, or the cloak's delta, in the photo's own format, size, bit
depth, colour profile and (for JPEG) quantisation tables and chroma subsampling, as decoding.py read
them; pixels the cloak did not change are written from the original samples, so lossless formats keep
them bit-identical. A photo with an EXIF orientation (phones) is written in its stored layout with the
same orientation tag, the upright cloak mapped back onto it, so a JPEG's blocks stay where they were
and only the faces change. Pillow encodes, except 16-bit PNGs, which neither Pillow nor OpenCV can
write (`_encode_png16`).

Metadata policy: without `keep_exif`, the EXIF keeps only what shows the photo as before
(`_EXIF_DISPLAY_TAGS`, `_EXIF_IFD_DISPLAY_TAGS`), and XMP (which can carry names and places and cannot
be edited selectively), PNG text chunks and TIFF text tags are removed; the ICC profile and DPI are
kept. With `keep_exif` all of these are copied, except that a TIFF can keep only its IFD0 text tags.
The EXIF thumbnail, a copy of the uncloaked photo, is never written, and Pillow's BMP writer can hold
no metadata or alpha.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import ExifTags, Image, PngImagePlugin

from ulixes_onnx.atomic import ProtectedFileError, same_file, write_atomically
from ulixes_onnx.errors import ImageError
from ulixes_onnx.photos.decoding import os_reason
from ulixes_onnx.photos.orientation import stored_rectangle, to_stored
from ulixes_onnx.photos.photo import SIXTEEN_BIT_SCALE, Photo, PhotoMetadata, float_rgb

if TYPE_CHECKING:
    from ulixes_onnx.faces.pasteback import PhotoDelta

LOSSY_WEBP_QUALITY = 90

_EXIF_IFD_TAG = ExifTags.IFD.Exif

# The EXIF written without `keep_exif`: only what a viewer needs to show the photo as before (which
# way up, its colour space, its print size). An allow-list, because the tags that name a person or
# place are many and vendors add more: captions, comments, artist, copyright, owner and serial
# numbers, unique ids, dates, camera and lens, GPS, maker notes.
_EXIF_DISPLAY_TAGS = (
    ExifTags.Base.Orientation,
    ExifTags.Base.XResolution,
    ExifTags.Base.YResolution,
    ExifTags.Base.ResolutionUnit,
    ExifTags.Base.YCbCrPositioning,
)
_EXIF_IFD_DISPLAY_TAGS = (ExifTags.Base.ColorSpace, ExifTags.Base.Gamma)

_LOSSLESS_TIFF_COMPRESSIONS = ("raw", "tiff_lzw", "tiff_adobe_deflate", "packbits")

# A region's round trip: its float32 [h, w, 3] pixels in 0..255 units and the photo column and row of
# its top left corner -> what the saved file decodes them to.
RegionRoundTrip = Callable[[np.ndarray, int, int], np.ndarray]
# The largest JPEG block group (a minimum coded unit of 4:2:0 subsampling), in pixels: a region grown
# to multiples of it is encoded in the blocks the whole image is.
_JPEG_MCU = 16


def write_photo(
    photo: Photo,
    pixels: np.ndarray | PhotoDelta,
    dest: str | os.PathLike[str],
    *,
    quality: int | None = None,
    keep_exif: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a copy of `photo` with new pixels at `dest`; return `dest`.

    `pixels` is the whole new image (float HxWx3, 0..255 units) or a `PhotoDelta` to add to the
    photo, which costs time and memory only where it changes the photo; both are upright, like
    `Photo.rgb`. JPEGs reuse the source's
    quantisation tables unless `quality` is given. Unchanged pixels are written from the original
    samples. The file appears atomically and never replaces the source photo, nor an existing file
    unless `overwrite`.
    """
    destination = Path(dest)
    _check_destination(photo, destination, overwrite)  # before the work of encoding
    encoded = encode_photo(photo, pixels, quality=quality, keep_exif=keep_exif)
    return write_encoded(photo, encoded, destination, overwrite=overwrite)


def write_encoded(
    photo: Photo, encoded: bytes, dest: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write bytes from `encode_photo(photo, ...)` at `dest` as `write_photo` would; return `dest`."""
    destination = Path(dest)
    _check_destination(photo, destination, overwrite)
    _write_atomically(encoded, destination, overwrite=overwrite, mode=_permissions_of(photo.source))
    return destination


def encode_photo(
    photo: Photo,
    pixels: np.ndarray | PhotoDelta,
    *,
    quality: int | None = None,
    keep_exif: bool = False,
) -> bytes:
    """The bytes `write_photo` would write: decoding them shows what a recogniser will see."""
    if isinstance(pixels, np.ndarray):
        samples = to_stored(_samples_from_rgb(photo, pixels), photo.metadata.source_orientation)
    else:
        samples = _stored_samples_with_delta(photo, pixels)
    return _encode(photo, np.ascontiguousarray(samples), quality=quality, keep_exif=keep_exif)


def jpeg_region_round_trip(photo: Photo, quality: int | None = None) -> RegionRoundTrip | None:
    """What the saved copy of `photo` will decode a region of cloaked pixels to, or None unless it is
    saved as an upright 8-bit colour JPEG (`write_photo` with the same `quality`).

    The returned function takes float32 [h, w, 3] pixels in 0..255 units for the photo's rows y0.. and
    columns x0.. and returns them rounded, JPEG-encoded with the photo's tables and chroma subsampling
    and decoded. Only the blocks around the region are encoded, taken from the photo on the block
    grid of the whole image, so they decode as the same blocks of the whole saved file would (up to
    the chroma upsampling of the region's outermost pixel): milliseconds where the photo takes seconds.
    """
    if (
        photo.format != "JPEG"
        or photo.is_gray
        or photo.bit_depth != 8
        or photo.alpha is not None
        or photo.metadata.source_orientation != 1
    ):
        return None
    options = _jpeg_options(photo.metadata, quality)
    options = {key: options[key] for key in ("qtables", "quality", "subsampling") if key in options}
    pixels = photo.rgb8

    def round_trip(region: np.ndarray, x0: int, y0: int) -> np.ndarray:
        height, width = region.shape[:2]
        left, top = x0 - x0 % _JPEG_MCU, y0 - y0 % _JPEG_MCU
        right = min(-(-(x0 + width) // _JPEG_MCU) * _JPEG_MCU, photo.width)
        bottom = min(-(-(y0 + height) // _JPEG_MCU) * _JPEG_MCU, photo.height)
        blocks = np.array(pixels[top:bottom, left:right])
        inside = (slice(y0 - top, y0 - top + height), slice(x0 - left, x0 - left + width))
        blocks[inside] = np.clip(np.rint(region), 0, 255)
        buffer = io.BytesIO()
        Image.fromarray(blocks).save(buffer, format="JPEG", **options)
        with Image.open(buffer) as decoded:
            return np.asarray(decoded.convert("RGB"), np.float32)[inside]

    return round_trip


def output_path(
    input_path: str | os.PathLike[str],
    *,
    output_dir: str | os.PathLike[str] | None = None,
    suffix: str = "_cloaked",
) -> Path:
    """`<stem><suffix><ext>` next to the input or in `output_dir`; never the input itself."""
    source = Path(input_path)
    directory = source.parent if output_dir is None else Path(output_dir)
    check_suffix(suffix)
    candidate = directory / f"{source.stem}{suffix}{source.suffix}"
    if same_file(candidate, source):
        raise ImageError(
            f"{source}: the output path would be the input itself; use a non-empty suffix "
            "or another output directory"
        )
    return candidate


def check_suffix(suffix: str) -> str:
    """`suffix` if it keeps an output name in its folder (no separator, no NUL), else `ImageError`."""
    separators = {"/", "\0", os.sep, os.altsep or "/"}
    if any(separator in suffix for separator in separators):
        raise ImageError(f"the suffix {suffix!r} contains a path separator; it may only add to a file's name")
    return suffix


def _check_destination(photo: Photo, destination: Path, overwrite: bool) -> None:
    if same_file(destination, photo.source):
        raise ImageError(f"{destination}: refusing to write over the input photo; choose another path")
    if not destination.parent.is_dir():
        raise ImageError(f"{destination.parent}: output folder does not exist; create it first")
    if destination.exists() and not overwrite:
        raise ImageError(f"{destination}: already exists; remove it or use --overwrite")


def _samples_from_rgb(photo: Photo, rgb: np.ndarray) -> np.ndarray:
    if rgb.shape != (photo.height, photo.width, 3):
        raise ValueError(f"rgb has shape {rgb.shape}, expected {(photo.height, photo.width, 3)}")
    return _requantised(photo, rgb, photo.rgb, photo.samples)


def _stored_samples_with_delta(photo: Photo, delta: PhotoDelta) -> np.ndarray:
    """The photo's samples in its stored layout with the (upright) delta added."""
    if (delta.height, delta.width) != (photo.height, photo.width):
        raise ValueError(
            f"the delta is for a {delta.width}x{delta.height} photo, not {photo.width}x{photo.height}"
        )
    orientation = photo.metadata.source_orientation
    original_samples = to_stored(photo.samples, orientation)
    samples = original_samples.copy()
    for patch in delta.patches:
        x0, y0, x1, y1 = stored_rectangle(
            (patch.x0, patch.y0, patch.x1, patch.y1), (photo.height, photo.width), orientation
        )
        region = (slice(y0, y1), slice(x0, x1))
        original = float_rgb(original_samples[region], photo.bit_depth)
        changed = np.clip(original + to_stored(patch.delta, orientation), 0, 255)
        samples[region] = _requantised(photo, changed, original, original_samples[region])
    return samples


def _requantised(
    photo: Photo, rgb: np.ndarray, original_rgb: np.ndarray, original_samples: np.ndarray
) -> np.ndarray:
    """Samples in the photo's layout and bit depth for new `rgb` values of (part of) the photo."""
    if not np.all(np.isfinite(rgb)):
        raise ValueError("rgb contains NaN or infinite values")
    # Unchanged pixels are copied rather than recomputed, so they stay bit-identical by construction.
    unchanged = np.all(rgb == original_rgb, axis=2)
    # float32 holds every 16-bit sample exactly and keeps the arithmetic on a 12 MP photo fast.
    values = np.array(rgb, dtype=np.float32)  # a copy: the caller's array is not ours to round
    if photo.is_gray:
        # ITU-R BT.601 luma, the weights Pillow uses for RGB -> L.
        values = values @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    else:
        unchanged = unchanged[..., None]
    if photo.bit_depth == 16:
        values = values * np.float32(SIXTEEN_BIT_SCALE)
    np.rint(values, out=values)
    np.clip(values, 0, 2**photo.bit_depth - 1, out=values)
    return np.where(unchanged, original_samples, values.astype(original_samples.dtype))


def _encode(photo: Photo, samples: np.ndarray, *, quality: int | None, keep_exif: bool) -> bytes:
    """Encode `samples`, in the layout the source file stores, with the metadata `keep_exif` allows."""
    metadata = photo.metadata
    exif = _output_exif(metadata.exif, keep_exif)
    xmp = metadata.xmp if keep_exif else None
    png_text = metadata.png_text if keep_exif else {}
    alpha = photo.alpha
    if alpha is not None:
        alpha = np.ascontiguousarray(to_stored(alpha, metadata.source_orientation))
    if photo.format == "PNG" and photo.bit_depth == 16:
        return _encode_png16(samples, alpha, metadata, exif=exif, xmp=xmp, text=png_text)
    image = _pillow_image(samples, alpha if photo.format != "BMP" else None)
    options: dict[str, object] = {}
    if metadata.dpi and photo.format in ("JPEG", "PNG", "TIFF", "BMP"):
        options["dpi"] = metadata.dpi
    if metadata.icc_profile and photo.format != "BMP":
        options["icc_profile"] = metadata.icc_profile
    if exif and photo.format in ("JPEG", "PNG", "WEBP"):
        options["exif"] = exif
    if xmp and photo.format in ("JPEG", "WEBP"):
        options["xmp"] = xmp
    if photo.format == "JPEG":
        options.update(_jpeg_options(metadata, quality))
    elif photo.format == "PNG":
        options["pnginfo"] = _png_info(png_text, xmp)
    elif photo.format == "WEBP":
        options.update(_webp_options(metadata, quality))
    elif photo.format == "TIFF":
        options.update(_tiff_options(metadata, keep_exif))
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=photo.format, **options)
    except (OSError, ValueError) as error:
        raise ImageError(f"{photo.source}: cannot encode the cloaked {photo.format} ({error})") from None
    return buffer.getvalue()


def _output_exif(exif: bytes | None, keep_exif: bool) -> bytes | None:
    if exif is None or keep_exif:
        return exif
    source = Image.Exif()
    source.load(exif)
    details = source.get_ifd(_EXIF_IFD_TAG)
    # Built afresh rather than pruned: Pillow writes back every sub-IFD it has loaded.
    kept = Image.Exif()
    kept.update({tag: source[tag] for tag in _EXIF_DISPLAY_TAGS if tag in source})
    kept_details = {tag: details[tag] for tag in _EXIF_IFD_DISPLAY_TAGS if tag in details}
    if kept_details:
        kept.get_ifd(_EXIF_IFD_TAG).update(kept_details)
    return kept.tobytes() if len(kept) or kept_details else None


def _pillow_image(samples: np.ndarray, alpha: np.ndarray | None) -> Image.Image:
    if alpha is None:
        return Image.fromarray(samples)
    channels = samples[..., None] if samples.ndim == 2 else samples
    return Image.fromarray(np.concatenate([channels, alpha[..., None]], axis=2))


def _jpeg_options(metadata: PhotoMetadata, quality: int | None) -> dict[str, object]:
    options: dict[str, object] = {"optimize": True, "progressive": metadata.jpeg_progressive}
    if quality is None and metadata.jpeg_qtables:
        # The source's own tables reproduce its quality exactly, even for encoders that are not
        # IJG-scaled.
        options["qtables"] = [list(table) for table in metadata.jpeg_qtables]
    else:
        options["quality"] = metadata.jpeg_quality if quality is None else quality
    if metadata.jpeg_subsampling:
        options["subsampling"] = metadata.jpeg_subsampling
    return options


def _png_info(text: dict[str, str], xmp: bytes | None) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_itxt(key, value)
    if xmp:
        info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8", errors="replace"))
    return info


def _webp_options(metadata: PhotoMetadata, quality: int | None) -> dict[str, object]:
    if metadata.webp_lossless:
        # `exact` keeps the colour of fully transparent pixels, which libwebp would otherwise alter.
        return {"lossless": True, "exact": True}
    return {"quality": LOSSY_WEBP_QUALITY if quality is None else quality}


def _tiff_options(metadata: PhotoMetadata, keep_exif: bool) -> dict[str, object]:
    compression = metadata.tiff_compression
    return {
        "compression": compression if compression in _LOSSLESS_TIFF_COMPRESSIONS else "tiff_adobe_deflate",
        "tiffinfo": dict(metadata.tiff_tags) if keep_exif else {},
    }


def _encode_png16(
    samples: np.ndarray,
    alpha: np.ndarray | None,
    metadata: PhotoMetadata,
    *,
    exif: bytes | None,
    xmp: bytes | None,
    text: dict[str, str],
) -> bytes:
    """A 16-bit PNG with the given metadata chunks (Pillow and OpenCV cannot write this)."""
    channels = [samples] if samples.ndim == 2 else list(np.moveaxis(samples, 2, 0))
    if alpha is not None:
        channels.append(alpha)
    pixels = np.stack(channels, axis=2)
    height, width, channel_count = pixels.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channel_count]
    rows = pixels.astype(">u2").view(np.uint8).reshape(height, width * channel_count * 2)
    # Filter "Up" (type 2) on every row: a vectorised byte difference that compresses photos well.
    filtered = rows.copy()
    filtered[1:] -= rows[:-1]
    scanlines = np.concatenate([np.full((height, 1), 2, np.uint8), filtered], axis=1)
    chunks = [_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))]
    if metadata.icc_profile:
        chunks.append(_png_chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(metadata.icc_profile)))
    if metadata.dpi:
        pixels_per_metre = (round(value / 0.0254) for value in metadata.dpi)
        chunks.append(_png_chunk(b"pHYs", struct.pack(">IIB", *pixels_per_metre, 1)))
    if exif:
        chunks.append(_png_chunk(b"eXIf", exif.removeprefix(b"Exif\0\0")))
    text = dict(text)
    if xmp:
        text["XML:com.adobe.xmp"] = xmp.decode("utf-8", errors="replace")
    for key, value in text.items():
        chunks.append(_png_chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode()))
    chunks.append(_png_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6)))
    chunks.append(_png_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _png_chunk(chunk_type: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(chunk_type + payload)
    return struct.pack(">I", len(payload)) + chunk_type + payload + struct.pack(">I", crc)


def _permissions_of(source: Path) -> int:
    # The cloaked copy is as private as the original.
    try:
        return stat.S_IMODE(source.stat().st_mode)
    except OSError:
        return 0o644


def _write_atomically(data: bytes, destination: Path, *, overwrite: bool, mode: int) -> None:
    try:
        write_atomically(data, destination, overwrite=overwrite, mode=mode)
    except ProtectedFileError:
        raise ImageError(f"{destination}: is one of the input photos; refusing to write over it") from None
    except FileExistsError:
        raise ImageError(f"{destination}: already exists; remove it or use --overwrite") from None
    except OSError as error:
        if isinstance(error, PermissionError) or error.errno == errno.EROFS:
            raise ImageError(
                f"{destination.parent}: output folder is not writable ({os_reason(error)}); "
                "choose another folder"
            ) from None
        raise ImageError(f"{destination}: cannot write ({os_reason(error)})") from None
