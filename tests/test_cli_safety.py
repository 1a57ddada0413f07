"""`cloak` never loses, overwrites or leaks a photo, and says honestly what it did (issue 19, 16)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from tests.peak_rss import run_measuring_peak_rss
from tests.test_cli import run_cli
from ulixes_onnx.errors import ImageError
from ulixes_onnx.faces.pasteback import too_small_reason
from ulixes_onnx.photos import samples
from ulixes_onnx.photos.decoding import read_photo
from ulixes_onnx.photos.encoding import write_photo
from ulixes_onnx.store import ModelStore

COFFEE = np.ascontiguousarray(skimage.data.coffee())  # no face: cheap to process


def _photo(path: Path, pixels: np.ndarray = COFFEE, **options: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line]


def test_json_over_an_input_is_refused_before_any_work(tmp_path: Path, store: ModelStore) -> None:
    photo = _photo(tmp_path / "photo.jpg")
    before = photo.read_bytes()
    result = run_cli("cloak", str(photo), "--json", str(photo), "--overwrite", models_dir=store.root)
    assert result.returncode == 2 and "is the input" in result.stderr and "Traceback" not in result.stderr
    assert photo.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["photo.jpg"]


def test_json_never_replaces_an_existing_file_unless_asked(tmp_path: Path, store: ModelStore) -> None:
    photo = _photo(tmp_path / "photo.jpg")
    report = tmp_path / "report.json"
    report.write_text("keep")
    result = run_cli("cloak", str(photo), "--json", str(report), models_dir=store.root)
    assert result.returncode == 2 and "exists already" in result.stderr and report.read_text() == "keep"
    result = run_cli("cloak", str(photo), "--json", str(report), "--overwrite", models_dir=store.root)
    assert result.returncode == 8 and json.loads(report.read_text())["files"][0]["status"] == "no face"


def test_json_dash_is_stdout_and_results_go_to_stderr(tmp_path: Path, store: ModelStore) -> None:
    photo = _photo(tmp_path / "photo.jpg")
    result = run_cli("cloak", str(photo), "--json", "-", models_dir=store.root)
    assert result.returncode == 8
    document = json.loads(result.stdout)
    assert document["files"][0]["file"] == str(photo) and document["interrupted"] is False
    assert f"no face: {photo}" in result.stderr
    assert not Path("-").exists()  # the command ran in this folder


def test_same_names_colliding_in_the_output_folder_are_refused(tmp_path: Path, store: ModelStore) -> None:
    first, second = _photo(tmp_path / "a" / "same.jpg"), _photo(tmp_path / "b" / "same.jpg")
    out = tmp_path / "o"
    result = run_cli(
        "cloak", str(first), str(second), "--output-dir", str(out), "--overwrite", "--no-face", "copy",
        models_dir=store.root,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{first} and {second} would both be written to {out / 'same_cloaked.jpg'}" in result.stderr
    assert not out.exists()


def test_an_output_that_is_another_input_is_refused(tmp_path: Path, store: ModelStore) -> None:
    photo, other = _photo(tmp_path / "x.jpg"), _photo(tmp_path / "x_cloaked.jpg")
    before = other.read_bytes()
    result = run_cli(
        "cloak", str(photo), str(other), "--overwrite", "--no-face", "copy", models_dir=store.root
    )
    assert result.returncode == 2 and "would be written over the input" in result.stderr
    assert other.read_bytes() == before


@pytest.mark.parametrize("suffix", ["/../../x", "_a/b"])
def test_suffix_cannot_leave_the_output_folder(tmp_path: Path, suffix: str) -> None:
    photo = _photo(tmp_path / "in" / "x.jpg")
    result = run_cli("cloak", str(photo), "--output-dir", str(tmp_path / "out"), "--suffix", suffix)
    assert result.returncode == 2 and "path separator" in result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["in", "x.jpg"]


def test_huge_special_and_looping_inputs_are_refused_without_reading_them(
    tmp_path: Path, warm_store: ModelStore
) -> None:
    big_fake = tmp_path / "big.jpg"  # 3 GB, sparse: not an image
    with big_fake.open("wb") as stream:
        stream.truncate(3 << 30)
    big_jpeg = tmp_path / "bigger.jpg"  # a JPEG header, then 3 GB more than any allowed photo
    with big_jpeg.open("wb") as stream:
        stream.write(b"\xff\xd8\xff\xe0")
        stream.truncate(3 << 30)
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    arguments = [
        str(tmp_path / name) for name in ("big.jpg", "bigger.jpg", "pipe.jpg", "zero.jpg", "loop.jpg")
    ]
    with (tmp_path / "stdout").open("w") as stdout, (tmp_path / "stderr").open("w") as stderr:
        code, peak_kib = run_measuring_peak_rss(
            [sys.executable, "-m", "ulixes_onnx", "--models-dir", str(warm_store.root), "cloak", *arguments],
            tmp_path, stdout, stderr,
        )  # fmt: skip
    assert code == 5
    assert "Traceback" not in (tmp_path / "stderr").read_text()
    lines = _lines((tmp_path / "stdout").read_text())
    assert len(lines) == 5 and all(line.startswith("error: ") for line in lines)
    assert "not a photo" in lines[0] and "more than a photo within the pixel limit" in lines[1]
    assert "FIFO" in lines[2] and "character device" in lines[3] and "symlink loop" in lines[4]
    assert peak_kib < 1_000_000  # none of the 3 GB files was read


def test_stale_temporary_files_of_a_killed_run_are_removed(tmp_path: Path, store: ModelStore) -> None:
    photo = _photo(tmp_path / "x.jpg")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".x_cloaked.jpg.{dead.pid}.0123abcd.part"
    stale.write_bytes(b"\xff\xd8 a complete copy a killed run left behind")
    result = run_cli("cloak", str(photo), models_dir=store.root)
    assert result.returncode == 8 and not stale.exists()


def test_long_names_are_written(tmp_path: Path, store: ModelStore) -> None:
    photo = _photo(tmp_path / ("n" * 236 + ".jpg"))
    result = run_cli("cloak", str(photo), "--no-face", "copy", models_dir=store.root)
    assert result.returncode == 8, result.stdout
    assert (tmp_path / ("n" * 236 + "_cloaked.jpg")).is_file()


def test_bomb_message_names_the_option_that_raises_the_limit(tmp_path: Path, store: ModelStore) -> None:
    photo = _photo(tmp_path / "wide.png", np.zeros((40, 500, 3), np.uint8))
    result = run_cli("cloak", str(photo), "--max-pixels", "10000", models_dir=store.root)
    assert result.returncode == 5 and "raise the limit with cloak --max-pixels" in result.stdout
    assert "178,956,970" not in result.stdout
    result = run_cli("cloak", str(photo), "--max-pixels", "20000", models_dir=store.root)
    assert result.returncode == 8, result.stdout


def test_damaged_files_are_called_damaged(tmp_path: Path, store: ModelStore) -> None:
    jpeg = _photo(tmp_path / "cut.jpg")
    jpeg.write_bytes(jpeg.read_bytes()[:20])
    png = _photo(tmp_path / "cut.png")
    png.write_bytes(png.read_bytes()[:30])
    result = run_cli("cloak", str(jpeg), str(png), models_dir=store.root)
    lines = _lines(result.stdout)
    assert "damaged or truncated JPEG" in lines[0] and "damaged or truncated PNG" in lines[1]
    assert "use JPEG, PNG" not in result.stdout


def test_every_skipped_folder_entry_has_a_line(tmp_path: Path, store: ModelStore) -> None:
    folder = tmp_path / "photos"
    _photo(folder / "portrait.jpg")
    _photo(folder / "selfie_cloaked.jpg")  # a real photo with an output's name
    _photo(folder / "anim.gif")
    (folder / "README").write_text("no extension")
    (folder / "gone.jpg").symlink_to(folder / "nowhere.jpg")
    os.mkfifo(folder / "pipe.jpg")
    (folder / "linked").symlink_to(tmp_path)
    result = run_cli("cloak", str(folder), models_dir=store.root)
    assert result.returncode == 8 and "Traceback" not in result.stderr
    lines = {line.split(" (")[0]: line for line in _lines(result.stdout)}
    reasons = {
        "selfie_cloaked.jpg": "earlier output",
        "anim.gif": ".gif files are not cloaked",
        "README": "without an extension",
        "gone.jpg": "broken symlink",
        "pipe.jpg": "FIFO",
        "linked": "symlink to a folder",
    }
    for name, reason in reasons.items():
        assert reason in lines[f"skipped: {folder / name}"]
    assert f"no face: {folder / 'portrait.jpg'}" in lines
    assert len(lines) == 7 and "6 entries skipped" in result.stderr


def test_a_glob_skips_earlier_outputs_with_a_line(tmp_path: Path, store: ModelStore) -> None:
    _photo(tmp_path / "x.jpg")
    _photo(tmp_path / "y_cloaked.jpg")
    result = run_cli("cloak", str(tmp_path / "*.jpg"), "--no-face", "copy", models_dir=store.root)
    assert result.returncode == 8
    assert f"skipped: {tmp_path / 'y_cloaked.jpg'} (the name ends with _cloaked" in result.stdout
    assert sorted(os.listdir(tmp_path)) == ["x.jpg", "x_cloaked.jpg", "y_cloaked.jpg"]


def test_skip_existing_resumes_a_folder(tmp_path: Path, store: ModelStore) -> None:
    folder = _photo(tmp_path / "photos" / "a.jpg").parent
    _photo(folder / "b.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_cloaked.jpg").write_bytes(b"done earlier")
    arguments = ["cloak", str(folder), "--output-dir", str(out), "--no-face", "copy"]
    refused = run_cli(*arguments, models_dir=store.root)
    assert refused.returncode == 5 and "--skip-existing" in refused.stdout
    (out / "b_cloaked.jpg").unlink()  # as if the first run had been stopped before b
    resumed = run_cli(*arguments, "--skip-existing", models_dir=store.root)
    assert resumed.returncode == 8, resumed.stdout  # b has no face
    assert f"skipped: {folder / 'a.jpg'} ({out / 'a_cloaked.jpg'} exists already" in resumed.stdout
    assert (out / "a_cloaked.jpg").read_bytes() == b"done earlier" and (out / "b_cloaked.jpg").is_file()


def test_result_lines_are_unwrapped_literal_and_on_stdout(tmp_path: Path, store: ModelStore) -> None:
    folder = tmp_path / "bad[" / ("deep-" * 20)
    unreadable = folder / "]empty.jpg"
    unreadable.parent.mkdir(parents=True)
    unreadable.write_bytes(b"")
    later = _photo(folder / "[red]later[/red].jpg")
    result = run_cli("cloak", str(tmp_path / "bad["), models_dir=store.root)
    assert result.returncode == 5 and "Traceback" not in result.stderr
    assert _lines(result.stdout) == [
        f"error: {unreadable}: the file is empty (0 bytes); it is not a photo",
        f"no face: {later} (nothing written; --no-face copy writes it unchanged)",
    ]
    assert "summary" in result.stderr and "summary" not in result.stdout


def test_missing_paths_and_no_output_folder_without_outputs(tmp_path: Path, store: ModelStore) -> None:
    photo = _photo(tmp_path / "x.jpg")
    out = tmp_path / "out"
    result = run_cli(
        "cloak", str(photo), str(tmp_path / "gone"), "--output-dir", str(out), models_dir=store.root
    )
    assert result.returncode == 5
    assert f"error: {tmp_path / 'gone'}: no such file or folder" in result.stdout
    assert not out.exists()


def test_pillow_warnings_become_the_files_note(tmp_path: Path, store: ModelStore) -> None:
    exif = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00\x0f\x01\x02\x00\xff\xff\x00\x00\x50\x00\x00\x00"
    photo = _photo(tmp_path / "x.jpg", exif=exif)
    result = run_cli("cloak", str(photo), models_dir=store.root)
    assert result.returncode == 8 and "Warning" not in result.stderr
    (line,) = _lines(result.stdout)
    assert line.startswith(f"no face: {photo}") and "note: Pillow: Corrupt EXIF data" in line


def test_a_model_build_is_announced(tmp_path: Path) -> None:
    result = run_cli("models", "build", "mtcnn", models_dir=tmp_path)
    assert result.returncode == 0
    assert f"ulixes-onnx: building model mtcnn into {tmp_path} (first use" in result.stderr


def test_a_tampered_model_is_rebuilt_with_a_message(tmp_path: Path, store: ModelStore) -> None:
    ModelStore(tmp_path).get("mtcnn")
    model = next((tmp_path / "mtcnn").glob("*.onnx"))
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    result = run_cli("models", "build", "mtcnn", models_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "is damaged (sha256 mismatch); rebuilding it" in result.stderr
    assert ModelStore(tmp_path).get("mtcnn", build=False)  # verified again


def _read_only(folder: Path) -> None:
    """Make `folder` read-only even for root (a read-only bind mount); unmounted by the caller."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("root without mount: a read-only folder cannot be made")
    subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)


def _undo_read_only(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["umount", str(folder)], check=True)
    else:
        folder.chmod(0o755)


def test_read_only_output_folder_is_one_line_per_photo(tmp_path: Path, store: ModelStore) -> None:
    photo = _photo(tmp_path / "x.jpg")
    out = tmp_path / "out"
    out.mkdir()
    _read_only(out)
    try:
        result = run_cli(
            "cloak", str(photo), "--output-dir", str(out), "--no-face", "copy", models_dir=store.root
        )
    finally:
        _undo_read_only(out)
    assert result.returncode == 5 and "Traceback" not in result.stderr
    (line,) = _lines(result.stdout)
    assert line.startswith(f"error: {photo}:") and "not writable" in line
    assert os.listdir(out) == []


def test_read_only_model_store(tmp_path: Path, store: ModelStore) -> None:
    photo = _photo(tmp_path / "x.jpg")
    copy = tmp_path / "models"
    subprocess.run(["cp", "-a", str(store.root), str(copy)], check=True)
    _read_only(copy)
    try:
        intact = run_cli("cloak", str(photo), models_dir=copy)
    finally:
        _undo_read_only(copy)
    assert intact.returncode == 8, intact.stderr  # built models and their graphs only need reading
    for derived in (copy / "dlib-resnet").glob("*-optimised-*"):
        derived.unlink()
    _read_only(copy)
    try:
        missing = run_cli("cloak", str(photo), models_dir=copy)
    finally:
        _undo_read_only(copy)
    assert missing.returncode == 3 and "Traceback" not in missing.stderr
    assert "--models-dir" in missing.stderr.splitlines()[-1]


def _start(arguments: list[str], store: ModelStore) -> subprocess.Popen:
    command = [sys.executable, "-m", "ulixes_onnx", "--models-dir", str(store.root), "cloak", *arguments]
    # A test run started in the background (nohup, `&` in a script) ignores SIGINT, and so would the
    # child: give it the default, as in a terminal.
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _faces_folder(tmp_path: Path, count: int) -> Path:
    folder = tmp_path / "faces"
    for index in range(count):
        _photo(folder / f"{index:02d}.png", samples.shifted(samples.astronaut(), index, 0))
    return folder


def _wait_for_a_result_line(process: subprocess.Popen) -> str:
    line = process.stdout.readline()
    assert line, process.stderr.read()
    return line


@pytest.mark.slow  # cloaks a folder of photos twice
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_batch_resumes(tmp_path: Path, store: ModelStore, stop: signal.Signals) -> None:
    folder = _faces_folder(tmp_path, 5)
    out, report = tmp_path / "out", tmp_path / "report.json"
    arguments = [str(folder), "--output-dir", str(out), "--batch", "1", "--json", str(report)]
    process = _start(arguments, store)
    _wait_for_a_result_line(process)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=120)
    if stop == signal.SIGINT:
        assert process.returncode == 130 and "Traceback" not in stderr
        assert "interrupted after" in stderr and "--skip-existing" in stderr and "summary" in stderr
        document = json.loads(report.read_text())
        assert document["interrupted"] is True and 1 <= len(document["files"]) < 5
    else:
        assert process.returncode == -signal.SIGKILL
    written = sorted(path.name for path in out.iterdir())
    assert all(not name.endswith(".part") for name in written) or stop == signal.SIGKILL
    resumed = run_cli("cloak", *arguments[:-2], "--skip-existing", models_dir=store.root)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert sorted(path.name for path in out.iterdir()) == [f"{index:02d}_cloaked.png" for index in range(5)]


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo = read_photo(_photo(tmp_path / "x.png"))
    before = (tmp_path / "x.png").read_bytes()

    def full(descriptor: int) -> None:
        del descriptor
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ImageError, match=r"x_cloaked.png: cannot write \(No space left on device\)"):
        write_photo(photo, photo.rgb, tmp_path / "x_cloaked.png")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["x.png"] and (tmp_path / "x.png").read_bytes() == before


def test_too_small_never_reads_as_equal_to_its_minimum() -> None:
    reason = too_small_reason(0.3329, 1 / 3)
    assert reason == "one chip pixel covers 0.332 photo pixels, less than the 0.334 needed"
