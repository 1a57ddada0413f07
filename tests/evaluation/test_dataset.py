"""Dataset folders and pairs files: what is accepted, and a one-line error for each problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from ulixes_onnx.evaluation.dataset import DatasetError, Pair, load_dataset

PHOTOS = ("ann/1.jpg", "ann/2.png", "bob/1.jpg", "bob/2.jpg")


def _dataset(root: Path, pairs: str, photos: tuple[str, ...] = PHOTOS) -> Path:
    for name in photos:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"validation never decodes the photos")
    (root / "pairs.csv").write_text(pairs)
    return root


def _error(root: Path, **options: object) -> str:
    with pytest.raises(DatasetError) as raised:
        load_dataset(root, **options)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_a_valid_dataset_with_its_identities_and_pairs(tmp_path: Path) -> None:
    root = _dataset(
        tmp_path, "a,b,same\nann/1.jpg,ann/2.png,1\nann/1.jpg,bob\\1.jpg,false\nbob/1.jpg,bob/2.jpg,yes\n"
    )
    (tmp_path / "notes.txt").write_text("not a photo, ignored")
    dataset = load_dataset(root)
    assert dataset.photos == {"ann/1.jpg": "ann", "ann/2.png": "ann", "bob/1.jpg": "bob", "bob/2.jpg": "bob"}
    assert dataset.identities == ["ann", "bob"]
    assert dataset.pairs == (
        Pair("ann/1.jpg", "ann/2.png", True),
        Pair("ann/1.jpg", "bob/1.jpg", False),
        Pair("bob/1.jpg", "bob/2.jpg", True),
    )
    assert dataset.path("ann/1.jpg") == tmp_path / "ann" / "1.jpg"


def test_pairs_naming_missing_photos(tmp_path: Path) -> None:
    root = _dataset(tmp_path, "a,b,same\nann/1.jpg,ann/3.jpg,1\nbob/9.jpg,ann/1.jpg,0\n")
    message = _error(root)
    assert "2 photo(s)" in message and "ann/3.jpg" in message and "bob/9.jpg" in message


def test_a_label_that_contradicts_the_folders(tmp_path: Path) -> None:
    message = _error(_dataset(tmp_path, "a,b,same\nann/1.jpg,bob/1.jpg,1\n"))
    assert "line 2" in message and "different folders" in message


def test_a_photo_paired_with_itself(tmp_path: Path) -> None:
    assert "with itself" in _error(_dataset(tmp_path, "a,b,same\nann/1.jpg,ann/1.jpg,1\n"))


def test_an_unreadable_same_value_names_its_line(tmp_path: Path) -> None:
    message = _error(_dataset(tmp_path, "a,b,same\nann/1.jpg,ann/2.png,1\nann/1.jpg,bob/1.jpg,maybe\n"))
    assert "line 3" in message and "'maybe'" in message


def test_a_pairs_file_without_the_columns_or_pairs(tmp_path: Path) -> None:
    assert "a,b,same" in _error(_dataset(tmp_path, "first,second,label\nann/1.jpg,ann/2.png,1\n"))
    assert "no pairs" in _error(_dataset(tmp_path, "a,b,same\n"))
    (tmp_path / "pairs.csv").unlink()
    assert "not found" in _error(tmp_path)


def test_identities_with_a_single_photo_are_refused_unless_allowed(tmp_path: Path) -> None:
    root = _dataset(tmp_path, "a,b,same\nann/1.jpg,ann/2.png,1\n", (*PHOTOS, "cy/1.jpg"))
    message = _error(root)
    assert "cy" in message and "--allow-single" in message
    assert load_dataset(root, allow_single=True).single_photo_identities == ("cy",)


def test_photos_outside_identity_folders(tmp_path: Path) -> None:
    root = _dataset(tmp_path, "a,b,same\nann/1.jpg,ann/2.png,1\n", (*PHOTOS, "loose.jpg"))
    assert "loose.jpg" in _error(root)


def test_not_a_folder_or_no_photos_or_one_person(tmp_path: Path) -> None:
    assert "not a folder" in _error(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert "no photos" in _error(tmp_path / "empty")
    one = _dataset(tmp_path / "one", "a,b,same\nann/1.jpg,ann/2.png,1\n", PHOTOS[:2])
    assert "at least two" in _error(one)
