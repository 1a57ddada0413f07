"""dlib's serialisation primitives and the network reader's error paths."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ulixes_onnx.zoo.dlib_format import (
    DlibFormatError,
    DlibStream,
    LayerSpec,
    read_network,
)


def encode_int(value: int) -> bytes:
    magnitude = abs(value)
    width = max(1, (magnitude.bit_length() + 7) // 8)
    return bytes([width | (0x80 if value < 0 else 0)]) + magnitude.to_bytes(width, "little")


def encode_real(mantissa: int, exponent: int) -> bytes:
    return encode_int(mantissa) + encode_int(exponent)


def encode_string(text: str) -> bytes:
    return encode_int(len(text)) + text.encode("latin-1")


def encode_tensor(values: np.ndarray) -> bytes:
    shape = ((*values.shape, 1, 1, 1, 1))[:4]
    body = b"".join(encode_int(dim) for dim in shape)
    return encode_int(2) + body + values.astype("<f4").tobytes()


@pytest.mark.parametrize("value", [0, 1, -1, 127, 128, 255, 256, -70000, 2**40, -(2**63)])
def test_integers_round_trip(value: int) -> None:
    assert DlibStream(encode_int(value)).integer() == value


@pytest.mark.parametrize(
    ("mantissa", "exponent", "expected"),
    [(3, -1, 1.5), (-5, 2, -20.0), (0, 0, 0.0), (1, 32000, math.inf), (1, 32001, -math.inf)],
)
def test_reals_decode_mantissa_and_exponent(mantissa: int, exponent: int, expected: float) -> None:
    assert DlibStream(encode_real(mantissa, exponent)).real() == expected


def test_nan_exponent() -> None:
    assert math.isnan(DlibStream(encode_real(1, 32002)).real())


def test_bool_string_and_tensor() -> None:
    values = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    stream = DlibStream(b"1" + b"0" + encode_string("con_5") + encode_tensor(values))
    assert stream.boolean() is True
    assert stream.boolean() is False
    assert stream.string() == "con_5"
    np.testing.assert_array_equal(stream.tensor().reshape(-1), values.reshape(-1))
    assert stream.at_end


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "file ends early"),
        (bytes([0x02, 0x01]), "file ends early"),
        (bytes([0x00]), "bad integer control byte"),
        (bytes([0x19, 0]), "bad integer control byte"),
    ],
)
def test_bad_integers(data: bytes, message: str) -> None:
    with pytest.raises(DlibFormatError, match=message):
        DlibStream(data).integer()


def test_bad_bool_and_string() -> None:
    with pytest.raises(DlibFormatError, match="bad bool byte"):
        DlibStream(b"x").boolean()
    with pytest.raises(DlibFormatError, match="implausible string length"):
        DlibStream(encode_int(10**6)).string()


def test_tensor_version_and_truncation() -> None:
    with pytest.raises(DlibFormatError, match="tensor version 3"):
        DlibStream(encode_int(3)).tensor()
    truncated = encode_tensor(np.ones((1, 1, 2, 2), np.float32))[:-3]
    with pytest.raises(DlibFormatError, match="file ends early"):
        DlibStream(truncated).tensor()


def test_bulk_integers_match_one_by_one_decoding() -> None:
    values = [0, 1, -1, 255, 256, -70000, 2**40, 2**63 - 1, -(2**63), 7]
    data = b"".join(encode_int(value) for value in values) + b"rest"
    stream = DlibStream(data)
    decoded = stream.integers(len(values))
    assert decoded.dtype == np.int64 and decoded.tolist() == values
    assert stream.offset == len(data) - 4
    assert stream.integers(0).size == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (encode_int(5) + bytes([0x03, 0x01]), "file ends early"),
        (encode_int(5), "file ends early"),
        (encode_int(5) + bytes([0x40, 0x01]), "bad integer control byte 0x40 at 2"),
        (encode_int(5) + bytes([0x00, 0x01]), "bad integer control byte 0x00 at 2"),
    ],
)
def test_bad_bulk_integers(data: bytes, message: str) -> None:
    with pytest.raises(DlibFormatError, match=message):
        DlibStream(data).integers(2)


def test_bulk_reals_decode_specials() -> None:
    data = b"".join(encode_real(m, e) for m, e in [(3, -1), (-5, 2), (1, 32000), (1, 32001), (1, 32002)])
    values = DlibStream(data).reals(5)
    np.testing.assert_array_equal(values[:4], [1.5, -20.0, math.inf, -math.inf])
    assert math.isnan(values[4])


@pytest.mark.parametrize("sign", [-1, 1])
def test_matrix_reads_either_dimension_convention(sign: int) -> None:
    # Current dlib writes the dimensions negated; older files wrote them as they are.
    data = encode_int(sign * 2) + encode_int(sign * 3) + b"".join(encode_real(k, -1) for k in range(6))
    stream = DlibStream(data)
    np.testing.assert_array_equal(stream.matrix(), np.arange(6).reshape(2, 3) / 2)
    assert stream.at_end


def _tiny_network(trailing: bytes = b"", layer_name: str = "relu_") -> bytes:
    """loss_metric_<relu_<input_rgb_image>> as dlib would write it."""
    loss = encode_int(1) + encode_string("loss_metric_")
    versions = encode_int(2)  # the relu layer wraps the input layer
    input_layer = encode_string("input_rgb_image") + b"".join(
        encode_real(int(m * 1000), 0) for m in (122.782, 117.001, 104.298)
    )
    relu = encode_string(layer_name) + b"000" + encode_tensor(np.zeros(1, np.float32)) * 3
    return loss + versions + input_layer + relu + trailing


def test_reads_a_tiny_network() -> None:
    network = read_network(_tiny_network(), [LayerSpec("input"), LayerSpec("relu")])
    assert [layer.spec.kind for layer in network.layers] == ["input", "relu"]
    assert network.loss["distance_threshold"] == pytest.approx(0.6)
    assert network.layers[0].params["mean"][0] == pytest.approx(122782.0)


def test_rejects_trailing_bytes() -> None:
    with pytest.raises(DlibFormatError, match="unexpected bytes after the network"):
        read_network(_tiny_network(trailing=b"\x01\x00"), [LayerSpec("input"), LayerSpec("relu")])


def test_rejects_a_layer_the_architecture_does_not_expect() -> None:
    with pytest.raises(DlibFormatError, match="expected a relu layer"):
        read_network(_tiny_network(layer_name="add_prev_"), [LayerSpec("input"), LayerSpec("relu")])


def test_rejects_unknown_layers() -> None:
    with pytest.raises(DlibFormatError, match="unsupported dlib layer 'mystery_'"):
        read_network(_tiny_network(layer_name="mystery_"), [LayerSpec("input"), LayerSpec("relu")])
