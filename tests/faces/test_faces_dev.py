"""The real photos of faces-dev: detection recall, identities, and chips against dlib's own pipeline.

Photos are shrunk to at most 1000 pixels a side (tests/dlib_reference.read_rgb) so the module stays
fast; both pipelines see the same pixels. The alignment is judged on the identities that
derive_dlib_rectangle.py did not fit on.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from tests.dlib_reference import dlib_descriptor, read_rgb
from tests.faces.dlib_chips import dlib_pipeline, to_uint8_chip
from ulixes_onnx.faces import chip_spec, extract_chips

# Slow: detects and aligns every development photo, with dlib's pipeline beside.
pytestmark = pytest.mark.slow

SAME_PERSON = 0.6  # dlib's own threshold on descriptor distance


@pytest.fixture(scope="module")
def photos(faces_dev) -> dict[str, np.ndarray]:
    with open(faces_dev / "manifest.csv", newline="") as manifest:
        names = [row["file"] for row in csv.DictReader(manifest)]
    return {name: read_rgb(faces_dev / name) for name in names}


@pytest.fixture(scope="module")
def largest_faces(detector, photos) -> dict[str, object]:
    found = {}
    for name, photo in photos.items():
        faces = detector.detect(photo)
        if faces:
            found[name] = faces[0]
    return found


@pytest.fixture(scope="module")
def descriptors(photos, largest_faces) -> dict[str, np.ndarray]:
    spec = chip_spec("dlib-150-pad0.25")
    return {
        name: dlib_descriptor(to_uint8_chip(extract_chips(photos[name], [face], spec).chips[0]))
        for name, face in largest_faces.items()
    }


def test_every_labelled_person_is_found(photos, largest_faces):
    recall = len(largest_faces) / len(photos)
    print(f"detection recall on faces-dev: {len(largest_faces)}/{len(photos)}")
    assert recall == 1.0


def test_the_faces_found_are_the_labelled_people(faces_dev, descriptors):
    with open(faces_dev / "pairs.csv", newline="") as pairs:
        rows = list(csv.DictReader(pairs))
    same = [np.linalg.norm(descriptors[r["a"]] - descriptors[r["b"]]) for r in rows if r["same"] == "1"]
    other = [np.linalg.norm(descriptors[r["a"]] - descriptors[r["b"]]) for r in rows if r["same"] == "0"]
    matched = np.mean(np.array(same) < SAME_PERSON)
    told_apart = np.mean(np.array(other) >= SAME_PERSON)
    print(f"same-person pairs matched: {matched:.3f}, other pairs told apart: {told_apart:.3f}")
    assert matched >= 0.95 and told_apart >= 0.95


def test_chips_give_dlibs_descriptors(faces_dev, photos, largest_faces, descriptors):
    identities = sorted({name.split("/")[0] for name in photos})
    held_out = {identity for index, identity in enumerate(identities) if index % 2 == 1}
    differences = []
    for name, face in largest_faces.items():
        if name.split("/")[0] not in held_out:
            continue
        for box, _, chip in dlib_pipeline(photos[name]):
            centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
            x0, y0, x1, y1 = face.box
            if x0 <= centre[0] <= x1 and y0 <= centre[1] <= y1:
                differences.append(np.linalg.norm(dlib_descriptor(chip) - descriptors[name]))
    differences = np.array(differences)
    print(
        f"descriptor L2, our chips vs dlib's pipeline, {len(differences)} held-out faces: "
        f"mean {differences.mean():.4f}, max {differences.max():.4f}"
    )
    assert len(differences) >= 40
    # measured: mean 0.043, max 0.155 (same-person distances are ~0.1-0.4, the threshold 0.6)
    assert differences.mean() < 0.05 and differences.max() < 0.2
