"""Decoding a photo file into a `Photo` (photo.py): the upright integer samples (EXIF orientation
applied), the alpha channel and the metadata encoding.py needs to write the photo back.

Pillow does the decoding and reads the metadata because OpenCV exposes none of what a faithful copy
needs: ICC profiles, EXIF and XMP, PNG text chunks, DPI, JPEG quantisation tables and chroma
subsampling. OpenCV decodes only the 16-bit colour PNGs, which Pillow would reduce to 8 bits.

Format policy (each conversion is also recorded in `Photo.notes` so the caller can tell the user):
- JPEG, PNG, WebP, TIFF and BMP are read, and written back, in their own format. A multi-picture JPEG
  (MPO, from cameras and phones) is treated as a JPEG of its primary picture.
- Animated or multi-frame files (WebP, APNG, multi-page TIFF) are refused: cloaking one frame and
  dropping the others would silently lose content. GIF is refused altogether: its 256-colour
  palette cannot hold a cloak.
- Palette images are processed as RGB(A) and bilevel ones as 8-bit gray: re-quantising would erase
  the cloak.
- CMYK JPEGs are converted to RGB and written as RGB JPEGs without the CMYK profile, which no longer
  applies to the data.
- 16-bit PNGs (gray, gray+alpha, RGB, RGBA) and 16-bit gray TIFFs stay 16-bit; 16-bit colour TIFFs
  become 8-bit (Pillow has no 48-bit mode).
- Pillow turns a TIFF upright as it loads it; being lossless, it is written upright without the
  orientation tag and no pixel value changes.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import stat
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import ExifTags, Image, JpegImagePlugin, UnidentifiedImageError

from ulixes_onnx.errors import ImageError
from ulixes_onnx.photos.orientation import is_valid_orientation, to_upright
from ulixes_onnx.photos.photo import DEFAULT_JPEG_QUALITY, Photo, PhotoMetadata

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP")
DEFAULT_MAX_PIXELS = 100_000_000
# Our own limit (`max_pixels`, checked right after the header is parsed) governs; Pillow's global one
# would refuse photos over 179 megapixels with advice no option of ours can follow.
Image.MAX_IMAGE_PIXELS = None

_ORIENTATION_TAG = ExifTags.Base.Orientation

# IFD0 text tags that describe a TIFF without pointing into its structure, kept with `keep_exif`;
# Pillow's libtiff writer fails on copied sub-IFD pointers (EXIF, GPS), so a TIFF can keep no more.
_TIFF_TEXT_TAGS = (
    ExifTags.Base.ImageDescription,
    ExifTags.Base.DocumentName,
    ExifTags.Base.PageName,
    ExifTags.Base.Make,
    ExifTags.Base.Model,
    ExifTags.Base.Software,
    ExifTags.Base.DateTime,
    ExifTags.Base.Artist,
    ExifTags.Base.HostComputer,
    ExifTags.Base.Copyright,
)
_TIFF_BITS_PER_SAMPLE = 258
# PNG text chunks that Pillow reads as the photo's EXIF (ImageMagick's hex copy) and XMP: they are
# written as the eXIf chunk and the XMP packet, filtered like those, and never copied as text.
_PNG_METADATA_TEXT_KEYS = re.compile(r"^(Raw profile type exif|XML:com\.adobe\.xmp)$")
_SUBSAMPLING_NAMES = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}
# Pillow modes we decode to one of the four we process (palette modes are handled separately).
_PROCESSING_MODES = {
    "L": "L",
    "LA": "LA",
    "La": "LA",
    "1": "L",
    "RGB": "RGB",
    "RGBA": "RGBA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "YCbCr": "RGB",
    "CMYK": "RGB",
}
_CONVERSION_NOTES = {
    "1": "bilevel image: processed and written as 8-bit gray",
    "CMYK": "CMYK image: converted to RGB and written as RGB without its CMYK profile",
}

# IJG reference quantisation tables (JPEG standard Annex K), natural order like Pillow's
# `quantization`.
_IJG_LUMINANCE = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
     14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
     18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
    dtype=np.int64,
)  # fmt: skip
_IJG_CHROMINANCE = np.array(
    [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
     24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99]
    + [99] * 32,
    dtype=np.int64,
)  # fmt: skip


def read_photo(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Photo:
    """Decode a photo, apply its EXIF orientation and keep what `write_photo` needs to copy it.

    Only a regular file is read (never a FIFO or a device, which could block or never end), and only
    after its header names a supported format and its size is plausible for `max_pixels`: memory stays
    bounded by the largest photo allowed. Raises `ImageError` for unreadable paths, unsupported,
    corrupt, animated or oversized files.
    """
    source = Path(path)
    return decode_photo(
        _read_file(source, max_bytes=max_file_bytes(max_pixels)), source, max_pixels=max_pixels
    )


def max_file_bytes(max_pixels: int) -> int:
    """The largest file read for a photo of at most `max_pixels`: uncompressed 16-bit RGBA (the
    largest sample layout we read), plus room for metadata."""
    return max_pixels * 8 + (64 << 20)


def decode_photo(data: bytes, source: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Photo:
    """Decode a photo's bytes (named `source` in messages) like `read_photo` does."""
    notes: list[str] = []
    with _library_warnings_as_notes(notes), _open_image(data, source, max_pixels) as image:
        image_format = _check_format(image, source, notes)
        with _decoding_errors(source, image_format):
            image.load()
        samples, alpha, bit_depth = _decode_samples(image, data, source, notes)
        with _decoding_errors(source, image_format):
            metadata = _read_metadata(image, data, image_format)
    if metadata.source_orientation != 1:
        samples = np.ascontiguousarray(to_upright(samples, metadata.source_orientation))
        if alpha is not None:
            alpha = np.ascontiguousarray(to_upright(alpha, metadata.source_orientation))
    if image_format == "BMP" and alpha is not None:
        notes.append("BMP alpha cannot be written back: the output is opaque")
    for array in (samples, alpha):
        if array is not None:
            array.flags.writeable = False
    return Photo(
        samples=samples,
        alpha=alpha,
        bit_depth=bit_depth,
        format=image_format,
        source=source,
        metadata=metadata,
        notes=tuple(notes),
    )


# The first bytes of each supported format (GIF only to refuse it with its own message).
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"II*\0", "TIFF"),
    (b"MM\0*", "TIFF"),
    (b"II+\0", "TIFF"),  # BigTIFF
    (b"MM\0+", "TIFF"),
    (b"BM", "BMP"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
)
_HEADER_BYTES = 16


def sniff_format(header: bytes) -> str | None:
    """The format whose signature `header` (the file's first bytes) starts with, if any."""
    if header[:4] == b"RIFF" and header[8:12] == b"WEBP":
        return "WEBP"
    return next((name for signature, name in _SIGNATURES if header.startswith(signature)), None)


def _read_file(source: Path, *, max_bytes: int) -> bytes:
    # Reading the bytes once and decoding from memory keeps the input closed and untouched from
    # here on. The checks come before the body is read: a huge or endless input costs nothing.
    try:
        # O_NONBLOCK: a FIFO swapped in after the check must not block the open.
        descriptor = os.open(source, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ImageError(f"{source}: no such file or folder; check the path") from None
    except PermissionError:
        raise ImageError(f"{source}: permission denied; make the file readable") from None
    except IsADirectoryError:
        raise ImageError(f"{source}: is a folder, not a photo; give the path of an image file") from None
    except OSError as error:
        raise ImageError(f"{source}: cannot open ({os_reason(error)}); check the path") from None
    status = os.fstat(descriptor)
    if stat.S_ISDIR(status.st_mode):
        os.close(descriptor)
        raise ImageError(f"{source}: is a folder, not a photo; give the path of an image file")
    with os.fdopen(descriptor, "rb") as stream:
        if not stat.S_ISREG(status.st_mode):
            raise ImageError(f"{source}: is a {file_kind(status.st_mode)}, not a regular file; refused")
        if status.st_size == 0:
            raise ImageError(f"{source}: the file is empty (0 bytes); it is not a photo")
        try:
            header = stream.read(_HEADER_BYTES)
            if sniff_format(header) is None:
                raise ImageError(
                    f"{source}: not a photo (its first bytes are no JPEG, PNG, WebP, TIFF or BMP "
                    "header); use one of those formats"
                )
            if status.st_size > max_bytes:
                raise ImageError(
                    f"{source}: {status.st_size:,} bytes is more than a photo within the pixel limit can "
                    f"take ({max_bytes:,} bytes); refused (cloak --max-pixels raises the limit)"
                )
            # One byte past the size, to notice a file that grew since fstat.
            data = header + stream.read(status.st_size + 1 - len(header))
        except OSError as error:
            raise ImageError(f"{source}: cannot read ({os_reason(error)}); check the file") from None
    if len(data) > status.st_size:
        raise ImageError(f"{source}: the file grew while being read; try again once it is complete")
    return data


def file_kind(mode: int) -> str:
    """A name for what a non-regular file is, for messages."""
    kinds = (
        (stat.S_ISFIFO, "FIFO (named pipe)"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISDIR, "folder"),
    )
    return next((name for test, name in kinds if test(mode)), "special file")


def os_reason(error: OSError) -> str:
    """Why a file operation failed, in words for a one-line message."""
    if error.errno == errno.ELOOP:
        return "a symlink loop"
    return error.strerror or str(error)


@contextlib.contextmanager
def _library_warnings_as_notes(notes: list[str]) -> Iterator[None]:
    """Pillow's warnings about a file (corrupt EXIF, oversized tags) become one-line notes of the
    file instead of multi-line messages on stderr; warnings from elsewhere are passed on."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Our own pixel limit governs; Pillow would only warn under it.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield
    for warning in caught:
        if f"{os.sep}PIL{os.sep}" in warning.filename:
            text = " ".join(str(warning.message).split())
            if f"Pillow: {text}" not in notes:
                notes.append(f"Pillow: {text}")
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


@contextlib.contextmanager
def _open_image(data: bytes, source: Path, max_pixels: int) -> Iterator[Image.Image]:
    sniffed = sniff_format(data[:_HEADER_BYTES])
    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error, IndexError) as error:
        raise ImageError(
            f"{source}: damaged or truncated {sniffed or 'image'} file ({_first_line(error)}); "
            "re-export the photo"
        ) from None
    with image:
        pixel_count = image.width * image.height
        if pixel_count > max_pixels:
            raise ImageError(
                f"{source}: {image.width}x{image.height} is {pixel_count:,} pixels, over the "
                f"limit of {max_pixels:,} (possible decompression bomb); if you trust the file, "
                "raise the limit with cloak --max-pixels"
            )
        yield image


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextlib.contextmanager
def _decoding_errors(source: Path, image_format: str = "image") -> Iterator[None]:
    try:
        yield
    # Pillow's decoders report malformed data with many exception types (OSError, SyntaxError,
    # struct.error, IndexError, ...); any of them means the file cannot be decoded, never a bug the
    # user should see.
    except ImageError:
        raise
    except Exception as error:
        raise ImageError(
            f"{source}: damaged or truncated {image_format} data ({_first_line(error)}); re-export the photo"
        ) from None


def _check_format(image: Image.Image, source: Path, notes: list[str]) -> str:
    image_format = image.format or "unknown"
    if image_format == "GIF":
        raise ImageError(
            f"{source}: GIF is not supported (its 256-colour palette cannot hold a cloak); "
            "convert it to PNG first"
        )
    frame_count = getattr(image, "n_frames", 1)
    if image_format == "MPO":
        notes.append(f"multi-picture JPEG: only the primary of its {frame_count} pictures is kept")
        return "JPEG"
    if image_format not in SUPPORTED_FORMATS:
        raise ImageError(f"{source}: {image_format} is not supported; use JPEG, PNG, WebP, TIFF or BMP")
    if frame_count > 1:
        raise ImageError(
            f"{source}: animated or multi-frame {image_format} ({frame_count} frames) is not "
            "supported; export the frame to cloak as a still image"
        )
    return image_format


def _decode_samples(
    image: Image.Image, data: bytes, source: Path, notes: list[str]
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Original samples (HxW gray or HxWx3 colour), alpha, and bit depth, before orientation."""
    if image.format == "PNG" and _png_bit_depth(data) == 16:
        return _decode_png16(data, source)
    mode = image.mode
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16), None, 16
    if mode in ("I", "F"):
        raise ImageError(
            f"{source}: 32-bit {'float' if mode == 'F' else 'integer'} samples are not supported; "
            "export the photo with 8 or 16 bits per channel"
        )
    if image.format == "TIFF" and 16 in _as_tuple(image.tag_v2.get(_TIFF_BITS_PER_SAMPLE, ())):
        notes.append("16-bit colour TIFF: processed and written with 8 bits per channel")
    target_mode = _processing_mode(image, source, notes)
    pixels = np.asarray(image if target_mode == mode else image.convert(target_mode))
    if target_mode == "L":
        return pixels, None, 8
    if target_mode == "LA":
        return pixels[..., 0], pixels[..., 1], 8
    if target_mode == "RGBA":
        return pixels[..., :3], pixels[..., 3], 8
    return pixels, None, 8


def _processing_mode(image: Image.Image, source: Path, notes: list[str]) -> str:
    mode = image.mode
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        target = "RGBA" if has_alpha else "RGB"
        notes.append(f"palette image: processed and written as {target}")
        return target
    if mode not in _PROCESSING_MODES:
        raise ImageError(f"{source}: colour mode {mode} is not supported; export the photo as RGB")
    if mode in _CONVERSION_NOTES:
        notes.append(_CONVERSION_NOTES[mode])
    return _PROCESSING_MODES[mode]


def _png_bit_depth(data: bytes) -> int:
    # The IHDR chunk always comes first: 8-byte signature, 4-byte length, "IHDR", width, height,
    # bit depth.
    return data[24]


def _decode_png16(data: bytes, source: Path) -> tuple[np.ndarray, np.ndarray | None, int]:
    colour_type = data[25]
    with _decoding_errors(source):
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if pixels is None:
            raise ValueError("OpenCV could not decode the 16-bit PNG")
    gray = colour_type in (0, 4)
    if pixels.ndim == 2:
        return pixels, None, 16
    # OpenCV returns BGR(A); gray with alpha comes back as BGRA with equal colour channels.
    alpha = pixels[..., 3] if pixels.shape[2] == 4 else None
    colour = pixels[..., 0] if gray else np.ascontiguousarray(pixels[..., 2::-1])
    return colour, alpha, 16


def _read_metadata(image: Image.Image, data: bytes, image_format: str) -> PhotoMetadata:
    exif = image.getexif()
    orientation = exif.get(_ORIENTATION_TAG, 1)
    if not is_valid_orientation(orientation):
        orientation = 1
    tiff_tags: dict[int, str] = {}
    exif_bytes: bytes | None = None
    if image_format == "TIFF":
        tiff_tags = {tag: exif[tag] for tag in _TIFF_TEXT_TAGS if isinstance(exif.get(tag), str)}
    elif len(exif):
        if _ORIENTATION_TAG in exif:
            exif[_ORIENTATION_TAG] = orientation
        exif_bytes = exif.tobytes()
    jpeg_settings = _jpeg_settings(image) if image_format == "JPEG" else {}
    return PhotoMetadata(
        icc_profile=image.info.get("icc_profile") or None,
        exif=exif_bytes,
        xmp=_xmp(image),
        dpi=_dpi(image),
        png_text=_png_text(image) if image_format == "PNG" else {},
        tiff_tags=tiff_tags,
        tiff_compression=image.info.get("compression") if image_format == "TIFF" else None,
        webp_lossless=image_format == "WEBP" and _webp_is_lossless(data),
        source_orientation=orientation,
        **jpeg_settings,
    )


def _xmp(image: Image.Image) -> bytes | None:
    packet = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
    if not packet:
        return None
    return packet.encode() if isinstance(packet, str) else packet


def _dpi(image: Image.Image) -> tuple[float, float] | None:
    dpi = image.info.get("dpi")
    if not dpi or not all(dpi):
        return None
    return float(dpi[0]), float(dpi[1])


def _png_text(image: Image.Image) -> dict[str, str]:
    return {key: str(value) for key, value in image.text.items() if not _PNG_METADATA_TEXT_KEYS.match(key)}


def _webp_is_lossless(data: bytes) -> bool:
    # RIFF container: the image chunk is "VP8L" for lossless and "VP8 " for lossy, possibly after
    # "VP8X".
    offset = 12
    while offset + 8 <= len(data):
        chunk_type = data[offset : offset + 4]
        if chunk_type in (b"VP8L", b"VP8 "):
            return chunk_type == b"VP8L"
        (length,) = struct.unpack("<I", data[offset + 4 : offset + 8])
        offset += 8 + length + (length & 1)
    return False


def _jpeg_settings(image: Image.Image) -> dict[str, object]:
    tables = getattr(image, "quantization", None) or {}
    qtables = tuple(tuple(int(value) for value in tables[index]) for index in sorted(tables))
    subsampling = JpegImagePlugin.get_sampling(image) if image.mode != "L" else -1
    return {
        "jpeg_quality": estimate_jpeg_quality(qtables),
        "jpeg_subsampling": _SUBSAMPLING_NAMES.get(subsampling),
        "jpeg_qtables": qtables or None,
        "jpeg_progressive": bool(image.info.get("progressive")),
    }


def estimate_jpeg_quality(qtables: tuple[tuple[int, ...], ...]) -> int:
    """The IJG quality (1..100) whose scaled reference tables best match `qtables` (natural order).

    Exact for files written by libjpeg-based encoders; the nearest match for others. Returns
    `DEFAULT_JPEG_QUALITY` when there are no tables.
    """
    if not qtables:
        return DEFAULT_JPEG_QUALITY
    references = [_IJG_LUMINANCE, _IJG_CHROMINANCE][: len(qtables)]
    actual = [np.asarray(table, dtype=np.int64) for table in qtables[: len(references)]]
    qualities = np.arange(1, 101)
    scales = np.where(qualities < 50, 5000 // qualities, 200 - 2 * qualities)
    errors = np.zeros(len(qualities))
    for reference, table in zip(references, actual, strict=True):
        scaled = np.clip((reference[None, :] * scales[:, None] + 50) // 100, 1, 255)
        errors += np.abs(scaled - table[None, :]).sum(axis=1)
    return int(qualities[np.argmin(errors)])


def _as_tuple(value: object) -> tuple:
    return value if isinstance(value, tuple) else (value,)
