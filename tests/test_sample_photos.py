"""The built-in sample photos ship with the package: scikit-image's pixels, with their sources and
licences, readable without scikit-image."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources

import numpy as np
import skimage.data
from PIL import Image

from ulixes_onnx.photos import samples

SHIPPED = ("astronaut.png", "cameraman.png")


def test_the_astronaut_is_scikit_images_pixel_for_pixel() -> None:
    photo = samples.astronaut()
    assert photo.dtype == np.uint8 and photo.flags.c_contiguous
    np.testing.assert_array_equal(photo, skimage.data.astronaut())


def test_the_cameraman_is_scikit_images_camera_in_three_equal_channels() -> None:
    photo = samples.cameraman()
    assert photo.shape == (512, 512, 3) and photo.dtype == np.uint8 and photo.flags.c_contiguous
    for channel in range(3):
        np.testing.assert_array_equal(photo[:, :, channel], skimage.data.camera())


def test_each_shipped_photo_names_its_source_and_licence() -> None:
    folder = resources.files("ulixes_onnx.sample_photos")
    sources = folder.joinpath("SOURCES.md").read_text()
    for name in SHIPPED:
        with folder.joinpath(name).open("rb") as file:
            text = Image.open(file).text
        assert text["Source"] and text["Copyright"], name
        assert f"`{name}`" in sources
    assert "public domain" in sources and "CC0" in sources


def test_the_samples_read_without_scikit_image_or_scipy() -> None:
    # What `models check`, the demo and model conversion run, in a process that cannot import them.
    script = """
import sys
sys.modules["skimage"] = sys.modules["scipy"] = None  # any import of them now fails
from ulixes_onnx.photos import samples
from ulixes_onnx.faces.canvas import ChipOperator
from ulixes_onnx.zoo.conversion import probe_chips
import numpy as np
assert samples.astronaut().shape == samples.cameraman().shape == (512, 512, 3)
assert probe_chips(150, 150).shape == (3, 3, 150, 150)
chip = ChipOperator(np.eye(2, 3), (160, 160), 150, sigma=0.0).forward(np.ones((160, 160, 3), np.float32))
assert chip.shape == (3, 150, 150)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
