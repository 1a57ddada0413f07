"""Reading photos into the pipeline and writing cloaked photos back faithfully.

`read_photo` decodes a file into a `Photo`: the upright integer samples (EXIF orientation applied),
viewed as 8-bit RGB for detection and cloaking, plus the alpha channel and metadata needed to write
the photo back. `write_photo` writes a cloaked RGB array, or the cloak's delta, in the photo's own
format, size, bit depth, colour profile and (for JPEG) quantisation tables and chroma subsampling;
pixels the cloak did not change are written from the original samples, so lossless formats keep
them bit-identical. A photo with an EXIF orientation (phones) is written in its stored layout with
the same orientation tag, the upright cloak mapped back onto it, so a JPEG's blocks stay where
they were and only the faces change.

Pillow does the decoding, encoding and metadata because OpenCV exposes none of what a faithful copy
needs: ICC profiles, EXIF and XMP, PNG text chunks, DPI, JPEG quantisation tables and chroma
subsampling. OpenCV only decodes 16-bit colour PNGs, which Pillow would reduce to 8 bits; those are
written by `_encode_png16`.

Format policy (each conversion is also recorded in `Photo.notes` so the caller can tell the user):
- JPEG, PNG, WebP, TIFF and BMP are read and written in their own format. A multi-picture JPEG (MPO,
  from cameras and phones) is treated as a JPEG of its primary picture.
- Animated or multi-frame files (WebP, APNG, multi-page TIFF) are refused: cloaking one frame and
  dropping the others would silently lose content. GIF is refused altogether: its 256-colour
  palette cannot hold a cloak.
- Palette images are written as RGB(A) and bilevel ones as 8-bit gray: re-quantising would erase
  the cloak.
- CMYK JPEGs are converted to RGB and written as RGB JPEGs without the CMYK profile, which no longer
  applies to the data.
- 16-bit PNGs (gray, gray+alpha, RGB, RGBA) and 16-bit gray TIFFs stay 16-bit; 16-bit colour TIFFs
  become 8-bit (Pillow has no 48-bit mode).
- Without `keep_exif`, the EXIF keeps only what shows the photo as before (`_EXIF_DISPLAY_TAGS`,
  `_EXIF_IFD_DISPLAY_TAGS`), and XMP (which can carry names and places and cannot be edited
  selectively), PNG text chunks and TIFF text tags are removed; the ICC profile and DPI are kept.
  With `keep_exif` all of these are copied, except that a TIFF can keep only its IFD0 text tags.
  The EXIF thumbnail, a copy of the uncloaked photo, is never written, and Pillow's BMP writer can
  hold no metadata or alpha.
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
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import ExifTags, Image, JpegImagePlugin, PngImagePlugin, UnidentifiedImageError

from ulixes_onnx.atomic import ProtectedFileError, same_file, write_atomically
from ulixes_onnx.errors import ImageError
from ulixes_onnx.photos.orientation import is_valid_orientation, stored_rectangle, to_stored, to_upright

if TYPE_CHECKING:
    from ulixes_onnx.faces.pasteback import PhotoDelta

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP")
DEFAULT_MAX_PIXELS = 100_000_000
# Our own limit (`max_pixels`, checked right after the header is parsed) governs; Pillow's global one
# would refuse photos over 179 megapixels with advice no option of ours can follow.
Image.MAX_IMAGE_PIXELS = None
DEFAULT_JPEG_QUALITY = 95
LOSSY_WEBP_QUALITY = 90

# Multiplying 8-bit units by 257 maps 0..255 exactly onto 0..65535.
_SIXTEEN_BIT_SCALE = 257.0

_ORIENTATION_TAG = ExifTags.Base.Orientation
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
_LOSSLESS_TIFF_COMPRESSIONS = ("raw", "tiff_lzw", "tiff_adobe_deflate", "packbits")
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
        return _float_rgb(self.samples, self.bit_depth)

    @property
    def rgb8(self) -> np.ndarray:
        """uint8 HxWx3, gray replicated and 16-bit samples rounded: the samples themselves for 8-bit
        colour photos (read-only), a new array otherwise."""
        samples = self.samples
        if self.bit_depth == 16:
            samples = np.rint(samples / _SIXTEEN_BIT_SCALE).astype(np.uint8)
        if samples.ndim == 2:
            return np.repeat(samples[:, :, None], 3, axis=2)
        return samples


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


# --- reading --------------------------------------------------------------------------------------

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
        raise ImageError(f"{source}: cannot open ({_os_reason(error)}); check the path") from None
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
            raise ImageError(f"{source}: cannot read ({_os_reason(error)}); check the file") from None
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


def _os_reason(error: OSError) -> str:
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


def _float_rgb(samples: np.ndarray, bit_depth: int) -> np.ndarray:
    rgb = samples.astype(np.float32)
    if bit_depth == 16:
        rgb /= _SIXTEEN_BIT_SCALE
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    return rgb


def _as_tuple(value: object) -> tuple:
    return value if isinstance(value, tuple) else (value,)


# --- writing --------------------------------------------------------------------------------------


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
        original = _float_rgb(original_samples[region], photo.bit_depth)
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
        values = values * np.float32(_SIXTEEN_BIT_SCALE)
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
                f"{destination.parent}: output folder is not writable ({_os_reason(error)}); "
                "choose another folder"
            ) from None
        raise ImageError(f"{destination}: cannot write ({_os_reason(error)})") from None
