"""Verification threshold of a face model on a labelled pairs folder, at the equal error rate.

The folder holds `identity/*.jpg` and `pairs.csv` (columns a, b, same). Each photo's largest MTCNN face
is aligned to the model card's chip layout and embedded; the printed threshold is the one where the
false-accept and false-reject rates are closest (the midpoint between the two neighbouring distances),
with the verification accuracy, true-accept (TP) and false-accept (FP) rates there, the accuracy at
the card's current threshold, and the spread of same-person and different-people distances.

usage: python tools/verification_eer.py MODEL [PAIRS_FOLDER]   (default ../shared/faces-dev)
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from ulixes_onnx.face_model import FaceModel
from ulixes_onnx.faces import chip_spec, detector_from_store, extract_chips
from ulixes_onnx.photos.decoding import read_photo
from ulixes_onnx.store import ModelStore

DEFAULT_FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "faces-dev"


def equal_error_threshold(distances: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(threshold, equal error rate): same person when distance < threshold."""
    candidates = np.unique(distances)
    midpoints = np.concatenate([[candidates[0] - 1e-6], (candidates[1:] + candidates[:-1]) / 2])
    best = (float("inf"), 0.0, 0.0)
    for threshold in midpoints:
        false_reject = float(np.mean(distances[same] >= threshold))
        false_accept = float(np.mean(distances[~same] < threshold))
        gap = abs(false_reject - false_accept)
        if gap < best[0]:
            best = (gap, float(threshold), (false_reject + false_accept) / 2)
    return best[1], best[2]


def main(model_name: str, folder: Path) -> None:
    store = ModelStore()
    model = FaceModel(model_name, store)
    detector = detector_from_store(store)
    layout = chip_spec(model.card.input.alignment)
    with (folder / "pairs.csv").open() as stream:
        pairs = [(row["a"], row["b"], row["same"] == "1") for row in csv.DictReader(stream)]
    embeddings = {}
    for name in sorted({name for a, b, _ in pairs for name in (a, b)}):
        photo = np.round(read_photo(folder / name).rgb).astype(np.uint8)
        faces = detector.detect(photo)
        if faces:
            embeddings[name] = model.embed(extract_chips(photo, faces[:1], layout).chips)[0]
    usable = [(a, b, same) for a, b, same in pairs if a in embeddings and b in embeddings]
    distances = np.array([model.distance(embeddings[a][None], embeddings[b][None])[0] for a, b, _ in usable])
    same = np.array([same for _, _, same in usable])
    threshold, eer = equal_error_threshold(distances, same)
    accepted = distances < threshold
    accuracy = float(np.mean(accepted == same))
    card_accuracy = float(np.mean((distances < model.threshold) == same))
    report = {
        "model": model_name,
        "pairs": len(usable),
        "pairs_without_face": len(pairs) - len(usable),
        "eer_threshold": round(threshold, 4),
        "eer": round(eer, 4),
        "accuracy_at_eer_threshold": round(accuracy, 4),
        "tp_rate_at_eer_threshold": round(float(np.mean(accepted[same])), 4),
        "fp_rate_at_eer_threshold": round(float(np.mean(accepted[~same])), 4),
        "card_threshold": model.threshold,
        "accuracy_at_card_threshold": round(card_accuracy, 4),
        # The spread a card's protect_distance has to clear: how far a person's own photos lie apart.
        "same_person_median": round(float(np.median(distances[same])), 4),
        "same_person_95th_percentile": round(float(np.percentile(distances[same], 95)), 4),
        "same_person_max": round(float(distances[same].max()), 4),
        "different_people_5th_percentile": round(float(np.percentile(distances[~same], 5)), 4),
        "different_people_min": round(float(distances[~same].min()), 4),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_FOLDER)
