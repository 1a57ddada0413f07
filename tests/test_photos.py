"""Tests for photo reading and writing: fidelity, metadata, privacy and bad input.

Every test image is built in tmp_path from `skimage.data.astronaut()`; nothing is committed.
"""

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import ExifTags, Image, ImageCms, ImageOps, JpegImagePlugin, PngImagePlugin

import ulixes_onnx.atomic
from ulixes_onnx.errors import ImageError
from ulixes_onnx.faces.pasteback import DeltaPatch, PhotoDelta
from ulixes_onnx.photos import encoding
from ulixes_onnx.photos.decoding import estimate_jpeg_quality, read_photo
from ulixes_onnx.photos.encoding import encode_photo, jpeg_region_round_trip, output_path, write_photo
from ulixes_onnx.photos.photo import DEFAULT_JPEG_QUALITY, Photo, PhotoMetadata

GPS_IFD = ExifTags.IFD.GPSInfo
EXIF_IFD = ExifTags.IFD.Exif
ORIENTATION = ExifTags.Base.Orientation
MAKE = ExifTags.Base.Make
MAKER_NOTE = ExifTags.Base.MakerNote


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    # Not square, so a missing or wrong transpose changes the shape as well as the pixels.
    return Image.fromarray(skimage.data.astronaut()).crop((96, 16, 352, 208)).resize((160, 120))


@pytest.fixture(scope="module")
def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


def reread(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).copy()


def cloak_block(rgb: np.ndarray, delta: float = 6.4) -> np.ndarray:
    """A stand-in cloak: changes a block of pixels and leaves the rest exactly as read."""
    cloaked = rgb.copy()
    cloaked[20:50, 30:70] += delta
    return cloaked


def gps_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[MAKE] = "TestCam"
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    exif.get_ifd(EXIF_IFD).update({MAKER_NOTE: b"vendor preview", 0x9003: "2024:05:01 10:00:00"})
    return exif


# --- fidelity -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "options"),
    [
        (".png", {}),
        (".webp", {"lossless": True}),
        (".tiff", {"compression": "tiff_lzw"}),
        (".bmp", {}),
    ],
)
def test_lossless_formats_keep_unchanged_pixels_bit_identical(tmp_path, astronaut, suffix, options):
    source = save(astronaut, tmp_path / f"in{suffix}", **options)
    photo = read_photo(source)
    assert photo.rgb.dtype == np.float32 and photo.rgb.shape == (120, 160, 3)
    cloaked = cloak_block(photo.rgb)
    cloaked_before = cloaked.copy()

    written = reread(write_photo(photo, cloaked, tmp_path / f"out{suffix}"))

    assert np.array_equal(cloaked, cloaked_before)

    original = np.asarray(astronaut)
    outside = np.ones(original.shape[:2], bool)
    outside[20:50, 30:70] = False
    assert np.array_equal(written[outside], original[outside])
    expected_inside = np.clip(np.rint(original[20:50, 30:70] + 6.4), 0, 255)
    assert np.array_equal(written[20:50, 30:70], expected_inside)


def test_source_file_is_never_modified(tmp_path, astronaut):
    source = save(astronaut, tmp_path / "in.png")
    before = source.read_bytes()
    photo = read_photo(source)
    write_photo(photo, cloak_block(photo.rgb), output_path(source))
    assert source.read_bytes() == before


def test_photo_arrays_are_read_only(tmp_path, astronaut):
    photo = read_photo(save(astronaut, tmp_path / "in.png"))
    with pytest.raises(ValueError, match="read-only"):
        photo.samples[0, 0, 0] = 1
    with pytest.raises(ValueError, match="read-only"):
        photo.rgb8[0, 0, 0] = 1


def test_rgb8_is_the_rounded_rgb_for_colour_gray_and_16_bit(tmp_path, astronaut):
    colour = read_photo(save(astronaut, tmp_path / "in.png"))
    gray = read_photo(save(astronaut.convert("L"), tmp_path / "gray.png"))
    deep_pixels = np.random.default_rng(3).integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    deep_path = tmp_path / "deep.png"
    cv2.imwrite(str(deep_path), deep_pixels)
    for photo in (colour, gray, read_photo(deep_path)):
        assert photo.rgb8.dtype == np.uint8 and photo.rgb8.shape == photo.rgb.shape
        np.testing.assert_array_equal(photo.rgb8, np.clip(np.rint(photo.rgb), 0, 255))


def _delta_for_block(photo: Photo, delta: float) -> PhotoDelta:
    change = np.zeros((30, 40, 3), np.float32) + delta
    change[::3] = 0  # some rows unchanged inside the patch as well
    mask = np.ones(change.shape[:2], np.float32)
    return PhotoDelta(photo.height, photo.width, (DeltaPatch(30, 20, change, mask),))


@pytest.mark.parametrize("subsampling", [0, 1, 2])
@pytest.mark.parametrize(
    ("x0", "y0", "width", "height"), [(0, 0, 40, 30), (37, 21, 83, 77), (101, 55, 59, 65)]
)
def test_a_region_round_trip_decodes_as_the_whole_saved_file(
    tmp_path, astronaut, subsampling, x0, y0, width, height
):
    source = save(astronaut, tmp_path / "in.jpg", quality=85, subsampling=subsampling)
    photo = read_photo(source)
    round_trip = jpeg_region_round_trip(photo)
    region = photo.rgb[y0 : y0 + height, x0 : x0 + width]
    region += np.random.default_rng(x0).normal(0, 4, region.shape).astype(np.float32)
    change = np.clip(np.rint(region), 0, 255) - photo.rgb[y0 : y0 + height, x0 : x0 + width]
    delta = PhotoDelta(photo.height, photo.width, (DeltaPatch(x0, y0, change, np.ones((height, width))),))
    with Image.open(io.BytesIO(encode_photo(photo, delta))) as saved:
        expected = np.asarray(saved, np.float32)[y0 : y0 + height, x0 : x0 + width]
    decoded = round_trip(region, x0, y0)
    assert decoded.dtype == np.float32 and decoded.shape == region.shape
    # JPEG changed the region, and the round trip changed it as the whole file does
    assert np.abs(expected - np.rint(region)).mean() > 0.5
    assert np.array_equal(decoded, expected)


def test_a_region_round_trip_keeps_an_explicit_quality(tmp_path, astronaut):
    photo = read_photo(save(astronaut, tmp_path / "in.jpg", quality=95))
    region = photo.rgb[10:70, 20:90]
    with Image.open(
        io.BytesIO(encode_photo(photo, PhotoDelta(photo.height, photo.width, ()), quality=40))
    ) as saved:
        expected = np.asarray(saved, np.float32)[10:70, 20:90]
    assert np.array_equal(jpeg_region_round_trip(photo, 40)(region, 20, 10), expected)


@pytest.mark.parametrize("kind", ["png", "gray", "oriented", "webp"])
def test_no_region_round_trip_where_the_saved_file_is_not_an_upright_colour_jpeg(tmp_path, astronaut, kind):
    if kind == "oriented":
        source = save(store_with_orientation(astronaut, 6), tmp_path / "in.jpg", exif=oriented_exif(6))
    elif kind == "gray":
        source = save(astronaut.convert("L"), tmp_path / "in.jpg")
    else:
        source = save(astronaut, tmp_path / f"in.{kind}")
    assert jpeg_region_round_trip(read_photo(source)) is None


@pytest.mark.parametrize("name", ["in.png", "in.jpg", "gray.png", "deep.png"])
def test_a_delta_writes_exactly_what_the_whole_image_writes(tmp_path, astronaut, name):
    source = tmp_path / name
    if name == "deep.png":
        cv2.imwrite(str(source), np.random.default_rng(4).integers(0, 65536, (120, 160, 3), dtype=np.uint16))
    else:
        save(astronaut.convert("L") if name.startswith("gray") else astronaut, source)
    photo = read_photo(source)
    delta = _delta_for_block(photo, 3.7)
    whole = delta.add_to(photo.rgb)
    assert encode_photo(photo, delta) == encode_photo(photo, whole)


def test_a_delta_for_another_photo_size_is_refused(tmp_path, astronaut):
    photo = read_photo(save(astronaut, tmp_path / "in.png"))
    other = PhotoDelta(photo.height + 1, photo.width, ())
    with pytest.raises(ValueError, match="delta is for a 160x121 photo"):
        encode_photo(photo, other)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16_bit_png_stays_16_bit_and_exact(tmp_path, channels):
    rng = np.random.default_rng(channels)
    pixels = rng.integers(0, 65536, size=(40, 50, channels), dtype=np.uint16)
    source = tmp_path / "deep.png"
    if channels == 2:
        # OpenCV cannot write gray+alpha, so this input comes from the module's own encoder.
        source.write_bytes(
            encoding._encode_png16(
                pixels[..., 0], pixels[..., 1], PhotoMetadata(), exif=None, xmp=None, text={}
            )
        )
    else:
        opencv_order = {1: [0], 3: [2, 1, 0], 4: [2, 1, 0, 3]}[channels]  # OpenCV stores BGR(A)
        cv2.imwrite(str(source), pixels[..., opencv_order])
    photo = read_photo(source)
    assert photo.bit_depth == 16 and photo.is_gray == (channels <= 2)
    assert (photo.alpha is not None) == (channels in (2, 4))
    cloaked = cloak_block(photo.rgb, delta=1.25)

    written_path = write_photo(photo, cloaked, tmp_path / "out.png")

    assert written_path.read_bytes()[24] == 16
    written = cv2.imdecode(np.fromfile(written_path, np.uint8), cv2.IMREAD_UNCHANGED)
    written = written[..., None] if written.ndim == 2 else written
    if channels >= 3:
        written = np.concatenate([written[..., 2::-1], written[..., 3:]], axis=2)
    elif channels == 2:
        written = written[..., [0, 3]]
    assert written.dtype == np.uint16 and written.shape == pixels.shape
    colour_channels = 1 if channels <= 2 else 3
    outside = np.ones((40, 50), bool)
    outside[20:50, 30:70] = False
    assert np.array_equal(written[outside], pixels[outside])
    # The cloak moved each colour sample by 1.25 in 8-bit units, i.e. 1.25 * 257 in 16-bit units.
    shift = written[~outside][:, :colour_channels].astype(np.int64) - pixels[~outside][
        :, :colour_channels
    ].astype(np.int64)
    unclipped = pixels[~outside][:, :colour_channels] < 65535 - 330
    assert np.all(np.abs(shift[unclipped] - 1.25 * 257) <= 1)
    assert np.array_equal(written[..., colour_channels:], pixels[..., colour_channels:])


def test_16_bit_gray_tiff_stays_16_bit(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 65536, size=(30, 40), dtype=np.uint16)
    source = save(Image.fromarray(pixels), tmp_path / "deep.tiff")
    photo = read_photo(source)
    assert photo.bit_depth == 16 and photo.is_gray
    with Image.open(write_photo(photo, photo.rgb, tmp_path / "out.tiff")) as image:
        assert image.mode == "I;16"
        assert np.array_equal(np.asarray(image), pixels)


# --- metadata -----------------------------------------------------------------------------------


def store_with_orientation(upright: Image.Image, orientation: int) -> Image.Image:
    """The stored pixels a camera would write for an upright scene and an EXIF orientation."""
    inverse = {
        1: None,
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }[orientation]
    return upright if inverse is None else upright.transpose(inverse)


def oriented_exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("suffix", [".png", ".webp"])
def test_an_oriented_photo_is_read_upright_and_written_back_as_stored(
    tmp_path, astronaut, suffix, orientation
):
    stored = store_with_orientation(astronaut, orientation)
    source = save(stored, tmp_path / f"in{suffix}", exif=oriented_exif(orientation), lossless=True)

    photo = read_photo(source)

    assert np.array_equal(photo.rgb, np.asarray(astronaut, dtype=np.float32))
    assert photo.metadata.source_orientation == orientation
    delta = _delta_for_block(photo, 3.7)
    cloaked = np.rint(delta.add_to(photo.rgb)).astype(np.uint8)
    assert encode_photo(photo, delta) == encode_photo(photo, delta.add_to(photo.rgb))
    written = write_photo(photo, delta, tmp_path / f"out{suffix}")
    with Image.open(written) as image:
        assert image.getexif().get(ORIENTATION, 1) == orientation
        expected_stored = store_with_orientation(Image.fromarray(cloaked), orientation)
        assert np.array_equal(np.asarray(image), np.asarray(expected_stored))
    assert np.array_equal(read_photo(written).rgb8, cloaked)


def test_an_oriented_photo_keeps_its_alpha_in_the_stored_layout(tmp_path, astronaut):
    alpha = np.tile(np.linspace(0, 255, 160).astype(np.uint8), (120, 1))
    stored = store_with_orientation(Image.fromarray(np.dstack([np.asarray(astronaut), alpha])), 6)
    photo = read_photo(save(stored, tmp_path / "in.png", exif=oriented_exif(6)))
    assert np.array_equal(photo.alpha, alpha)
    written = reread(write_photo(photo, _delta_for_block(photo, 3.7), tmp_path / "out.png"))
    assert np.array_equal(written[..., 3], np.asarray(stored)[..., 3])


def outside_block_change(source: Path, written: Path) -> tuple[float, float]:
    """Mean absolute change and fraction of changed samples, seen upright, away from the block that
    `_delta_for_block` changes (two 16-pixel JPEG blocks of margin)."""
    before, after = read_photo(source).rgb, read_photo(written).rgb
    outside = np.ones(before.shape[:2], bool)
    outside[20 - 32 : 50 + 32, 30 - 32 : 70 + 32] = False
    change = np.abs(after - before)[outside]
    return float(change.mean()), float((change > 0).mean())


@pytest.mark.parametrize("orientation", range(2, 9))
def test_an_oriented_jpeg_changes_only_as_much_as_an_upright_one(tmp_path, astronaut, orientation):
    changes = {}
    for name, value in (("upright", 1), ("oriented", orientation)):
        stored = store_with_orientation(astronaut, value)
        source = save(stored, tmp_path / f"{name}.jpg", quality=90, exif=oriented_exif(value))
        photo = read_photo(source)
        written = write_photo(photo, _delta_for_block(photo, 3.7), tmp_path / f"{name}_out.jpg")
        with Image.open(written) as image:
            assert image.getexif()[ORIENTATION] == value
            assert image.size == stored.size
        changes[name] = outside_block_change(source, written)
    (upright_mean, upright_fraction), (oriented_mean, oriented_fraction) = changes.values()
    # Same stored layout and quantisation tables: the re-encode noise of an upright JPEG, not the
    # change of every block that re-encoding a rotated copy makes.
    assert oriented_mean <= 1.5 * upright_mean + 0.05, changes
    assert oriented_fraction <= 1.5 * upright_fraction + 0.02, changes


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_an_oriented_tiff_is_written_upright(tmp_path, astronaut, orientation):
    # Pillow turns a TIFF upright as it loads it; TIFF is lossless, so writing it upright changes
    # no pixel's value.
    stored = store_with_orientation(astronaut, orientation)
    photo = read_photo(save(stored, tmp_path / "in.tiff", tiffinfo={ORIENTATION: orientation}))
    assert np.array_equal(photo.rgb, np.asarray(astronaut, dtype=np.float32))
    with Image.open(write_photo(photo, photo.rgb, tmp_path / "out.tiff")) as image:
        assert ORIENTATION not in image.getexif()
        assert np.array_equal(np.asarray(image), np.asarray(astronaut))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_jpeg_orientation_matches_pillows_own_transpose(tmp_path, astronaut, orientation):
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    source = save(store_with_orientation(astronaut, orientation), tmp_path / "in.jpg", exif=exif)
    with Image.open(source) as image:
        reference = np.asarray(ImageOps.exif_transpose(image), dtype=np.float32)
    assert np.array_equal(read_photo(source).rgb, reference)


@pytest.mark.parametrize(
    ("suffix", "options"),
    [
        (".jpg", {"quality": 90}),
        (".png", {}),
        (".webp", {"lossless": True}),
        (".tiff", {}),
    ],
)
def test_icc_profile_is_kept(tmp_path, astronaut, srgb_icc, suffix, options):
    source = save(astronaut, tmp_path / f"in{suffix}", icc_profile=srgb_icc, **options)
    photo = read_photo(source)
    with Image.open(write_photo(photo, cloak_block(photo.rgb), tmp_path / f"out{suffix}")) as image:
        assert image.info.get("icc_profile") == srgb_icc


@pytest.mark.parametrize(("suffix", "options"), [(".png", {}), (".webp", {"lossless": True})])
def test_alpha_channel_is_kept(tmp_path, astronaut, suffix, options):
    alpha = np.tile(np.linspace(0, 255, 160).astype(np.uint8), (120, 1))
    rgba = np.dstack([np.asarray(astronaut), alpha])
    photo = read_photo(save(Image.fromarray(rgba), tmp_path / f"in{suffix}", **options))
    assert np.array_equal(photo.alpha, alpha)
    written = reread(write_photo(photo, cloak_block(photo.rgb), tmp_path / f"out{suffix}"))
    assert written.shape == (120, 160, 4)
    assert np.array_equal(written[..., 3], alpha)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_grayscale_photo_is_written_gray_from_the_cloaked_luminance(tmp_path, astronaut, suffix):
    gray = astronaut.convert("L")
    photo = read_photo(save(gray, tmp_path / f"in{suffix}"))
    assert photo.is_gray and np.array_equal(photo.rgb[..., 0], photo.rgb[..., 2])
    cloaked = photo.rgb.copy()
    cloaked[20:50, 30:70, 0] += 50.0  # only red changes: luminance rises by 0.299 * 50

    written_path = write_photo(photo, cloaked, tmp_path / f"out{suffix}")

    with Image.open(written_path) as image:
        assert image.mode == "L"
        written = np.asarray(image).astype(np.float64)
    expected = np.clip(photo.samples[20:50, 30:70] + 0.299 * 50, 0, 255)
    tolerance = 0.5 if suffix == ".png" else 4.0
    assert np.abs(written[20:50, 30:70] - expected).mean() <= tolerance


CAPTION = "Singer Katy Perry arrives for the premiere"
# Each identifying EXIF tag with a value that can be searched for in the written file's bytes.
IDENTIFYING_IFD0 = {
    ExifTags.Base.ImageDescription: CAPTION,
    ExifTags.Base.Artist: "Jane Photographer",
    ExifTags.Base.Copyright: "Copyright Jane Photographer",
    ExifTags.Base.DocumentName: "perry-premiere.jpg",
    ExifTags.Base.HostComputer: "janes-laptop",
    ExifTags.Base.Make: "TestCam",
    ExifTags.Base.Model: "TestCam X100",
    ExifTags.Base.DateTime: "2024:05:01 10:00:00",
    ExifTags.Base.XPComment: "Katy at the gala".encode("utf-16-le"),
    ExifTags.Base.XPTitle: "Premiere night".encode("utf-16-le"),
    ExifTags.Base.XPSubject: "Red carpet".encode("utf-16-le"),
    ExifTags.Base.XPKeywords: "celebrity;singer".encode("utf-16-le"),
    ExifTags.Base.XPAuthor: "Jane Photographer".encode("utf-16-le"),
}
IDENTIFYING_EXIF_IFD = {
    ExifTags.Base.UserComment: b"ASCII\0\0\0Taken at 12 Example Street",
    ExifTags.Base.CameraOwnerName: "Jane Owner",
    ExifTags.Base.BodySerialNumber: "BODY123456",
    ExifTags.Base.LensSerialNumber: "LENS987654",
    ExifTags.Base.ImageUniqueID: "0123456789abcdef0123456789abcdef",
    ExifTags.Base.DateTimeOriginal: "2024:05:01 10:00:00",
    MAKER_NOTE: b"vendor preview",
}
DISPLAY_IFD0 = {ORIENTATION: 1, ExifTags.Base.XResolution: 300.0, ExifTags.Base.ResolutionUnit: 2}


def identifying_exif() -> Image.Exif:
    exif = Image.Exif()
    exif.update({**IDENTIFYING_IFD0, **DISPLAY_IFD0})
    exif.get_ifd(EXIF_IFD).update({**IDENTIFYING_EXIF_IFD, ExifTags.Base.ColorSpace: 1})
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    return exif


def searchable(value: str | bytes) -> bytes:
    """A distinctive piece of a tag's value as it appears in the file."""
    data = value.encode() if isinstance(value, str) else value
    return data[-12:]


@pytest.mark.parametrize(("suffix", "options"), [(".jpg", {}), (".png", {}), (".webp", {"lossless": True})])
def test_exif_keeps_only_what_shows_the_photo_unless_asked_to_keep_all(tmp_path, astronaut, suffix, options):
    source = save(astronaut, tmp_path / f"in{suffix}", exif=identifying_exif(), **options)
    identifying = [*IDENTIFYING_IFD0.values(), *IDENTIFYING_EXIF_IFD.values()]
    assert all(searchable(value) in source.read_bytes() for value in identifying)
    photo = read_photo(source)

    default = write_photo(photo, _delta_for_block(photo, 3.7), tmp_path / f"default{suffix}")

    data = default.read_bytes()
    assert [value for value in identifying if searchable(value) in data] == []
    with Image.open(default) as image:
        exif = image.getexif()
        assert dict(exif) == {**DISPLAY_IFD0, EXIF_IFD: exif[EXIF_IFD]}
        assert exif.get_ifd(EXIF_IFD) == {ExifTags.Base.ColorSpace: 1}
        assert not exif.get_ifd(GPS_IFD)

    kept = write_photo(photo, photo.rgb, tmp_path / f"kept{suffix}", keep_exif=True)
    assert all(searchable(value) in kept.read_bytes() for value in identifying)
    with Image.open(kept) as image:
        assert image.getexif().get_ifd(GPS_IFD)[2] == (48.0, 51.0, 29.0)


def test_exif_with_nothing_to_show_the_photo_is_not_written(tmp_path, astronaut):
    exif = Image.Exif()
    exif[ExifTags.Base.Artist] = "Jane Photographer"
    photo = read_photo(save(astronaut, tmp_path / "in.jpg", exif=exif))
    with Image.open(write_photo(photo, photo.rgb, tmp_path / "out.jpg")) as image:
        assert "exif" not in image.info


def png_with_text(astronaut: Image.Image, path: Path) -> Path:
    info = PngImagePlugin.PngInfo()
    # ImageMagick writes EXIF fields as tEXt chunks named "exif:<tag>".
    info.add_text("exif:GPSLatitude", "48/1, 51/1, 29/1")
    info.add_text("exif:GPSLongitude", "2/1, 17/1, 40/1")
    info.add_itxt("Location", "Home, 12 Example Street")
    info.add_text("Comment", "Katy at the gala", zip=True)
    return save(astronaut, path, pnginfo=info)


@pytest.mark.parametrize("deep", [False, True])
def test_png_text_chunks_are_dropped_by_default_and_kept_on_request(tmp_path, astronaut, deep):
    source = png_with_text(astronaut, tmp_path / "in.png")
    if deep:
        # Re-save as 16-bit, which `_encode_png16` writes, with the same text.
        photo = read_photo(source)
        pixels = photo.samples.astype(np.uint16) * 257
        source.write_bytes(
            encoding._encode_png16(
                pixels, None, photo.metadata, exif=None, xmp=None, text=photo.metadata.png_text
            )
        )
    photo = read_photo(source)
    assert photo.bit_depth == (16 if deep else 8)

    default = write_photo(photo, photo.rgb, tmp_path / "default.png")
    kept = write_photo(photo, photo.rgb, tmp_path / "kept.png", keep_exif=True)

    for place in (b"GPSLatitude", b"GPSLongitude", b"Example Street", b"Location"):
        assert place not in default.read_bytes()
    with Image.open(default) as image:
        assert image.text == {}
    with Image.open(kept) as image:
        assert image.text["Location"] == "Home, 12 Example Street"
        assert image.text["exif:GPSLatitude"] == "48/1, 51/1, 29/1"
        assert image.text["Comment"] == "Katy at the gala"


def test_imagemagick_raw_exif_text_is_filtered_like_exif(tmp_path, astronaut):
    exif = identifying_exif().tobytes()
    info = PngImagePlugin.PngInfo()
    # ImageMagick's layout: a blank line, the profile name, its length, then the bytes in hex.
    info.add_text("Raw profile type exif", f"\nexif\n{len(exif)}\n{exif.hex()}")
    photo = read_photo(save(astronaut, tmp_path / "in.png", pnginfo=info))
    default = write_photo(photo, photo.rgb, tmp_path / "default.png")
    data = default.read_bytes()
    assert searchable(CAPTION) not in data and searchable(CAPTION).hex().encode() not in data
    with Image.open(default) as image:
        assert image.getexif().get(ORIENTATION) == 1 and image.text == {}
    with Image.open(write_photo(photo, photo.rgb, tmp_path / "kept.png", keep_exif=True)) as image:
        assert image.getexif()[ExifTags.Base.ImageDescription] == CAPTION


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_xmp_is_dropped_by_default_and_kept_on_request(tmp_path, astronaut, suffix):
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><exif:GPSLatitude>48,51N</exif:GPSLatitude></x:xmpmeta>'
    if suffix == ".png":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", xmp.decode())
        source = save(astronaut, tmp_path / "in.png", pnginfo=info)
    else:
        source = save(astronaut, tmp_path / f"in{suffix}", xmp=xmp)
    photo = read_photo(source)
    assert photo.metadata.xmp == xmp

    default = write_photo(photo, photo.rgb, tmp_path / f"default{suffix}")
    kept = write_photo(photo, photo.rgb, tmp_path / f"kept{suffix}", keep_exif=True)

    assert b"GPSLatitude" not in default.read_bytes()
    assert b"GPSLatitude" in kept.read_bytes()


def test_xmp_orientation_is_kept_with_the_stored_pixels(tmp_path, astronaut):
    xmp = b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/>'
    stored = store_with_orientation(astronaut, 6)
    photo = read_photo(save(stored, tmp_path / "in.jpg", exif=oriented_exif(6), xmp=xmp))
    written = write_photo(photo, photo.rgb, tmp_path / "out.jpg", keep_exif=True)
    with Image.open(written) as image:
        assert image.info["xmp"] == xmp
        assert image.getexif()[ORIENTATION] == 6
        assert image.size == stored.size


def exif_with_thumbnail(thumbnail: bytes) -> bytes:
    """Big-endian EXIF whose IFD1 carries a JPEG thumbnail, as cameras write it."""
    ifd0_offset = 8
    ifd1_offset = ifd0_offset + 2 + 12 + 4
    thumbnail_offset = ifd1_offset + 2 + 2 * 12 + 4
    ifd0 = struct.pack(">H", 1) + struct.pack(">HHI4s", MAKE, 2, 4, b"Cam\0")
    ifd0 += struct.pack(">I", ifd1_offset)
    ifd1 = struct.pack(">H", 2)
    ifd1 += struct.pack(">HHII", 0x0201, 4, 1, thumbnail_offset)
    ifd1 += struct.pack(">HHII", 0x0202, 4, 1, len(thumbnail))
    ifd1 += struct.pack(">I", 0)
    return b"Exif\0\0MM\0\x2a" + struct.pack(">I", ifd0_offset) + ifd0 + ifd1 + thumbnail


def test_exif_thumbnail_of_the_uncloaked_photo_is_never_written(tmp_path, astronaut):
    thumbnail = b"\xff\xd8UNCLOAKED-FACE-THUMBNAIL\xff\xd9"
    source = save(astronaut, tmp_path / "in.jpg", exif=exif_with_thumbnail(thumbnail))
    assert thumbnail in source.read_bytes()
    photo = read_photo(source)
    written = write_photo(photo, photo.rgb, tmp_path / "out.jpg", keep_exif=True)
    assert thumbnail not in written.read_bytes()
    with Image.open(written) as image:
        assert image.getexif().get(MAKE) == "Cam"


def test_tiff_text_tags_are_dropped_by_default_and_kept_on_request(tmp_path, astronaut):
    tags = {
        ExifTags.Base.ImageDescription: CAPTION,
        ExifTags.Base.Artist: "Jane Photographer",
        ExifTags.Base.DocumentName: "perry-premiere.tiff",
        ExifTags.Base.HostComputer: "janes-laptop",
        ExifTags.Base.Copyright: "Copyright Jane Photographer",
        MAKE: "TestCam",
    }
    source = save(astronaut, tmp_path / "in.tiff", tiffinfo=tags, exif=gps_exif())
    photo = read_photo(source)

    default = write_photo(photo, photo.rgb, tmp_path / "default.tiff")
    kept = write_photo(photo, photo.rgb, tmp_path / "kept.tiff", keep_exif=True)

    data = default.read_bytes()
    assert [value for value in tags.values() if value.encode() in data] == []
    with Image.open(kept) as image:
        assert {tag: image.getexif().get(tag) for tag in tags} == tags
    for written in (default, kept):
        with Image.open(written) as image:
            assert GPS_IFD not in image.getexif()


def test_jpeg_comment_is_never_copied(tmp_path, astronaut):
    source = save(astronaut, tmp_path / "in.jpg", comment=CAPTION)
    assert CAPTION.encode() in source.read_bytes()
    written = write_photo(read_photo(source), _delta_for_block(read_photo(source), 3.7), tmp_path / "out.jpg")
    assert CAPTION.encode() not in written.read_bytes()


@pytest.mark.parametrize("quality", [80, 95])
def test_jpeg_quality_is_estimated_and_kept(tmp_path, astronaut, quality):
    source = save(astronaut, tmp_path / "in.jpg", quality=quality)
    photo = read_photo(source)
    assert abs(photo.metadata.jpeg_quality - quality) <= 5

    written = write_photo(photo, photo.rgb, tmp_path / "out.jpg")

    size_ratio = written.stat().st_size / source.stat().st_size
    assert 0.75 <= size_ratio <= 1.25, size_ratio
    assert abs(read_photo(written).metadata.jpeg_quality - quality) <= 5


def test_explicit_jpeg_quality_overrides_the_source(tmp_path, astronaut):
    photo = read_photo(save(astronaut, tmp_path / "in.jpg", quality=95))
    written = write_photo(photo, photo.rgb, tmp_path / "out.jpg", quality=60)
    assert read_photo(written).metadata.jpeg_quality == 60


def test_quality_estimate_without_tables_is_the_default():
    assert estimate_jpeg_quality(()) == DEFAULT_JPEG_QUALITY


@pytest.mark.parametrize(("subsampling", "pillow_code"), [("4:2:0", 2), ("4:4:4", 0)])
def test_chroma_subsampling_is_kept(tmp_path, astronaut, subsampling, pillow_code):
    source = save(astronaut, tmp_path / "in.jpg", quality=90, subsampling=subsampling)
    photo = read_photo(source)
    assert photo.metadata.jpeg_subsampling == subsampling
    with Image.open(write_photo(photo, cloak_block(photo.rgb), tmp_path / "out.jpg")) as image:
        assert JpegImagePlugin.get_sampling(image) == pillow_code


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tiff"])
def test_dpi_is_kept(tmp_path, astronaut, suffix):
    photo = read_photo(save(astronaut, tmp_path / f"in{suffix}", dpi=(300, 300)))
    with Image.open(write_photo(photo, photo.rgb, tmp_path / f"out{suffix}")) as image:
        assert np.allclose(image.info["dpi"], (300, 300), atol=0.01)


def test_lossy_webp_is_written_lossy(tmp_path, astronaut):
    photo = read_photo(save(astronaut, tmp_path / "in.webp", quality=80))
    assert not photo.metadata.webp_lossless
    written = write_photo(photo, photo.rgb, tmp_path / "out.webp")
    assert b"VP8 " in written.read_bytes()[:64]


# --- conversions --------------------------------------------------------------------------------


def test_cmyk_jpeg_is_processed_and_written_as_rgb(tmp_path, astronaut):
    photo = read_photo(save(astronaut.convert("CMYK"), tmp_path / "in.jpg", quality=95))
    assert photo.format == "JPEG" and photo.samples.shape == (120, 160, 3)
    assert any("CMYK" in note for note in photo.notes)
    with Image.open(write_photo(photo, photo.rgb, tmp_path / "out.jpg")) as image:
        assert image.mode == "RGB"
        assert np.abs(np.asarray(image, dtype=np.float32) - photo.rgb).mean() < 3


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_png_is_written_as_rgb_or_rgba(tmp_path, astronaut, transparent):
    palette = astronaut.quantize(64)
    options = {"transparency": 0} if transparent else {}
    source = save(palette, tmp_path / "in.png", **options)
    photo = read_photo(source)
    assert any("palette" in note for note in photo.notes)
    with Image.open(source) as image:
        expected = np.asarray(image.convert("RGBA" if transparent else "RGB"))
    assert (expected[..., 3] == 0).any() if transparent else expected.shape[2] == 3
    with Image.open(write_photo(photo, photo.rgb, tmp_path / "out.png")) as image:
        assert image.mode == ("RGBA" if transparent else "RGB")
        assert np.array_equal(np.asarray(image), expected)


def test_16_bit_colour_tiff_is_processed_at_8_bits_with_a_note(tmp_path):
    pixels = np.full((20, 30, 3), 257 * 200, np.uint16)
    source = tmp_path / "deep.tiff"
    cv2.imwrite(str(source), pixels)
    photo = read_photo(source)
    assert photo.bit_depth == 8 and np.all(photo.samples == 200)
    assert any("16-bit colour TIFF" in note for note in photo.notes)


def test_bilevel_image_becomes_8_bit_gray(tmp_path, astronaut):
    photo = read_photo(save(astronaut.convert("1"), tmp_path / "in.png"))
    assert photo.is_gray and photo.bit_depth == 8
    assert set(np.unique(photo.samples)) <= {0, 255}


def test_multi_picture_jpeg_uses_the_primary_picture(tmp_path, astronaut):
    source = tmp_path / "in.jpg"
    astronaut.save(source, "MPO", save_all=True, append_images=[astronaut.rotate(90)])
    photo = read_photo(source)
    assert photo.format == "JPEG" and photo.rgb.shape == (120, 160, 3)
    assert any("multi-picture" in note for note in photo.notes)


# --- bad input ----------------------------------------------------------------------------------


def assert_one_line_image_error(excinfo: pytest.ExceptionInfo, fragment: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    assert fragment in message


def test_not_an_image(tmp_path):
    source = tmp_path / "notes.jpg"
    source.write_text("this is not a photo")
    with pytest.raises(ImageError) as excinfo:
        read_photo(source)
    assert_one_line_image_error(excinfo, "not a photo")


def test_zero_byte_file(tmp_path):
    source = tmp_path / "empty.png"
    source.touch()
    with pytest.raises(ImageError) as excinfo:
        read_photo(source)
    assert_one_line_image_error(excinfo, "empty")


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_truncated_file(tmp_path, astronaut, suffix):
    complete = io.BytesIO()
    astronaut.save(complete, format=Image.registered_extensions()[suffix])
    source = tmp_path / f"cut{suffix}"
    source.write_bytes(complete.getvalue()[: len(complete.getvalue()) // 2])
    with pytest.raises(ImageError) as excinfo:
        read_photo(source)
    assert_one_line_image_error(excinfo, "re-export")


def test_pixel_limit_refuses_large_images(tmp_path):
    source = save(Image.new("RGB", (2000, 1000)), tmp_path / "big.png")
    with pytest.raises(ImageError) as excinfo:
        read_photo(source, max_pixels=1_000_000)
    assert_one_line_image_error(excinfo, "decompression bomb")
    assert read_photo(source, max_pixels=2_000_000).rgb.shape == (1000, 2000, 3)


def test_forged_giant_header_is_refused_before_decoding(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", 100_000, 100_000) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    source = tmp_path / "bomb.png"
    source.write_bytes(bytes(data))
    with pytest.raises(ImageError) as excinfo:
        read_photo(source)
    assert_one_line_image_error(excinfo, "decompression bomb")


@pytest.mark.parametrize(
    ("mode", "fragment"), [("F", "32-bit float"), ("I", "32-bit integer"), ("LAB", "mode LAB")]
)
def test_unsupported_sample_formats_are_refused(tmp_path, mode, fragment):
    source = save(Image.new(mode, (16, 12)), tmp_path / "odd.tiff")
    with pytest.raises(ImageError) as excinfo:
        read_photo(source)
    assert_one_line_image_error(excinfo, fragment)


def test_other_formats_are_refused_by_name(tmp_path, astronaut):
    source = save(astronaut, tmp_path / "in.ppm")
    with pytest.raises(ImageError) as excinfo:
        read_photo(source)
    assert_one_line_image_error(excinfo, "no JPEG, PNG, WebP, TIFF or BMP header")


def test_truncated_16_bit_png(tmp_path):
    source = tmp_path / "deep.png"
    cv2.imwrite(str(source), np.random.default_rng(0).integers(0, 65536, (64, 64, 3), np.uint16))
    data = source.read_bytes()
    source.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as excinfo:
        read_photo(source)
    assert_one_line_image_error(excinfo, "re-export")


def test_gif_is_refused(tmp_path, astronaut):
    source = save(astronaut.convert("P"), tmp_path / "still.gif")
    with pytest.raises(ImageError) as excinfo:
        read_photo(source)
    assert_one_line_image_error(excinfo, "GIF is not supported")


@pytest.mark.parametrize("suffix", [".webp", ".png", ".tiff"])
def test_animated_and_multi_frame_files_are_refused(tmp_path, astronaut, suffix):
    source = tmp_path / f"animated{suffix}"
    astronaut.save(source, save_all=True, append_images=[astronaut.rotate(180)])
    with pytest.raises(ImageError) as excinfo:
        read_photo(source)
    assert_one_line_image_error(excinfo, "2 frames")


def test_missing_file(tmp_path):
    with pytest.raises(ImageError) as excinfo:
        read_photo(tmp_path / "absent.jpg")
    assert_one_line_image_error(excinfo, "no such file")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ImageError) as excinfo:
        read_photo(tmp_path)
    assert_one_line_image_error(excinfo, "is a folder")


def test_unreadable_file(tmp_path, astronaut, monkeypatch):
    source = save(astronaut, tmp_path / "secret.png")
    if os.geteuid() == 0:
        # Root reads anything; simulate what the kernel reports to other users.
        real_open = os.open

        def refuse(path, *args, **kwargs):
            if Path(path) == source:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", refuse)
    else:
        source.chmod(0)
    with pytest.raises(ImageError) as excinfo:
        read_photo(source)
    assert_one_line_image_error(excinfo, "permission denied")


def test_output_directory_not_writable(tmp_path, astronaut, monkeypatch):
    photo = read_photo(save(astronaut, tmp_path / "in.png"))
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:
        # Root writes anywhere; simulate what the kernel reports to other users.
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(ulixes_onnx.atomic, "_create_temporary", refuse)
    else:
        locked.chmod(0o500)
    with pytest.raises(ImageError) as excinfo:
        write_photo(photo, photo.rgb, locked / "out.png")
    assert_one_line_image_error(excinfo, "not writable")
    assert list(locked.iterdir()) == []


def test_missing_output_directory(tmp_path, astronaut):
    photo = read_photo(save(astronaut, tmp_path / "in.png"))
    with pytest.raises(ImageError) as excinfo:
        write_photo(photo, photo.rgb, tmp_path / "absent" / "out.png")
    assert_one_line_image_error(excinfo, "does not exist")


def test_existing_output_is_kept_unless_overwrite(tmp_path, astronaut):
    photo = read_photo(save(astronaut, tmp_path / "in.png"))
    existing = tmp_path / "out.png"
    existing.write_bytes(b"precious")
    with pytest.raises(ImageError) as excinfo:
        write_photo(photo, photo.rgb, existing)
    assert_one_line_image_error(excinfo, "already exists")
    assert existing.read_bytes() == b"precious"

    write_photo(photo, photo.rgb, existing, overwrite=True)
    assert np.array_equal(reread(existing), np.asarray(astronaut))


def test_input_is_never_overwritten_even_with_overwrite(tmp_path, astronaut):
    source = save(astronaut, tmp_path / "in.png")
    before = source.read_bytes()
    photo = read_photo(source)
    with pytest.raises(ImageError) as excinfo:
        write_photo(photo, cloak_block(photo.rgb), tmp_path / "." / "in.png", overwrite=True)
    assert_one_line_image_error(excinfo, "input photo")
    assert source.read_bytes() == before


def test_failed_write_leaves_no_file_behind(tmp_path, astronaut, monkeypatch):
    photo = read_photo(save(astronaut, tmp_path / "in.png"))
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "link", fail)
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(ImageError) as excinfo:
        write_photo(photo, photo.rgb, out_dir / "out.png")
    assert_one_line_image_error(excinfo, "No space left")
    assert list(out_dir.iterdir()) == []


def test_file_systems_without_hard_links_still_get_the_file(tmp_path, astronaut, monkeypatch):
    photo = read_photo(save(astronaut, tmp_path / "in.png"))

    def unsupported(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", unsupported)
    written = write_photo(photo, photo.rgb, tmp_path / "out.png")
    assert np.array_equal(reread(written), np.asarray(astronaut))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.png", "out.png"]


def test_written_file_has_the_permissions_of_the_original(tmp_path, astronaut):
    source = save(astronaut, tmp_path / "in.png")
    source.chmod(0o640)
    photo = read_photo(source)
    written = write_photo(photo, photo.rgb, tmp_path / "out.png")
    assert written.stat().st_mode & 0o777 == 0o640


def test_rgb_of_the_wrong_shape_is_a_programming_error(tmp_path, astronaut):
    photo = read_photo(save(astronaut, tmp_path / "in.png"))
    with pytest.raises(ValueError, match="shape"):
        write_photo(photo, photo.rgb[:10], tmp_path / "out.png")


# --- output paths -------------------------------------------------------------------------------


def test_output_path_next_to_input_keeps_the_extension():
    assert output_path(Path("/photos/Holiday.JPG")) == Path("/photos/Holiday_cloaked.JPG")


def test_output_path_in_output_dir():
    assert output_path("/photos/a.png", output_dir="/out") == Path("/out/a_cloaked.png")


def test_output_path_refuses_the_input_itself(tmp_path):
    with pytest.raises(ImageError) as excinfo:
        output_path(tmp_path / "a.png", output_dir=tmp_path, suffix="")
    assert_one_line_image_error(excinfo, "input itself")
