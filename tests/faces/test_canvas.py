"""Face canvases: geometry, the chip operators and their adjoints, and the way back to the photo."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from ulixes_onnx.faces import chip_spec, extract_chips, warp_chips
from ulixes_onnx.faces.align import sampled_matrix, sampling_variance
from ulixes_onnx.faces.canvas import DEFAULT_FEATHER, ChipOperator, make_canvas
from ulixes_onnx.faces.pasteback import DeltaPatch, PhotoDelta


def _matrix(scale: float, x0: float, y0: float) -> np.ndarray:
    """Photo -> chip matrix of an unrotated chip whose top-left pixel centre sits at (x0, y0)."""
    return np.array([[1 / scale, 0.0, -x0 / scale], [0.0, 1 / scale, -y0 / scale]])


@pytest.fixture(scope="module")
def aligned(detector, astronaut):
    return extract_chips(astronaut, detector.detect(astronaut), chip_spec("dlib-150-pad0.25"))


@pytest.mark.parametrize(
    ("matrix", "shape"),
    [
        (np.array([[1.0, 0.0, -3.0], [0.0, 1.0, -5.0]]), (160, 170)),  # same resolution
        (np.array([[0.25, 0.02, 1.0], [-0.02, 0.25, -2.0]]), (620, 640)),  # 4x finer, rotated
        (np.array([[-0.5, 0.0, 149.0], [0.0, 0.5, 0.0]]), (300, 300)),  # mirrored
        (np.array([[0.9, 0.3, 40.0], [-0.3, 0.9, 60.0]]), (120, 130)),  # hangs over the top-left corner
        (np.array([[1.0, 0.0, -60.0], [0.0, 1.0, -70.0]]), (160, 170)),  # over the bottom-right corner
    ],
)
def test_the_adjoint_is_the_transpose_of_the_chip_operator(matrix, shape):
    operator = ChipOperator(matrix, shape, 150, sigma=1.2)
    rng = np.random.default_rng(0)
    canvas = rng.normal(size=(*shape, 3)).astype(np.float32)
    chip = rng.normal(size=(3, 150, 150)).astype(np.float32)
    left = float(np.sum(operator.forward(canvas).astype(np.float64) * chip))
    right = float(np.sum(canvas.astype(np.float64) * operator.adjoint(chip)))
    # The reflected border of the anti-aliasing blur is self-adjoint up to the outermost pixels.
    assert left == pytest.approx(right, rel=2e-2)


def test_chip_pixels_beyond_the_canvas_read_zero():
    # The chip's top-left pixel centre sits at canvas (-20.25, 10.5): its first 20 columns lie wholly
    # outside the canvas, column 20 straddles the edge (one of its neighbours is outside).
    operator = ChipOperator(np.array([[1.0, 0.0, 20.25], [0.0, 1.0, -10.5]]), (100, 120), 150, sigma=0.0)
    chip = operator.forward(np.ones((100, 120, 3), np.float32))
    np.testing.assert_array_equal(chip[:, :, :20], 0.0)
    assert chip[0, 0, 20] == pytest.approx(0.75)  # only the right-hand neighbour, at weight 0.75
    assert chip[0, 0, 21] == pytest.approx(1.0)
    assert chip[0, 89, 30] == pytest.approx(0.5) and chip[0, 90, 30] == 0.0  # the bottom edge, halfway


def test_a_native_canvas_cuts_the_models_chip(astronaut, aligned):
    canvas = make_canvas(astronaut, aligned.matrices, [150], cap=4.0)
    assert canvas.scale == 1.0  # a 90-pixel face: the canvas keeps the photo's pixels
    chip = canvas.operator(0).forward(canvas.image / 127.5 - 1)
    interior = (slice(None), slice(4, -4), slice(4, -4))
    difference = np.abs(chip - aligned.chips[0])[interior]
    # dlib's chip extraction and the operator sample the same places (bilinear, no pyramid here)
    assert difference.mean() < 0.01


@pytest.mark.parametrize("dlib_pyramid", [True, False])
@pytest.mark.parametrize("enlarged", [1.0, 2.6, 5.0, 11.0])
def test_the_operator_cuts_the_chip_the_recogniser_cuts(astronaut, detector, enlarged, dlib_pyramid):
    # The astronaut's face enlarged to 0.6-6.6x the chip (no, 1, 2 and 3 pyramid levels), some of it
    # held on a canvas coarser than the photo.
    photo = cv2.resize(astronaut, None, fx=enlarged, fy=enlarged, interpolation=cv2.INTER_CUBIC)
    spec = replace(chip_spec("dlib-150-pad0.25"), dlib_pyramid=dlib_pyramid)
    aligned = extract_chips(photo, detector.detect(photo)[:1], spec)
    canvas = make_canvas(photo, aligned.matrices, [150], cap=4.0, dlib_pyramids=[dlib_pyramid])
    chip = canvas.operator(0).forward(canvas.image / 127.5 - 1)
    interior = (slice(None), slice(4, -4), slice(4, -4))
    # RMS, in grey levels: 0.4-0.5 here; the nominal placement with a plain anti-aliasing blur
    # (sigma (shrink - 1) / 2) was 1.9-2.3 off, and 4.2-6.0 with dlib's pyramid.
    difference = np.sqrt(np.mean((chip - aligned.chips[0])[interior] ** 2)) * 127.5
    assert difference < 1.0


def test_the_sampling_model_follows_the_pyramid():
    assert sampling_variance(1.9) == pytest.approx(1 / 6)  # bilinear only
    assert sampling_variance(3.5) == pytest.approx(1 + 4 / 6)  # one halving: its filter, then bilinear
    assert sampling_variance(10.0) == pytest.approx(21 + 64 / 6)  # three
    matrix = _matrix(6.0, 100.0, 50.0)  # two halvings
    np.testing.assert_array_equal(sampled_matrix(matrix, dlib_pyramid=False), matrix)
    moved = sampled_matrix(matrix, dlib_pyramid=True)
    np.testing.assert_allclose(moved[:, 2] - matrix[:, 2], np.array([1.5, -1.5]) / 6.0)


def test_a_large_face_is_held_at_cap_times_the_chip_resolution():
    photo = np.random.default_rng(1).integers(0, 256, (2000, 2000, 3), dtype=np.uint8)
    matrix = _matrix(10.0, 200.0, 300.0)  # one chip pixel spans 10 photo pixels
    canvas = make_canvas(photo, [matrix], [150], cap=4.0)
    assert canvas.scale == pytest.approx(0.4)
    assert canvas.image.shape[:2] == (601, 601)  # the region is 1501 pixels: the chip plus its edge
    # a constant change comes back to the photo as the same constant, inside the mask
    delta, mask = canvas.to_photo(
        np.full((*canvas.image.shape[:2], 3), 5.0, np.float32) * canvas.mask[..., None]
    )
    assert delta.shape[:2] == mask.shape == (1501, 1501)
    inner = mask > 0.999
    np.testing.assert_allclose(delta[inner], 5.0, atol=0.01)


def test_the_mask_covers_only_the_chips_and_feathers_their_border(astronaut, aligned):
    canvas = make_canvas(astronaut, aligned.matrices, [150], cap=4.0)
    operator = canvas.operator(0)
    inside = operator.forward(canvas.mask[..., None].repeat(3, axis=2))[0]
    border = int(np.ceil(DEFAULT_FEATHER * 150)) + 2
    assert inside[border:-border, border:-border].min() > 0.99
    assert canvas.mask[0].max() < 0.05 and canvas.mask[:, 0].max() < 0.05


def test_zero_change_leaves_the_photo_bit_identical_and_a_constant_survives(astronaut, aligned):
    canvas = make_canvas(astronaut, aligned.matrices, [150], cap=4.0)
    for value, tolerance in ((0.0, 0.0), (0.1, 0.5 / 127.5)):
        change = np.full(canvas.image.shape, value, np.float32) * canvas.mask[..., None]
        delta, mask = canvas.to_photo(change * 127.5)
        photo_delta = PhotoDelta(*astronaut.shape[:2], (DeltaPatch(canvas.x0, canvas.y0, delta, mask),))
        cloaked = photo_delta.apply(astronaut)
        if value == 0:
            np.testing.assert_array_equal(cloaked, astronaut)
            continue
        before = warp_chips(astronaut, aligned.matrices, 150, dlib_pyramid=True)[0]
        after = warp_chips(cloaked, aligned.matrices, 150, dlib_pyramid=True)[0]
        border = int(np.ceil(DEFAULT_FEATHER * 150)) + 2
        interior = (slice(None), slice(border, -border), slice(border, -border))
        unclipped = np.abs(before[interior]) < 0.85
        change_seen = (after - before)[interior][unclipped]
        assert np.abs(change_seen - value).mean() < tolerance + 1e-6


def test_a_face_at_the_border_is_clipped_and_one_off_the_photo_has_no_canvas():
    photo = np.full((200, 300, 3), 100, np.uint8)
    canvas = make_canvas(photo, [_matrix(1.0, -60.0, -40.0)], [150], cap=4.0)
    assert (canvas.x0, canvas.y0) == (0, 0)
    # The chip ends at x = 89.5, y = 109.5: the next column and row are in the region with mask 0.
    assert (canvas.x1, canvas.y1) == (91, 111)
    assert not canvas.mask[:, 90].any() and canvas.mask[55, 89] > 0
    assert make_canvas(photo, [_matrix(1.0, 500.0, 500.0)], [150], cap=4.0) is None


def test_a_jittered_operator_samples_elsewhere(astronaut, aligned):
    canvas = make_canvas(astronaut, aligned.matrices, [150], cap=4.0)
    clean = canvas.image / 127.5 - 1
    shift = np.array([[1.0, 0.0, 3.0], [0.0, 1.0, 0.0]])
    plain = canvas.operator(0).forward(clean)
    shifted = canvas.operator(0, shift).forward(clean)
    np.testing.assert_allclose(shifted[:, :, 10:140], plain[:, :, 7:137], atol=1e-4)


def test_a_realigned_canvas_cuts_its_chips_where_the_new_alignment_says():
    noise = np.random.default_rng(2).normal(size=(2000, 2000, 3)).astype(np.float32)
    # Structure at the chip's scale (a few chip pixels), so that where a chip is cut matters.
    smooth = cv2.GaussianBlur(noise, (0, 0), 25)
    photo = np.clip(128 + smooth * (60 / smooth.std()), 0, 255).astype(np.uint8)
    canvas = make_canvas(photo, [_matrix(10.0, 200.0, 300.0)], [150], cap=4.0)
    moved = _matrix(10.2, 212.0, 291.0)  # the landmarks found 12 and -9 px away, a slightly larger face
    realigned = canvas.realigned([moved])
    # the image and mask stay the original's; only the operator follows the new alignment
    assert realigned.image is canvas.image and realigned.mask is canvas.mask
    expected = warp_chips(photo, moved[None], 150)[0]
    chip = realigned.operator(0).forward(realigned.image / 127.5 - 1)
    old_chip = canvas.operator(0).forward(canvas.image / 127.5 - 1)
    error = np.abs(chip - expected).mean()
    assert error < 0.04 and error < 0.25 * np.abs(old_chip - expected).mean()
    # the alignment before stays at hand: a recogniser whose detector the cloak did not move cuts there
    assert canvas.alignment_count == 1 and realigned.alignment_count == 2
    earlier = realigned.operator(0, alignment=1).forward(realigned.image / 127.5 - 1)
    np.testing.assert_array_equal(earlier, old_chip)
    # realigned again, the face keeps the original alignment, the one the closed loop also measures at
    twice = realigned.realigned([_matrix(10.1, 205.0, 295.0)])
    assert twice.alignment_count == 2
    np.testing.assert_array_equal(twice.operator(0, alignment=1).forward(canvas.image / 127.5 - 1), old_chip)


def test_an_earlier_alignment_is_blurred_as_its_own_scale_asks():
    photo = np.full((1200, 1200, 3), 128, np.uint8)
    # dlib's pyramid halves the photo once more between these two scales, so their chips' blurs differ
    canvas = make_canvas(photo, [_matrix(3.95, 300.0, 300.0)], [150], cap=4.0, dlib_pyramids=[True])
    realigned = canvas.realigned([_matrix(4.05, 296.0, 296.0)])
    assert realigned.operator(0).sigma != pytest.approx(canvas.operator(0).sigma, abs=0.1)
    assert realigned.operator(0, alignment=1).sigma == canvas.operator(0).sigma
    assert realigned.magnification(0, alignment=1) == canvas.magnification(0)
