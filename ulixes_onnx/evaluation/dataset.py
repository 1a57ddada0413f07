"""An evaluation dataset: a folder of `identity/photo.ext` files and a list of verification pairs.

`pairs.csv` has the columns `a,b,same`: two photo paths relative to the dataset folder and whether they
show the same person (1/0, true/false or yes/no). Everything is checked before any work starts, and each
problem is reported as one line naming what is wrong and how to fix it.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ulixes_onnx.cloaking.files import PHOTO_SUFFIXES
from ulixes_onnx.errors import UlixesError

PAIR_COLUMNS = ("a", "b", "same")
_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no")
# How many offending names a message lists before it only counts the rest.
_NAMES_SHOWN = 5


class DatasetError(UlixesError):
    """The dataset folder or its pairs file cannot be used as given."""


@dataclass(frozen=True)
class Pair:
    """Two photos (paths relative to the dataset folder) and whether they show the same person."""

    a: str
    b: str
    same: bool


@dataclass(frozen=True)
class Dataset:
    """Photos by relative path with their identity (their folder's name), and the verification pairs.

    `single_photo_identities` are identities with only one photo; they take part in verification and
    clustering but not in identification, which needs a photo to learn from and another to test.
    """

    root: Path
    photos: dict[str, str]
    pairs: tuple[Pair, ...]
    single_photo_identities: tuple[str, ...] = ()

    def path(self, photo: str) -> Path:
        return self.root / photo

    @property
    def identities(self) -> list[str]:
        return sorted(set(self.photos.values()))


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    more = len(names) - _NAMES_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def find_photos(root: Path) -> dict[str, str]:
    """Every photo `identity/photo.ext` under `root`, by relative path, with its identity."""
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; give a folder of identity/photo files")
    photos: dict[str, str] = {}
    misplaced = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in PHOTO_SUFFIXES:
            continue
        relative = path.relative_to(root)
        if len(relative.parts) != 2:
            misplaced.append(relative.as_posix())
            continue
        photos[relative.as_posix()] = relative.parts[0]
    if misplaced:
        raise DatasetError(
            f"{root}: photos must sit one level down, in a folder named after the person "
            f"(identity/photo.jpg); move or remove {_listed(misplaced)}"
        )
    if not photos:
        raise DatasetError(
            f"{root}: no photos found; expected identity/photo files ({', '.join(PHOTO_SUFFIXES)})"
        )
    return photos


def _parse_same(value: str | None, where: str) -> bool:
    text = (value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise DatasetError(f"{where}: 'same' must be 1 or 0 (or true/false), got {value!r}")


def _normalised(value: str | None) -> str:
    # Pairs files written on Windows may use backslashes; the dataset's keys are POSIX paths.
    return PurePosixPath((value or "").strip().replace("\\", "/")).as_posix()


def read_pairs(pairs_file: Path, photos: dict[str, str], root: Path) -> tuple[Pair, ...]:
    """The pairs in `pairs_file`, each checked against the photos and their identities."""
    try:
        with pairs_file.open(newline="", encoding="utf-8-sig") as stream:
            rows = list(csv.DictReader(stream))
            header = tuple(rows[0].keys()) if rows else ()
    except FileNotFoundError:
        raise DatasetError(
            f"{pairs_file}: pairs file not found; give --pairs with a CSV of a,b,same"
        ) from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"{pairs_file}: cannot read the pairs file ({error})") from None
    if not rows:
        raise DatasetError(f"{pairs_file}: no pairs; expected a header a,b,same and one pair per line")
    if not set(PAIR_COLUMNS) <= set(header):
        raise DatasetError(
            f"{pairs_file}: the header must name the columns a,b,same; found {','.join(header)}"
        )
    pairs = []
    unknown: list[str] = []
    for line, row in enumerate(rows, start=2):
        where = f"{pairs_file} line {line}"
        a, b = _normalised(row["a"]), _normalised(row["b"])
        same = _parse_same(row["same"], where)
        unknown += [name for name in (a, b) if name not in photos and name not in unknown]
        if a == b:
            raise DatasetError(f"{where}: pairs the photo {a} with itself; pair two different photos")
        if a in photos and b in photos and (photos[a] == photos[b]) != same:
            relation = "different folders" if same else "the same folder"
            raise DatasetError(
                f"{where}: same={int(same)} but {a} and {b} are in {relation}; "
                "a photo's folder names the person, so fix the label or move the photo"
            )
        pairs.append(Pair(a, b, same))
    if unknown:
        missing = [name for name in unknown if not (root / name).is_file()]
        if missing:
            raise DatasetError(
                f"{pairs_file}: {len(missing)} photo(s) named in the pairs are missing from {root}: "
                f"{_listed(missing)}"
            )
        raise DatasetError(
            f"{pairs_file}: {_listed(unknown)} are not photos in an identity folder of {root}; "
            "pairs must name identity/photo files"
        )
    return tuple(pairs)


def load_dataset(root: Path, pairs_file: Path | None = None, *, allow_single: bool = False) -> Dataset:
    """The dataset at `root` with its pairs (default `root/pairs.csv`), checked.

    Identities with a single photo are refused unless `allow_single`, because identification cannot
    test them; allowed, they are left out of identification and listed in the report.
    """
    photos = find_photos(root)
    pairs = read_pairs(pairs_file or root / "pairs.csv", photos, root)
    counts = Counter(photos.values())
    singles = sorted(identity for identity, count in counts.items() if count == 1)
    if singles and not allow_single:
        raise DatasetError(
            f"{len(singles)} identities have a single photo ({_listed(singles)}): identification needs "
            "two or more; add photos, remove those folders, or pass --allow-single to leave them out of it"
        )
    if len(counts) < 2:
        raise DatasetError(f"{root}: only one identity; evaluation needs photos of at least two people")
    return Dataset(root, photos, pairs, tuple(singles))
