"""`models check`: load each built model, run it on real faces and report what was checked.

For an embedding model: its files' sha256, the embedding size, distances between chips of the same
person cut from differently shifted, scaled and mirrored copies of the sample astronaut photo (all must
be below the model's threshold) and to another person (the cameraman, which must be above it), that the
cloak graph uses only standard ONNX operators and returns the plain model's embeddings, and its gradient
against central finite differences along the gradient and along random directions.
For a detector: that it finds exactly one face with landmarks in the astronaut photo. For the landmark
model: that its 5 points on the astronaut's face lie inside the detector's box.
"""

from __future__ import annotations

import numpy as np
import onnx

from ulixes_onnx.cards import ModelCard, all_cards, get_card
from ulixes_onnx.engine import default_domain_only
from ulixes_onnx.face_model import FaceModel
from ulixes_onnx.faces import (
    MTCNN,
    ChipSpec,
    chip_spec,
    detector_from_store,
    dlib_landmarks,
    extract_chips,
    five_point_predictor,
)
from ulixes_onnx.photos import samples
from ulixes_onnx.store import ModelStatus, ModelStore

FINITE_DIFFERENCE_STEP = 1e-3
RANDOM_DIRECTIONS = 3
# float32 arithmetic and ReLU kinks bound how well a finite difference can agree; a wrong backward rule
# gives errors of order 1.
GRADIENT_TOLERANCE = 2e-2
EMBEDDING_TOLERANCE = 1e-4


def _largest_face_chip(detector: MTCNN, photo: np.ndarray, layout: ChipSpec) -> np.ndarray:
    faces = detector.detect(photo)
    if not faces:
        raise AssertionError("the detector found no face in a sample photo")
    return extract_chips(photo, faces[:1], layout).chips[0]


def _same_person_photos() -> dict[str, np.ndarray]:
    photo = samples.astronaut()
    return {
        "shifted (+6.3, -4.7) px": samples.shifted(photo, 6.3, -4.7),
        "rescaled x0.8": samples.rescaled(photo, 0.8),
        "rescaled x0.6": samples.rescaled(photo, 0.6),
        "mirrored": np.ascontiguousarray(photo[:, ::-1]),
    }


def _gradient_errors(model: FaceModel, chip: np.ndarray, e_pos: np.ndarray, e_neg: np.ndarray) -> list[float]:
    """|analytic - finite-difference| directional derivatives, relative to the gradient's norm."""
    batch = chip[None]
    margin = np.float32(model.threshold)
    gradient = model.step(batch, e_pos, e_neg, margin).grad[0].astype(np.float64)
    norm = float(np.linalg.norm(gradient))
    rng = np.random.default_rng(0)
    directions = [gradient / norm] + [
        unit / np.linalg.norm(unit) for unit in rng.standard_normal((RANDOM_DIRECTIONS, *chip.shape))
    ]
    errors = []
    for direction in directions:
        probes = np.stack(
            [batch[0] + FINITE_DIFFERENCE_STEP * direction, batch[0] - FINITE_DIFFERENCE_STEP * direction]
        ).astype(np.float32)
        both = np.repeat(e_pos, 2, axis=0), np.repeat(e_neg, 2, axis=0)
        loss = model.step(probes, *both, margin).loss.astype(np.float64)
        finite_difference = (loss[0] - loss[1]) / (2 * FINITE_DIFFERENCE_STEP)
        errors.append(float(abs(np.sum(gradient * direction) - finite_difference) / norm))
    return errors


def _verified_files(sha256: dict[str, str]) -> dict:
    # The store re-hashes every file against its manifest and the model card before handing it out.
    return {"ok": True, "status": "matches manifest and model card", "files": sha256}


def check_embedding_model(store: ModelStore, card: ModelCard, detector: MTCNN) -> dict:
    model = FaceModel(card, store)
    layout = chip_spec(card.input.alignment, store)
    anchor = _largest_face_chip(detector, samples.astronaut(), layout)
    same = {
        name: _largest_face_chip(detector, photo, layout) for name, photo in _same_person_photos().items()
    }
    other = _largest_face_chip(detector, samples.cameraman(), layout)

    embeddings = model.embed(np.stack([anchor, *same.values(), other]))
    anchor_embedding, same_embeddings, other_embedding = embeddings[:1], embeddings[1:-1], embeddings[-1:]
    same_distances = model.distance(anchor_embedding, same_embeddings)
    other_distance = float(model.distance(anchor_embedding, other_embedding)[0])

    cloak_graph = onnx.load(model.cloak_graph_path, load_external_data=False)
    step = model.step(anchor[None], anchor_embedding, other_embedding, model.threshold)
    embedding_error = float(np.abs(step.emb - anchor_embedding).max())
    gradient_errors = _gradient_errors(
        model, same["shifted (+6.3, -4.7) px"], anchor_embedding, other_embedding
    )

    checks = {
        "sha256": _verified_files(model.built.sha256),
        "embedding_size": {
            "ok": embeddings.shape[1] == card.embedding.size,
            "expected": card.embedding.size,
            "measured": int(embeddings.shape[1]),
        },
        "same_person": {
            "ok": bool(np.all(same_distances < model.threshold)),
            "threshold": model.threshold,
            "distances": {name: round(float(d), 4) for name, d in zip(same, same_distances, strict=True)},
        },
        "other_person": {
            "ok": other_distance > model.threshold,
            "threshold": model.threshold,
            "distance_astronaut_to_cameraman": round(other_distance, 4),
        },
        "cloak_graph_standard_ops": {
            "ok": default_domain_only(cloak_graph),
            "nodes": len(cloak_graph.graph.node),
        },
        "cloak_graph_embedding": {
            "ok": embedding_error <= EMBEDDING_TOLERANCE,
            "max_abs_diff": embedding_error,
        },
        "gradient": {
            "ok": max(gradient_errors) <= GRADIENT_TOLERANCE,
            "max_relative_error": max(gradient_errors),
            "tolerance": GRADIENT_TOLERANCE,
            "step": FINITE_DIFFERENCE_STEP,
            "directions": 1 + RANDOM_DIRECTIONS,
        },
    }
    return checks


def check_detector(store: ModelStore, card: ModelCard, detector: MTCNN) -> dict:
    faces = detector.detect(samples.astronaut())
    return {
        "sha256": _verified_files(store.get(card).sha256),
        "astronaut_faces": {
            "ok": len(faces) == 1 and faces[0].landmarks.shape == (5, 2),
            "found": len(faces),
            "score": round(faces[0].score, 4) if faces else None,
        },
    }


def check_landmarks(store: ModelStore, card: ModelCard, detector: MTCNN) -> dict:
    photo = samples.astronaut()
    faces = detector.detect(photo)
    inside = five_points = False
    if faces:
        points = dlib_landmarks(photo, faces[0], five_point_predictor(store))
        x0, y0, x1, y1 = faces[0].box
        five_points = points.shape == (5, 2)
        inside = bool(np.all((points >= (x0, y0)) & (points <= (x1, y1))))
    return {
        "sha256": _verified_files(store.get(card).sha256),
        "astronaut_landmarks": {"ok": five_points and inside, "inside_face_box": inside},
    }


def check_models(store: ModelStore, names: list[str] | None = None) -> list[dict]:
    """Check the named models, or every built one (building the defaults first if needed)."""
    if names:
        selected = [get_card(name) for name in names]
    else:
        selected = [c for c in all_cards().values() if c.default or store.status(c) is ModelStatus.BUILT]
    detector = detector_from_store(store)
    reports = []
    for card in selected:
        if card.kind == "embedding":
            checks = check_embedding_model(store, card, detector)
        elif card.kind == "landmarks":
            checks = check_landmarks(store, card, detector)
        else:
            checks = check_detector(store, card, detector)
        reports.append(
            {
                "model": card.name,
                "kind": card.kind,
                "ok": all(check["ok"] for check in checks.values()),
                "checks": checks,
            }
        )
    return reports
