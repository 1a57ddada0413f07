"""Derive where dlib's HOG detector puts its square relative to MTCNN's landmarks (run by hand).

Not collected by pytest:

    /work/venv/bin/python -m tests.faces.derive_dlib_rectangle

dlib's 5-point shape predictor was trained on the squares of dlib's HOG detector, so the chip layout
"dlib-150-pad0.25" starts it from the square that detector would give an MTCNN face
(ulixes_onnx.faces.shape_predictor.face_rectangle). On the even-numbered faces-dev identities
(alphabetically), with the detector run on the photos as they are and upsampled once, the square's
centre is measured from the landmarks' mean and its side in units of their RMS spread. The prints are
RECTANGLE_SHIFT and RECTANGLE_SIDE. The odd-numbered identities are held out for test_faces_dev.py.
"""

from __future__ import annotations

import csv

import numpy as np

from tests.conftest import FACES_DEV
from tests.dlib_reference import read_rgb, reference_models
from ulixes_onnx.faces import detector_from_store
from ulixes_onnx.faces.shape_predictor import landmark_centre_and_spread
from ulixes_onnx.store import ModelStore


def _training_pairs() -> list[tuple[np.ndarray, float, np.ndarray]]:
    """(landmark centre, landmark spread, dlib square) for each face both detectors find."""
    with open(FACES_DEV / "manifest.csv", newline="") as manifest:
        names = [row["file"] for row in csv.DictReader(manifest)]
    identities = sorted({name.split("/")[0] for name in names})
    training = {identity for index, identity in enumerate(identities) if index % 2 == 0}
    detector = detector_from_store(ModelStore())
    hog_detector = reference_models()[0]
    pairs = []
    for name in names:
        if name.split("/")[0] not in training:
            continue
        photo = read_rgb(FACES_DEV / name)
        faces = detector.detect(photo)
        for upsample in (0, 1):
            for box in hog_detector(photo, upsample):
                square = np.array([box.left(), box.top(), box.right(), box.bottom()], dtype=float)
                middle = (square[:2] + square[2:]) / 2
                for face in faces:
                    x0, y0, x1, y1 = face.box
                    if x0 <= middle[0] + 0.5 <= x1 and y0 <= middle[1] + 0.5 <= y1:
                        pairs.append((*landmark_centre_and_spread(face), square))
                        break
    return pairs


def main() -> None:
    pairs = _training_pairs()
    shifts = [((square[:2] + square[2:]) / 2 - centre) / spread for centre, spread, square in pairs]
    sides = [(square[2] - square[0]) / spread for _, spread, square in pairs]
    shift = np.mean(shifts, axis=0)
    # Sizes err by factors, so the side is a geometric mean.
    side = float(np.exp(np.mean(np.log(sides))))
    print(
        f"{len(pairs)} training squares; spread of the fit: shift {np.std(shifts, axis=0).round(4)}, "
        f"log side {np.std(np.log(sides)):.4f}"
    )
    print(f"RECTANGLE_SHIFT = ({shift[0]:.5f}, {shift[1]:.5f})")
    print(f"RECTANGLE_SIDE = {side:.5f}")


if __name__ == "__main__":
    main()
