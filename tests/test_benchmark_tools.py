"""benchmarks/same_cloak.py (comparison of two versions' cloaks), stage_profile.py's clocks and
protection_calibration.py's tables."""

from pathlib import Path

import numpy as np
import pytest

from benchmarks.protection_calibration import SamePair, alignment_rows, calibration_table
from benchmarks.same_cloak import compare
from benchmarks.stage_profile import CLOCKS, StageClock, markdown
from benchmarks.transfer_proxy import given_photos
from benchmarks.visibility_baseline import markdown as visibility_markdown


def _run(steps: int, distance: float) -> dict:
    face = {
        "box": [1.0, 2.0, 30.0, 40.0],
        "rounds": 1,
        "protected": True,
        "ssimulacra2": 88.0 + distance,
        "dssim": 0.01,
        "models": {
            "m": {
                "steps": steps,
                "stop_reason": "done",
                "chip_dssim": 0.0,
                "chip_distance": distance,
                "distance": distance,
            }
        },
    }
    return {"api": [face], "file": [face], "peak RSS (MB)": 100.0}


def _pixels(path: Path, image: np.ndarray, saved: np.ndarray) -> Path:
    np.savez(path, image=image, saved=saved)
    return path


def test_comparison_finds_equal_and_different_cloaks(tmp_path: Path) -> None:
    image = np.random.default_rng(0).uniform(0, 255, (8, 8, 3)).astype(np.float32)
    saved = image.astype(np.uint8)
    first = _pixels(tmp_path / "a.npz", image, saved)
    same = compare(_run(5, 0.7), _run(5, 0.7), first, _pixels(tmp_path / "b.npz", image.copy(), saved))
    assert same["max |float pixel difference|"] == 0
    assert same["saved pixels that differ"] == 0
    assert same["api: same faces, steps, stop reasons, rounds"] is True
    assert same["file: max |distance difference|"] == 0
    assert same["file: max |face DSSIM difference|"] == 0

    changed_saved = saved.copy()
    changed_saved[0, 0, 1] += 2
    other = _pixels(tmp_path / "c.npz", image + np.float32(0.25), changed_saved)
    different = compare(_run(5, 0.7), _run(6, 0.75), first, other)
    assert different["max |float pixel difference|"] == pytest.approx(0.25, abs=1e-4)
    assert different["max |saved pixel difference|"] == 2
    assert different["saved pixels that differ"] == 1
    assert different["api: same faces, steps, stop reasons, rounds"] is False
    assert different["api: max |distance difference|"] == pytest.approx(0.05)


def test_stage_clock_counts_exclusive_time_on_the_clock_given() -> None:
    ticks = iter([0.0, 1.0, 3.0, 10.0])
    clock = StageClock(lambda: next(ticks))
    inner = clock.wrap(lambda: None, "inner")
    outer = clock.wrap(inner, "outer")
    outer()
    # outer from 0 to 10, inner from 1 to 3: outer's own time is 8.
    assert clock.take() == {"outer/inner": 2.0, "outer": 8.0}
    assert set(CLOCKS) == {"wall", "cpu"}


def test_markdown_names_its_clock() -> None:
    run = {
        "python -c pass": 0.01,
        "--help": 0.2,
        "cloak (CLI, process start included)": {"a.png": 2.0},
        "imports": 0.3,
        "loading": {"load models": 0.1},
        "photos": {"a.png": {"total": 1.5, "faces": 1, "stages": {"cloak loop": 1.0, "decode": 0.5}}},
    }
    table = markdown(["before", "after"], [run, run], "cpu")
    assert "| process (cpu s) | before | after | last/first |" in table
    assert "a.png, 1 face(s), warm (cpu s)" in table
    assert "| **outside the cloak loop** | 0.500 | 0.500 | 1.00 |" in table


def test_the_visibility_table_says_where_the_score_is_lost() -> None:
    def row(width: int, by_scale: list[float]) -> dict:
        return {
            "photo": f"A/{width}.jpg", "face_width": width, "region": f"{width}x{width}", "protected": True,
            "distance": "0.80", "saved": 70.0, "cloak_alone": 71.0, "jpeg_q90": 90.0, "dssim": 0.01,
            "loss_by_scale": by_scale, "loss_in_luma": 0.9, "loss_in_ssim": 0.8, "metric_ms": 20.0,
            "steps": 100, "rounds": 1, "colour_shift": width / 300,
        }  # fmt: skip

    # A small region has fewer scales: the missing ones lose nothing.
    table = visibility_markdown(
        [row(900, [0.1, 0.1, 0.4, 0.2, 0.2, 0.0]), row(60, [0.5, 0.3, 0.2, 0.0, 0.0])], "cmd"
    )
    assert "| 10/10/40/20/20/0 | 90, 80 | 3.0 |" in table
    assert "| 50/30/20/0/0 | 90, 80 | 0.2 |" in table
    assert "Loss by scale, mean: 30/20/30/10/10/0 %; in Y 90 %, in SSIM maps 80 %." in table
    assert "largest local colour shift mean 1.6, max 3.0." in table


def test_the_transfer_proxy_takes_given_photos_with_their_folders_others(tmp_path: Path) -> None:
    for person, names in {"A": ["1.jpg", "2.png", "notes.txt"], "B": ["3.jpg", "4.jpg", "5.jpg"]}.items():
        (tmp_path / person).mkdir()
        for name in names:
            (tmp_path / person / name).write_bytes(b"")
    chosen = given_photos([tmp_path / "B" / "4.jpg", tmp_path / "A" / "2.png"])
    assert chosen == [
        (tmp_path / "B" / "4.jpg", [tmp_path / "B" / "3.jpg", tmp_path / "B" / "5.jpg"]),
        (tmp_path / "A" / "2.png", [tmp_path / "A" / "1.jpg"]),
    ]


def test_protection_calibration_finds_where_pairs_stop_matching() -> None:
    # Threshold 0.5: no face moved past 0.5 matches its other photo; one of the two moved 0.5 does.
    pairs = [
        SamePair("mid", f"b{index}", saved, 0.3, cloaked)
        for index, (saved, cloaked) in enumerate(
            [(0.45, 0.40), (0.50, 0.45), (0.50, 0.55), (0.60, 0.62), (0.70, 0.75), (0.80, 0.85)]
        )
    ]
    rows, supported = calibration_table(0.5, pairs, tp_bar=0.02, extra={"`low`": 0.51})
    assert supported == pytest.approx(0.525)
    at_threshold = next(row for row in rows if row.startswith("| 1.00 "))
    assert "| 5 / 6 | 5 | 20.0% (1) |" in at_threshold
    assert any(row.startswith("| `low` | 0.510 | 3 / 6 | 3 | 0.0% (0) |") for row in rows)
    # the threshold is the floor: a copy nearer than it matches its own original
    assert calibration_table(0.5, pairs, tp_bar=0.5)[1] == pytest.approx(0.5)
    assert calibration_table(0.5, pairs[:3], tp_bar=0.02)[1] is None


def test_the_alignment_of_cloak_and_other_photo_sets_the_worst_case() -> None:
    # Euclidean, threshold 0.6: the cloak moves orthogonally to the other photo (rho 0) or at 60
    # degrees to it (rho 0.5), whose worst case lies at 0.6 / sqrt(0.75).
    orthogonal = SamePair("low", "b0", 0.8, 0.4, float(np.hypot(0.8, 0.4)))
    leaning = SamePair("low", "b1", 0.8, 0.4, float(np.sqrt(0.8**2 + 0.4**2 - 0.8 * 0.4)))
    rows = alignment_rows(0.6, "euclidean", [orthogonal, leaning])
    assert rows[-1] == f"| 100 | 0.500 | {0.6 / np.sqrt(0.75):.3f} |"
    assert rows[2] == "| 5 | 0.025 | 0.600 |"
