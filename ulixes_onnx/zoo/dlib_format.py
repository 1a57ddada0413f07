"""A NumPy reader for dlib's binary serialisation (dlib/serialize.h) and its DNNs (dlib/dnn/*.h).

dlib writes no network topology into its files: the C++ template type is needed to read one back. So a
reader is given the architecture (`LayerSpec`s, input first) and checks each stored layer against it.

Encoding (little endian throughout):
- integer of any width: a control byte `n | 0x80 if negative` (n = 1..8), then n magnitude bytes, least
  significant first;
- float/double: two integers, mantissa and exponent, value = mantissa * 2**exponent (exponents 32000,
  32001, 32002 encode +inf, -inf, nan);
- bool: the ASCII byte '1' or '0';  string: integer length, then the bytes;
- matrix: rows and columns (current dlib writes them negated, older versions as they are), then the
  values row by row;  std::vector: integer length, then the items;
- tensor: version 2, four integers (num_samples, k, nr, nc), then the float32 values;
- alias_tensor: version 1, four integers (a shape only).

Network layout, for `add_loss_layer<LOSS, add_layer<L_n, ... add_layer<L_1, INPUT>>>`: the loss layer's
version and details, then the version integer of every wrapper from the outside in, then the input layer,
then each computational layer's details from the inside out, each followed by its bookkeeping state
(three bools, cached tensors). Tag and skip wrappers store only their version.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ulixes_onnx.errors import ModelError

_SPECIAL_EXPONENTS = {32000: np.inf, 32001: -np.inf, 32002: np.nan}


class DlibFormatError(ModelError):
    """The bytes are not the dlib network they claim to be (truncated, corrupt or another model)."""


class DlibStream:
    """Sequential decoder of dlib's primitive encodings over an in-memory buffer."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self.offset = 0

    @property
    def at_end(self) -> bool:
        return self.offset >= len(self._data)

    def _take(self, count: int) -> memoryview:
        if self.offset + count > len(self._data):
            raise DlibFormatError(
                f"file ends early: needed {count} bytes at offset {self.offset} of {len(self._data)}"
            )
        chunk = self._data[self.offset : self.offset + count]
        self.offset += count
        return chunk

    def integer(self) -> int:
        control = self._take(1)[0]
        width = control & 0x0F
        if control & 0x70 or not 1 <= width <= 8:
            raise DlibFormatError(f"bad integer control byte {control:#04x} at {self.offset - 1}")
        magnitude = int.from_bytes(self._take(width), "little")
        return -magnitude if control & 0x80 else magnitude

    def real(self) -> float:
        mantissa = self.integer()
        exponent = self.integer()
        if exponent in _SPECIAL_EXPONENTS:
            return float(_SPECIAL_EXPONENTS[exponent])
        return float(np.ldexp(float(mantissa), exponent))

    def integers(self, count: int) -> np.ndarray:
        """`count` consecutive integers as int64, decoded in bulk (for long runs such as model weights)."""
        # Each integer's width is in its own control byte, so only the walk from one control byte to
        # the next is sequential; the magnitudes are then assembled for all integers at once.
        data = self._data
        starts = []
        offset = self.offset
        try:
            for _ in range(count):
                starts.append(offset)
                offset += 1 + (data[offset] & 0x0F)
        except IndexError:
            raise DlibFormatError(
                f"file ends early: needed {count} integers at offset {self.offset}"
            ) from None
        if offset > len(data):
            raise DlibFormatError(f"file ends early: needed {count} integers at offset {self.offset}")
        # Zero bytes after the run let every integer be read as 8 bytes and masked to its width.
        run = np.concatenate(
            [np.frombuffer(data[self.offset : offset], dtype=np.uint8), np.zeros(8, np.uint8)]
        )
        starts_in_run = np.array(starts, dtype=np.int64) - self.offset
        controls = run[starts_in_run]
        widths = (controls & 0x0F).astype(np.int64)
        bad = ((controls & 0x70) != 0) | (widths < 1) | (widths > 8)
        if bad.any():
            position = int(starts_in_run[np.argmax(bad)])
            raise DlibFormatError(
                f"bad integer control byte {run[position]:#04x} at {self.offset + position}"
            )
        # Each integer's 8 bytes after its control byte, read as one little-endian word through an
        # overlapping view of the run, then masked to the integer's width.
        words = np.lib.stride_tricks.as_strided(run, shape=(len(run) - 7, 8), strides=(1, 1))
        little_endian = words[starts_in_run + 1].view("<u8").ravel()
        widths_in_bits = (8 * widths).astype(np.uint64)
        # A shift by 64 is undefined, so full-width masks come from shifting twice.
        masks = ((np.uint64(1) << (widths_in_bits - np.uint64(1))) << np.uint64(1)) - np.uint64(1)
        magnitudes = little_endian & masks
        # The magnitude 2**63 (of int64's minimum) wraps to -2**63, which negation leaves as it is.
        signed = magnitudes.astype(np.int64)
        values = np.where(controls & 0x80, -signed, signed)
        self.offset = offset
        return values

    def reals(self, count: int) -> np.ndarray:
        """`count` consecutive floats/doubles as float64, decoded in bulk."""
        pairs = self.integers(2 * count).reshape(count, 2)
        mantissas, exponents = pairs[:, 0], pairs[:, 1]
        special = np.isin(exponents, list(_SPECIAL_EXPONENTS))
        values = np.ldexp(mantissas.astype(np.float64), np.where(special, 0, exponents))
        for exponent, value in _SPECIAL_EXPONENTS.items():
            values[exponents == exponent] = value
        return values

    def matrix(self) -> np.ndarray:
        """A dlib::matrix of floating point values as a float64 [rows, columns] array."""
        # Current dlib writes the negated dimensions; files from before that write them as they are.
        rows, columns = abs(self.integer()), abs(self.integer())
        return self.reals(rows * columns).reshape(rows, columns)

    def boolean(self) -> bool:
        byte = self._take(1)[0]
        if byte not in (ord("0"), ord("1")):
            raise DlibFormatError(f"bad bool byte {byte:#04x} at {self.offset - 1}")
        return byte == ord("1")

    def string(self, max_length: int = 1024) -> str:
        length = self.integer()
        if not 0 <= length <= max_length:
            raise DlibFormatError(f"implausible string length {length} at {self.offset}")
        return bytes(self._take(length)).decode("latin-1")

    def tensor(self) -> np.ndarray:
        self.expect_version("tensor", 2)
        shape = tuple(self.integer() for _ in range(4))
        if any(dim < 0 for dim in shape):
            raise DlibFormatError(f"negative tensor shape {shape} at {self.offset}")
        count = int(np.prod(shape))
        values = np.frombuffer(self._take(4 * count), dtype="<f4")
        return values.astype(np.float32).reshape(shape)

    def alias_shape(self) -> tuple[int, int, int, int]:
        self.expect_version("alias_tensor", 1)
        return tuple(self.integer() for _ in range(4))  # type: ignore[return-value]

    def expect_version(self, what: str, expected: int) -> None:
        version = self.integer()
        if version != expected:
            raise DlibFormatError(f"{what} version {version} (expected {expected}) at {self.offset}")


@dataclass(frozen=True)
class LayerSpec:
    """One layer of the C++ network type, as the reader expects to find it.

    `kind` is a computational kind ("input", "con", "fc", "affine", "relu", "add_prev", "max_pool",
    "avg_pool") or a wrapper ("tag", "skip"); `tag` names the tag a tag/skip/add_prev refers to.
    """

    kind: str
    tag: int | None = None


@dataclass
class Layer:
    """A layer as read from the file: its spec plus its parameters (empty for wrappers)."""

    spec: LayerSpec
    params: dict = field(default_factory=dict)


@dataclass
class DlibNetwork:
    """A deserialised network: layers in computation order (input first) and the loss parameters."""

    layers: list[Layer]
    loss: dict


def _read_multipliers(stream: DlibStream) -> None:
    # Learning-rate and weight-decay multipliers only matter for training.
    for _ in range(4):
        stream.real()


def _read_con(stream: DlibStream, name: str) -> dict:
    params = stream.tensor().reshape(-1)
    num_filters = stream.integer()
    kernel = (stream.integer(), stream.integer())
    stride = (stream.integer(), stream.integer())
    padding = (stream.integer(), stream.integer())
    filter_shape = stream.alias_shape()
    bias_shape = stream.alias_shape()
    _read_multipliers(stream)
    use_bias = stream.boolean() if name in ("con_5", "con_6") else True
    fused_relu = stream.boolean() if name == "con_6" else False
    filter_count = int(np.prod(filter_shape))
    if filter_shape[0] != num_filters or params.size < filter_count:
        raise DlibFormatError(f"convolution parameters do not match its shape {filter_shape}")
    bias = params[filter_count : filter_count + int(np.prod(bias_shape))]
    return {
        "weight": params[:filter_count].reshape(filter_shape),  # (out, in, kh, kw) as in ONNX
        "bias": bias if use_bias else np.zeros(num_filters, np.float32),
        "kernel": kernel,
        "stride": stride,
        "padding": padding,
        "fused_relu": fused_relu,
    }


def _read_fc(stream: DlibStream, name: str) -> dict:
    num_outputs = stream.integer()
    num_inputs = stream.integer()
    params = stream.tensor().reshape(-1)
    weight_shape = stream.alias_shape()
    bias_shape = stream.alias_shape()
    has_bias = stream.integer() == 0  # dlib's fc_bias_mode: 0 = FC_HAS_BIAS
    _read_multipliers(stream)
    if name == "fc_3":
        has_bias = stream.boolean() and has_bias
    weight_count = int(np.prod(weight_shape))
    if weight_shape[:2] != (num_inputs, num_outputs):
        raise DlibFormatError(f"fc weight shape {weight_shape} != ({num_inputs}, {num_outputs})")
    bias = params[weight_count : weight_count + int(np.prod(bias_shape))] if has_bias else None
    return {"weight": params[:weight_count].reshape(num_inputs, num_outputs), "bias": bias}


def _read_affine(stream: DlibStream, name: str) -> dict:
    params = stream.tensor().reshape(-1)
    gamma_shape = stream.alias_shape()
    stream.alias_shape()
    stream.integer()  # conv or fc mode: per channel either way for this network
    disabled = stream.boolean() if name == "affine_2" else False
    count = int(np.prod(gamma_shape))
    if disabled:
        return {"gamma": np.ones(count, np.float32), "beta": np.zeros(count, np.float32)}
    return {"gamma": params[:count].copy(), "beta": params[count : 2 * count].copy()}


def _read_relu(stream: DlibStream, name: str) -> dict:
    return {"disabled": stream.boolean() if name == "relu_2" else False}


def _read_pool(stream: DlibStream, name: str) -> dict:
    return {
        "kernel": (stream.integer(), stream.integer()),
        "stride": (stream.integer(), stream.integer()),
        "padding": (stream.integer(), stream.integer()),
    }


def _read_input_rgb(stream: DlibStream, name: str) -> dict:
    mean = [stream.real() for _ in range(3)]
    size = (stream.integer(), stream.integer()) if name == "input_rgb_image_sized" else None
    return {"mean": np.array(mean, np.float32), "size": size}


def _read_loss_metric(stream: DlibStream, name: str) -> dict:
    if name == "loss_metric_2":
        return {"margin": stream.real(), "distance_threshold": stream.real()}
    return {"margin": 0.04, "distance_threshold": 0.6}


def _read_nothing(stream: DlibStream, name: str) -> dict:
    return {}


# Stored layer name -> (kind it implements, detail reader).
_LAYER_READERS = {
    "con_4": ("con", _read_con),
    "con_5": ("con", _read_con),
    "con_6": ("con", _read_con),
    "fc_2": ("fc", _read_fc),
    "fc_3": ("fc", _read_fc),
    "affine_": ("affine", _read_affine),
    "affine_2": ("affine", _read_affine),
    "relu_": ("relu", _read_relu),
    "relu_2": ("relu", _read_relu),
    "add_prev_": ("add_prev", _read_nothing),
    "max_pool_2": ("max_pool", _read_pool),
    "avg_pool_2": ("avg_pool", _read_pool),
    "input_rgb_image": ("input", _read_input_rgb),
    "input_rgb_image_sized": ("input", _read_input_rgb),
    "loss_metric_": ("loss_metric", _read_loss_metric),
    "loss_metric_2": ("loss_metric", _read_loss_metric),
}

_WRAPPERS = ("tag", "skip")


def _read_layer(stream: DlibStream, expected_kind: str) -> dict:
    name = stream.string()
    if name not in _LAYER_READERS:
        raise DlibFormatError(f"unsupported dlib layer {name!r} at {stream.offset}")
    kind, reader = _LAYER_READERS[name]
    if kind != expected_kind:
        raise DlibFormatError(f"expected a {expected_kind} layer, the file has {name!r}")
    return reader(stream, name)


def read_network(data: bytes, architecture: list[LayerSpec]) -> DlibNetwork:
    """Deserialise a dlib DNN whose type is `architecture` (input first, then each layer in order)."""
    if len(architecture) < 2 or architecture[0].kind != "input" or architecture[1].kind in _WRAPPERS:
        raise ValueError("an architecture starts with its input layer, then a computational layer")
    stream = DlibStream(data)
    stream.expect_version("loss layer", 1)
    loss = _read_layer(stream, "loss_metric")

    body = architecture[1:]
    versions = [stream.integer() for _ in reversed(body)][::-1]
    input_params = _read_layer(stream, "input")
    layers = [Layer(architecture[0], input_params)]
    innermost = 0  # the layer that owns the input layer stores extra state
    for position, spec in enumerate(body):
        if spec.kind in _WRAPPERS:
            if versions[position] != 1:
                raise DlibFormatError(f"{spec.kind} layer version {versions[position]} (expected 1)")
            layers.append(Layer(spec))
            continue
        params = _read_layer(stream, spec.kind)
        for _ in range(3):  # setup/staleness flags
            stream.boolean()
        stream.tensor()  # gradient w.r.t. the layer's input
        stream.tensor()  # cached output
        if position == innermost:
            stream.tensor()  # final gradient
            if versions[position] >= 3:
                stream.integer()  # sample expansion factor
        elif versions[position] >= 2:
            stream.tensor()  # parameter gradient
        layers.append(Layer(spec, params))
    if not stream.at_end:
        raise DlibFormatError(f"{len(data) - stream.offset} unexpected bytes after the network")
    return DlibNetwork(layers, loss)
