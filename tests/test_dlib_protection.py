"""A face reported protected is protected in dlib's own pipeline too, not only in ours.

Our pipeline reproduces dlib's chip placement on MTCNN's detection; dlib's users detect with HOG and
cut chips with get_face_chip. benchmarks/results/dlib-alignment-margin-2026-12-05.md measured the two
distances 0.032 apart at most with dlib's 5-point alignment (20 faces) and 0.078 with its 68-point
one, against a protect_distance 0.15 past the threshold.
"""

from __future__ import annotations

import numpy as np

from tests.dlib_reference import dlib_descriptor
from tests.faces.dlib_chips import dlib_pipeline
from ulixes_onnx.cloaking.pipeline import Cloaker
from ulixes_onnx.photos import samples
from ulixes_onnx.store import ModelStore


def test_the_reported_distance_holds_in_dlibs_pipeline(store: ModelStore) -> None:
    original = samples.astronaut()
    result = Cloaker(store=store, threads=2).cloak(original)
    (face,) = result.faces
    ours = face.models["dlib-resnet"]
    assert face.protected
    # Without upsampling, HOG finds the astronaut's face alone (upsampled, also a false one below it).
    ((_, _, before),) = dlib_pipeline(original, upsample=0)
    ((_, _, after),) = dlib_pipeline(result.delta.apply(original), upsample=0)
    theirs = float(np.linalg.norm(dlib_descriptor(before) - dlib_descriptor(after)))
    # measured with the default cloak (dlib-resnet + sface at `low`): ours 0.704, dlib's 0.690
    assert abs(theirs - ours.distance) < 0.05
    assert theirs > ours.threshold + 0.05
