"""Derive the MTCNN landmark template of the "dlib-150-pad0.25" chip layout (run by hand, not by pytest).

    /work/venv/bin/python -m tests.faces.derive_dlib_template

For every faces-dev photo, dlib-bin's pipeline (HOG detector, shape_predictor_5, get_face_chip_details)
gives the exact photo -> chip matrix; our MTCNN gives the 5 landmarks. On the even-numbered identities
(alphabetically) the template is the mean of the landmarks mapped into dlib's chip, and the landmark
weights (eyes fixed at 1, nose, both mouth corners equal) minimise the distance between the fitted and
dlib's placement over a grid of chip points. The odd-numbered identities are held out; the test
test_faces_dev.py checks the descriptors there.
"""

from __future__ import annotations

import csv

import cv2
import numpy as np
from scipy.optimize import least_squares

from tests.conftest import FACES_DEV
from tests.faces.dlib_chips import dlib_pipeline
from ulixes_onnx.faces import MTCNN, bundled_model_paths, similarity_transform

SIZE = 150
# Chip points the placement error is measured on: the face, not the padding.
GRID = np.stack(np.meshgrid(np.linspace(30, 120, 7), np.linspace(30, 130, 7)), -1).reshape(-1, 2)


def _training_faces() -> list[tuple[np.ndarray, np.ndarray]]:
    """(MTCNN landmarks, dlib's photo -> chip matrix) for each face both pipelines agree on."""
    with open(FACES_DEV / "manifest.csv", newline="") as manifest:
        names = [row["file"] for row in csv.DictReader(manifest)]
    identities = sorted({name.split("/")[0] for name in names})
    training = {identity for index, identity in enumerate(identities) if index % 2 == 0}
    detector = MTCNN(*bundled_model_paths())
    pairs = []
    for name in names:
        if name.split("/")[0] not in training:
            continue
        photo = cv2.cvtColor(cv2.imread(str(FACES_DEV / name)), cv2.COLOR_BGR2RGB)
        # dlib's HOG detector needs upsampling for the small photos and is too slow for it on big ones.
        upsample = 1 if photo.shape[0] * photo.shape[1] < 1.5e6 else 0
        faces = detector.detect(photo)
        for box, matrix, _ in dlib_pipeline(photo, upsample):
            centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
            for face in faces:
                x0, y0, x1, y1 = face.box
                if x0 <= centre[0] <= x1 and y0 <= centre[1] <= y1:
                    pairs.append((face.landmarks, matrix))
                    break
    return pairs


def _placement_errors(template: np.ndarray, weights: np.ndarray, faces: list) -> np.ndarray:
    errors = []
    for landmarks, dlib_matrix in faces:
        ours = similarity_transform(landmarks - 0.5, template * SIZE - 0.5, weights)
        chip_to_photo = cv2.invertAffineTransform(dlib_matrix)
        photo_points = GRID @ chip_to_photo[:, :2].T + chip_to_photo[:, 2]
        errors.append((photo_points @ ours[:, :2].T + ours[:, 2] - GRID).ravel())
    return np.concatenate(errors)


def main() -> None:
    faces = _training_faces()
    in_chip = [
        ((landmarks - 0.5) @ matrix[:, :2].T + matrix[:, 2] + 0.5) / SIZE for landmarks, matrix in faces
    ]
    template = np.mean(in_chip, axis=0)

    def weights_from(log_weights: np.ndarray) -> np.ndarray:
        return np.exp([0.0, 0.0, log_weights[0], log_weights[1], log_weights[1]])

    fit = least_squares(
        lambda log_weights: _placement_errors(template, weights_from(log_weights), faces),
        np.zeros(2),
    )
    weights = weights_from(fit.x)
    rms = np.sqrt(2 * np.mean(_placement_errors(template, weights, faces) ** 2))
    print(f"{len(faces)} training faces, placement error {rms:.2f} chip pixels (RMS)")
    print("template:", np.round(template, 5).tolist())
    print("weights:", np.round(weights, 4).tolist())


if __name__ == "__main__":
    main()
