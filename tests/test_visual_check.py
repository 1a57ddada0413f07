"""tools/visual_check.py: per face a 1:1 side-by-side panel with its scores, and an index."""

from __future__ import annotations

import importlib.util
import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ulixes_onnx.cloaking.visibility import face_region, face_visibility
from ulixes_onnx.faces import detector_from_store
from ulixes_onnx.photos import samples
from ulixes_onnx.store import ModelStore

_spec = importlib.util.spec_from_file_location(
    "visual_check", Path(__file__).resolve().parents[1] / "tools" / "visual_check.py"
)
visual_check = importlib.util.module_from_spec(_spec)
sys.modules["visual_check"] = visual_check  # dataclasses look their module up there
_spec.loader.exec_module(visual_check)


def _panels(out: Path) -> list[Path]:
    return sorted(out.glob("*-face*-s2_*.png"))


def _check_panel(panel: Path, original: np.ndarray, cloaked: np.ndarray, box: tuple) -> None:
    """The panel holds the face region of both photos at 1:1 and the amplified difference."""
    sheet = np.asarray(Image.open(panel).convert("RGB"))
    rows, cols = face_region(box, original.shape)
    height, width = rows.stop - rows.start, cols.stop - cols.start
    top = visual_check.CAPTION_HEIGHT
    assert sheet.shape == (top + height, 3 * width + 2 * visual_check.GAP, 3)
    step = width + visual_check.GAP
    np.testing.assert_array_equal(sheet[top:, :width], original[rows, cols])
    np.testing.assert_array_equal(sheet[top:, step : step + width], cloaked[rows, cols])
    difference = cloaked[rows, cols].astype(int) - original[rows, cols].astype(int)
    expected = np.clip(128 + visual_check.DIFFERENCE_GAIN * difference, 0, 255)
    np.testing.assert_array_equal(sheet[top:, 2 * step :], expected)
    score = float(re.search(r"-s2_([\d.]+)\.png$", panel.name).group(1))
    assert score == pytest.approx(face_visibility(original, cloaked, box).ssimulacra2, abs=0.05)


def test_cloaks_the_astronaut_and_writes_a_panel_per_face(tmp_path: Path, store: ModelStore) -> None:
    photo = tmp_path / "astronaut.png"
    Image.fromarray(samples.astronaut()).save(photo)
    out = tmp_path / "check"
    code = visual_check.main(
        [
            str(photo),
            "--out",
            str(out),
            "--threads",
            "1",
            "--set",
            "max_rounds=2",
            "--models-dir",
            str(store.root),
        ]
    )
    assert code == 0
    cloaked = np.asarray(Image.open(out / "cloaked" / "astronaut_cloaked.png").convert("RGB"))
    (panel,) = _panels(out)  # the mission patch is too small to cloak and gets no panel
    (face,) = [found for found in detector_from_store(store).detect(samples.astronaut()) if found.width > 60]
    _check_panel(panel, samples.astronaut(), cloaked, face.box)
    index = (out / "index.html").read_text()
    assert f'<img src="{panel.name}"' in index and "SSIMULACRA2" in index


def test_compares_given_pairs_without_cloaking(tmp_path: Path, store: ModelStore) -> None:
    originals, copies = tmp_path / "originals", tmp_path / "copies"
    originals.mkdir()
    copies.mkdir()
    Image.fromarray(samples.astronaut()).save(originals / "a.png")
    buffer = io.BytesIO()
    Image.fromarray(samples.astronaut()).save(buffer, "JPEG", quality=40)
    changed = np.asarray(Image.open(buffer).convert("RGB"))
    Image.fromarray(changed).save(copies / "a_cloaked.png")
    Image.fromarray(samples.astronaut()).save(originals / "orphan.png")
    out = tmp_path / "check"
    code = visual_check.main(
        [str(originals), "--cloaked", str(copies), "--out", str(out), "--models-dir", str(store.root)]
    )
    assert code == 1  # orphan.png has no cloaked copy
    faces = detector_from_store(store).detect(samples.astronaut())
    panels = _panels(out)
    assert len(panels) == len(faces)
    for panel in panels:
        index = int(re.search(r"-face(\d+)-", panel.name).group(1))
        _check_panel(panel, samples.astronaut(), changed, faces[index].box)
    index = (out / "index.html").read_text()
    assert "orphan.png: no cloaked copy" in index


def test_bad_settings_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    photo = tmp_path / "a.png"
    Image.fromarray(samples.astronaut()).save(photo)
    assert visual_check.main([str(photo), "--out", str(tmp_path / "o"), "--set", "nonsense"]) == 1
    assert capsys.readouterr().err.strip() == "error: --set takes name=value, not 'nonsense'"
    assert visual_check.main([str(photo), "--out", str(tmp_path / "o"), "--set", "no_such_setting=1"]) == 1
    assert "no_such_setting" in capsys.readouterr().err
