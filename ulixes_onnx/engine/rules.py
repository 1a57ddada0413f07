"""Backward rules: one small function per ONNX operator, in one table.

A rule receives the backward graph, the forward node and the gradients of the node's outputs (aligned with
`node.output`; `None` where an output does not reach the loss) and returns the gradients of the node's
inputs (aligned with `node.input`; `None` where no gradient is wanted or defined). Rules build gradients
only for inputs where `graph.needs_grad(name)` holds; gradients w.r.t. weights are never built. Adding an
operator is one `@backward_rule` function here and one finite-difference test.

Every emitted operator is valid from opset 18 on (Col2Im; axes of ReduceSum, Squeeze, Unsqueeze, Split are
inputs).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper

from ulixes_onnx.engine.backward_graph import BackwardGraph

Gradients = list[str | None]
Rule = Callable[[BackwardGraph, onnx.NodeProto, Gradients], Gradients]

BACKWARD_RULES: dict[str, Rule] = {}

# Operators whose outputs carry no gradient: integer or boolean results, shape computations, and
# piecewise-constant functions whose derivative is zero almost everywhere.
NON_DIFFERENTIABLE = frozenset(
    {
        "ArgMax", "ArgMin", "And", "Bernoulli", "Ceil", "Constant", "ConstantOfShape", "Equal",
        "EyeLike", "Floor", "Greater", "GreaterOrEqual", "IsInf", "IsNaN", "Less", "LessOrEqual",
        "Multinomial", "NonZero", "Not", "OneHot", "Or", "RandomNormal", "RandomNormalLike",
        "RandomUniform", "RandomUniformLike", "Range", "Round", "Shape", "Sign", "Size", "Xor",
    }
)  # fmt: skip

_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min
# Exporters spell "to the end" as INT64_MAX or INT32_MAX.
_INT32_MAX = np.iinfo(np.int32).max


def backward_rule(*op_types: str) -> Callable[[Rule], Rule]:
    """Register a function as the backward rule of the given operators."""

    def register(rule: Rule) -> Rule:
        for op_type in op_types:
            BACKWARD_RULES[op_type] = rule
        return rule

    return register


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _ints_attr(node: onnx.NodeProto, name: str, default: list[int]) -> list[int]:
    return [int(v) for v in _attr(node, name, default)]  # type: ignore[union-attr]


def _only_first_input(graph: BackwardGraph, node: onnx.NodeProto, grad: str) -> Gradients:
    grads: Gradients = [None] * len(node.input)
    if graph.needs_grad(node.input[0]):
        grads[0] = grad
    return grads


def _per_input(node: onnx.NodeProto, make: Callable[[int, str], str | None]) -> Gradients:
    return [make(index, name) if name else None for index, name in enumerate(node.input)]


# ---- elementwise arithmetic -------------------------------------------------------------------


@backward_rule("Identity", "Dropout")
def _identity(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    # Dropout is the identity at inference, the only mode a gradient graph is run in.
    return _only_first_input(g, node, dys[0])


@backward_rule("Add", "Sum")
def _add(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    y = node.output[0]
    return _per_input(node, lambda _, x: g.unbroadcast(dys[0], x, y, node) if g.needs_grad(x) else None)


@backward_rule("Sub")
def _sub(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    a, b = node.input
    y = node.output[0]
    return [
        g.unbroadcast(dys[0], a, y, node) if g.needs_grad(a) else None,
        g.unbroadcast(g.op("Neg", [dys[0]]), b, y, node) if g.needs_grad(b) else None,
    ]


@backward_rule("Neg")
def _neg(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    return [g.op("Neg", [dys[0]])]


@backward_rule("Mul")
def _mul(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    a, b = node.input
    y = node.output[0]
    return [
        g.unbroadcast(g.op("Mul", [dys[0], b]), a, y, node) if g.needs_grad(a) else None,
        g.unbroadcast(g.op("Mul", [dys[0], a]), b, y, node) if g.needs_grad(b) else None,
    ]


@backward_rule("Div")
def _div(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    a, b = node.input
    y = node.output[0]
    grad_a = grad_b = None
    if g.needs_grad(a):
        grad_a = g.unbroadcast(g.op("Div", [dys[0], b]), a, y, node)
    if g.needs_grad(b):  # d(a/b)/db = -(a/b)/b
        grad_b_full = g.op("Neg", [g.op("Div", [g.op("Mul", [dys[0], y]), b])])
        grad_b = g.unbroadcast(grad_b_full, b, y, node)
    return [grad_a, grad_b]


@backward_rule("Reciprocal")
def _reciprocal(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    y = node.output[0]
    return [g.op("Neg", [g.op("Mul", [dys[0], g.op("Mul", [y, y])])])]


@backward_rule("Sqrt")
def _sqrt(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    y = node.output[0]
    return [g.op("Div", [g.op("Mul", [dys[0], g.scalar(0.5, y)]), y])]


@backward_rule("Exp")
def _exp(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    return [g.op("Mul", [dys[0], node.output[0]])]


@backward_rule("Log")
def _log(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    return [g.op("Div", [dys[0], node.input[0]])]


@backward_rule("Abs")
def _abs(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    return [g.op("Mul", [dys[0], g.op("Sign", [node.input[0]])])]


@backward_rule("Pow")
def _pow(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    base, exponent = node.input
    y = node.output[0]
    grad_base = grad_exponent = None
    if g.needs_grad(base):
        exponent_value = g.value(exponent)
        if exponent_value is not None:
            same_type = exponent_value.astype(g.dtype(base))
            exponent_as_base = g.constant(same_type, "exponent")
            lowered = g.constant(same_type - 1, "exponent")
        else:
            exponent_as_base = g.op("Cast", [exponent], to=g.elem_type(base))
            lowered = g.op("Sub", [exponent_as_base, g.scalar(1.0, base)])
        slope = g.op("Mul", [exponent_as_base, g.op("Pow", [base, lowered])])
        grad_base = g.unbroadcast(g.op("Mul", [dys[0], slope]), base, y, node)
    if g.needs_grad(exponent):
        slope = g.op("Mul", [y, g.op("Log", [base])])
        grad_exponent = g.unbroadcast(g.op("Mul", [dys[0], slope]), exponent, y, node)
    return [grad_base, grad_exponent]


@backward_rule("Max", "Min")
def _max_min(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    # The inputs that attain the result share its gradient equally, as torch does for ties.
    y = node.output[0]
    masks = [g.op("Cast", [g.op("Equal", [x, y])], to=g.elem_type(y)) for x in node.input]
    count = masks[0] if len(masks) == 1 else g.op("Sum", masks)
    shared = g.op("Div", [dys[0], count])
    return _per_input(
        node,
        lambda index, x: (
            g.unbroadcast(g.op("Mul", [shared, masks[index]]), x, y, node) if g.needs_grad(x) else None
        ),
    )


@backward_rule("Where")
def _where(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    condition, a, b = node.input
    y = node.output[0]
    zero = g.scalar(0.0, y)
    return [
        None,
        g.unbroadcast(g.op("Where", [condition, dys[0], zero]), a, y, node) if g.needs_grad(a) else None,
        g.unbroadcast(g.op("Where", [condition, zero, dys[0]]), b, y, node) if g.needs_grad(b) else None,
    ]


@backward_rule("Cast")
def _cast(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    return [g.op("Cast", [dys[0]], to=g.elem_type(node.input[0]))]


# ---- activations ------------------------------------------------------------------------------


def _masked(g: BackwardGraph, mask: str, grad: str, like: str) -> str:
    """The gradient where a boolean mask holds, zero elsewhere (`like`: a forward tensor of the
    gradient's element type).

    Multiplying by the mask cast to float is much faster in onnxruntime than Where with a broadcast
    scalar zero, which takes a generic broadcasting path (benchmarks/results/design-measurements-*).
    """
    return g.op("Mul", [grad, _mask_as_float(g, mask, like)])


def _mask_as_float(g: BackwardGraph, mask: str, like: str) -> str:
    return g.op("Cast", [mask], to=g.elem_type(like))


@backward_rule("Relu")
def _relu(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    y = node.output[0]
    return [_masked(g, g.op("Greater", [y, g.scalar(0.0, y)]), dys[0], y)]


@backward_rule("LeakyRelu")
def _leaky_relu(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    x = node.input[0]
    alpha = float(_attr(node, "alpha", 0.01))  # type: ignore[arg-type]
    positive = _mask_as_float(g, g.op("Greater", [x, g.scalar(0.0, x)]), x)
    # slope = alpha + (1 - alpha) * [x > 0]
    rise = g.op("Mul", [positive, g.scalar(1.0 - alpha, x)])
    return [g.op("Mul", [dys[0], g.op("Add", [rise, g.scalar(alpha, x)])])]


@backward_rule("PRelu")
def _prelu(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    x, slope = node.input
    positive = _mask_as_float(g, g.op("Greater", [x, g.scalar(0.0, x)]), x)
    # local slope = slope + (1 - slope) * [x > 0]; with a constant slope, 1 - slope is a constant
    # (which `rewrite.prelus_as_local_slopes` recognises).
    value = g.value(slope)
    one_less = g.op("Sub", [g.scalar(1.0, x), slope]) if value is None else g.constant(1 - value, "rise")
    rise = g.op("Mul", [positive, one_less])
    return [g.op("Mul", [dys[0], g.op("Add", [rise, slope])]), None]


@backward_rule("Clip")
def _clip(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    # The mask reads the output, strictly inside the bounds, not the input: a convolution's output
    # read by nothing but the Clip lets onnxruntime fuse the Clip into the convolution.
    y = node.output[0]
    bounds = [
        g.op(compare, [y, node.input[index]])
        for index, compare in ((1, "Greater"), (2, "Less"))
        if len(node.input) > index and node.input[index]
    ]
    grads: Gradients = [None] * len(node.input)
    if not bounds:
        grads[0] = dys[0]
        return grads
    inside = bounds[0] if len(bounds) == 1 else g.op("And", bounds)
    grads[0] = _masked(g, inside, dys[0], y)
    return grads


@backward_rule("Sigmoid")
def _sigmoid(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    y = node.output[0]
    slope = g.op("Mul", [y, g.op("Sub", [g.scalar(1.0, y), y])])
    return [g.op("Mul", [dys[0], slope])]


@backward_rule("Tanh")
def _tanh(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    y = node.output[0]
    slope = g.op("Sub", [g.scalar(1.0, y), g.op("Mul", [y, y])])
    return [g.op("Mul", [dys[0], slope])]


@backward_rule("Softmax")
def _softmax(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    y = node.output[0]
    axis = g.int64s([int(_attr(node, "axis", -1))])  # type: ignore[arg-type]
    dot = g.op("ReduceSum", [g.op("Mul", [dys[0], y]), axis], keepdims=1)
    return [g.op("Mul", [y, g.op("Sub", [dys[0], dot])])]


@backward_rule("LogSoftmax")
def _log_softmax(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    y = node.output[0]
    axis = g.int64s([int(_attr(node, "axis", -1))])  # type: ignore[arg-type]
    total = g.op("ReduceSum", [dys[0], axis], keepdims=1)
    return [g.op("Sub", [dys[0], g.op("Mul", [g.op("Exp", [y]), total])])]


# ---- convolution and pooling ------------------------------------------------------------------


class _Window:
    """Kernel, strides, dilations and explicit begin/end pads of a sliding-window node."""

    def __init__(self, g: BackwardGraph, node: onnx.NodeProto, kernel: list[int]) -> None:
        x, y = node.input[0], node.output[0]
        spatial = len(kernel)
        axes = range(2, 2 + spatial)
        self.kernel = kernel
        self.strides = _ints_attr(node, "strides", [1] * spatial)
        self.dilations = _ints_attr(node, "dilations", [1] * spatial)
        self.in_size = g.static_dims(x, node, axes)
        self.out_size = g.static_dims(y, node, axes)
        auto_pad = _attr(node, "auto_pad", "NOTSET")
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            totals = [
                max((out - 1) * stride + self._span(i) - size, 0)
                for i, (out, stride, size) in enumerate(
                    zip(self.out_size, self.strides, self.in_size, strict=True)
                )
            ]
            smaller = [total // 2 for total in totals]
            larger = [total - half for total, half in zip(totals, smaller, strict=True)]
            upper = auto_pad == "SAME_UPPER"
            self.pads_begin = smaller if upper else larger
            self.pads_end = larger if upper else smaller
        elif auto_pad == "VALID":
            self.pads_begin = [0] * spatial
            self.pads_end = [0] * spatial
        else:
            pads = _ints_attr(node, "pads", [0] * 2 * spatial)
            self.pads_begin, self.pads_end = pads[:spatial], pads[spatial:]

    def _span(self, axis: int) -> int:
        return (self.kernel[axis] - 1) * self.dilations[axis] + 1

    def transpose_padding(self) -> tuple[list[int], list[int]]:
        """Pads and output_padding of the ConvTranspose that maps the output grid back onto the input.

        The windows read input rows [-pad_begin, reach); rows past the input are cropped by a larger end
        pad, and rows the windows never reach (floor mode) are added back as output padding.
        """
        end_pads, output_padding = [], []
        for axis, (out, stride, size, begin) in enumerate(
            zip(self.out_size, self.strides, self.in_size, self.pads_begin, strict=True)
        ):
            reach = (out - 1) * stride + self._span(axis)
            overshoot = reach - begin - size
            end_pads.append(max(overshoot, 0))
            output_padding.append(max(-overshoot, 0))
        return self.pads_begin + end_pads, output_padding


def _polyphase_weight(weight: np.ndarray, group: int, strides: list[int], dilations: list[int]) -> np.ndarray:
    """The stride-1 convolution weight that computes the transposed convolution of a Conv weight
    [M, C/group, k...] one stride phase at a time.

    Along an axis with stride s, input row i = s * m + r - pad receives dy[m - j] * w[s * j + r] for
    every j: for each phase r that is a full correlation of dy with the sub-kernel w[r::s], flipped.
    The result is [C * R, M/group, J...] with output channel c * R + (phase index, row-major) where
    R is the product over axes of the phases that have taps (min(s, span)) and J = ceil(span / s).
    Along strided axes dilation is spelled out as zeros between the taps, so that every phase sees a
    dense sub-kernel; along stride-1 axes it stays a dilation of the Conv.
    """
    filters, channels_per_group, *kernel = weight.shape
    spatial = len(kernel)
    spread = [d if s > 1 else 1 for s, d in zip(strides, dilations, strict=True)]
    lengths = [(k - 1) * d + 1 for k, d in zip(kernel, spread, strict=True)]
    taps = [-(-length // stride) for length, stride in zip(lengths, strides, strict=True)]
    phases = [min(stride, length) for stride, length in zip(strides, lengths, strict=True)]
    grouped = weight.reshape(group, filters // group, channels_per_group, *kernel)
    swapped = np.swapaxes(grouped, 1, 2).reshape(group * channels_per_group, filters // group, *kernel)
    padded = np.zeros(
        (*swapped.shape[:2], *(j * s for j, s in zip(taps, strides, strict=True))), weight.dtype
    )
    taps_at = (slice(0, length, d) for length, d in zip(lengths, spread, strict=True))
    padded[(slice(None), slice(None), *taps_at)] = swapped
    # Kernel tap t = s * j + r: split each kernel axis into (j, r), keep the phases that have taps.
    split = padded.reshape(*swapped.shape[:2], *itertools.chain(*zip(taps, strides, strict=True)))
    split = split[(slice(None), slice(None), *itertools.chain(*((slice(None), slice(0, r)) for r in phases)))]
    phase_axes = [3 + 2 * axis for axis in range(spatial)]
    tap_axes = [2 + 2 * axis for axis in range(spatial)]
    by_phase = np.flip(split.transpose([0, *phase_axes, 1, *tap_axes]), axis=tuple(range(-spatial, 0)))
    return np.ascontiguousarray(by_phase).reshape(-1, filters // group, *taps)


def _scatter_blocks(
    g: BackwardGraph,
    blocks: str,
    channels: int,
    block: list[int],
    window: _Window,
    dilations: list[int],
    pads: list[int],
) -> str:
    """Col2Im: add blocks [N, channels * prod(block), window positions...] onto the window's input
    grid (one block per output position, `strides` apart, taps `dilations` apart), padded by `pads`
    (begins, then ends) and cropped back to the input size."""
    flat = g.op("Reshape", [blocks, g.int64s([0, channels * int(np.prod(block)), -1])])
    return g.op(
        "Col2Im",
        [flat, g.int64s(window.in_size), g.int64s(block)],
        strides=window.strides,
        dilations=dilations,
        pads=pads,
    )


def _scatter_windows(g: BackwardGraph, per_tap: str, channels: int, window: _Window) -> str:
    """Add each window's per-tap values [N, channels, taps, out...] back onto its input positions."""
    pads, _ = window.transpose_padding()
    return _scatter_blocks(g, per_tap, channels, window.kernel, window, window.dilations, pads)


# The polyphase Conv also multiplies by the zeros that pad each phase's sub-kernel to a common size;
# beyond this much extra work onnxruntime's ConvTranspose (a GEMM, then col2im) is faster, on dense
# convolutions of enough input channels (see `_transposes_slowly`).
_MAX_POLYPHASE_WORK = 1.5
# onnxruntime's fast (NCHWc) Conv works on blocks of 16 channels: below that ConvTranspose's col2im
# dominates (on FaceRes's first layer; benchmarks/results/design-measurements-*).
_MIN_CONV_TRANSPOSE_CHANNELS = 16


def _polyphase_work(window: _Window) -> float:
    """Multiply-adds of the polyphase Conv per multiply-add of the transposed convolution."""
    work = 1.0
    for kernel, stride, dilation in zip(window.kernel, window.strides, window.dilations, strict=True):
        if stride > 1:
            span = (kernel - 1) * dilation + 1
            work *= min(stride, span) * -(-span // stride) / kernel
    return work


def _transposes_slowly(weight: np.ndarray, group: int) -> bool:
    """Whether onnxruntime's ConvTranspose is slow on this weight whatever the polyphase overhead.

    It runs one GEMM per group, then col2im over C/group * prod(kernel) rows per group: grouped
    (depthwise) convolutions and convolutions of few input channels C (the first layer, whose input
    is the chip) spend their time there; on HSE FaceRes the polyphase Conv makes the whole step faster.
    """
    input_channels = weight.shape[1] * group
    return group > 1 or input_channels < _MIN_CONV_TRANSPOSE_CHANNELS


def _transposed_convolution(
    g: BackwardGraph, dy: str, weight: np.ndarray, group: int, window: _Window
) -> str:
    """The input gradient of a convolution with constant weight [M, C/group, k...] over `window`.

    onnxruntime's ConvTranspose is several times slower than its Conv, so the transposed convolution
    is computed as one stride-1 Conv on polyphase sub-kernels (see `_polyphase_weight`); for strides
    above 1, Col2Im interleaves the phases onto the input grid and crops it to the input.
    """
    channels = weight.shape[1] * group
    taps, dilations, phases, conv_pads, crops_begin, crops_end = [], [], [], ([], []), [], []
    for kernel, dilation, stride, size, out, pad in zip(
        window.kernel,
        window.dilations,
        window.strides,
        window.in_size,
        window.out_size,
        window.pads_begin,
        strict=True,
    ):
        span = (kernel - 1) * dilation + 1
        extent = span if stride == 1 else -(-span // stride)
        phase_count = min(stride, span)
        first_row, last_row = pad // stride, (size - 1 + pad) // stride
        pad_begin = max(extent - 1 - first_row, 0)
        # Conv output row u holds row m = u + first of the phase grid, i.e. input rows
        # s * m + r - pad; the crop drops the rows before input row 0.
        first = extent - 1 - pad_begin
        crop = pad - stride * first
        # Enough rows for the last input row, and for Col2Im's block count to come out whole.
        length = max(last_row - first + 1, -(-(size + crop - phase_count) // stride) + 1)
        pad_end = max(length - (out + pad_begin - extent + 1), 0)
        length = out + pad_begin + pad_end - extent + 1
        taps.append(kernel if stride == 1 else extent)
        dilations.append(dilation if stride == 1 else 1)
        phases.append(phase_count)
        conv_pads[0].append(pad_begin)
        conv_pads[1].append(pad_end)
        crops_begin.append(crop)
        crops_end.append((length - 1) * stride + phase_count - size - crop)
    phase_weight = _polyphase_weight(weight, group, window.strides, window.dilations)
    grad = g.op(
        "Conv",
        [dy, g.constant(phase_weight, "phase_weight")],
        group=group,
        kernel_shape=taps,
        dilations=dilations,
        pads=conv_pads[0] + conv_pads[1],
    )
    spatial = len(taps)
    if any(stride > 1 for stride in window.strides):
        pads = crops_begin + crops_end
        return _scatter_blocks(g, grad, channels, phases, window, [1] * spatial, pads)
    if any(crops_begin) or any(crops_end):
        ends = [crop + size for crop, size in zip(crops_begin, window.in_size, strict=True)]
        axes = range(2, 2 + spatial)
        grad = g.op("Slice", [grad, g.int64s(crops_begin), g.int64s(ends), g.int64s(axes)])
    return grad


@backward_rule("Conv")
def _conv(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    weight = node.input[1]
    grads: Gradients = [None] * len(node.input)
    kernel = g.static_dims(weight, node, range(2, g.rank(weight, node)))
    window = _Window(g, node, kernel)
    group = int(_attr(node, "group", 1))  # type: ignore[arg-type]
    weight_value = g.value(weight)
    if weight_value is not None and (
        _polyphase_work(window) <= _MAX_POLYPHASE_WORK or _transposes_slowly(weight_value, group)
    ):
        grads[0] = _transposed_convolution(g, dys[0], weight_value, group, window)
        return grads
    pads, output_padding = window.transpose_padding()
    # A Conv weight [M, C/group, k...] is already laid out as the ConvTranspose weight that maps the
    # M output channels back onto the C input channels, so the initializer is shared, not copied.
    grads[0] = g.op(
        "ConvTranspose",
        [dys[0], weight],
        group=group,
        kernel_shape=kernel,
        strides=window.strides,
        dilations=window.dilations,
        pads=pads,
        output_padding=output_padding,
    )
    return grads


@backward_rule("ConvTranspose")
def _conv_transpose(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    weight = node.input[1]
    if _attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID") or _attr(node, "output_shape"):
        raise g.error(node, "only explicit pads are supported (no auto_pad SAME, no output_shape)")
    spatial = g.rank(weight, node) - 2
    pads = [0] * 2 * spatial
    if _attr(node, "auto_pad", "NOTSET") == "NOTSET":
        pads = _ints_attr(node, "pads", pads)
    grads: Gradients = [None] * len(node.input)
    # The strided convolution with the same weight and pads lands exactly on the input grid because
    # output_padding < stride only adds rows that the convolution's floor division drops again.
    grads[0] = g.op(
        "Conv",
        [dys[0], weight],
        group=int(_attr(node, "group", 1)),  # type: ignore[arg-type]
        kernel_shape=g.static_dims(weight, node, range(2, 2 + spatial)),
        strides=_ints_attr(node, "strides", [1] * spatial),
        dilations=_ints_attr(node, "dilations", [1] * spatial),
        pads=pads,
    )
    return grads


@backward_rule("MaxPool")
def _max_pool(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    # A Conv with one-hot kernels copies every window's taps out exactly (one output channel per
    # channel and tap); the taps equal to the window's maximum share its gradient equally (as the
    # Max and ReduceMax rules and torch do for ties), and Col2Im sends them back to their input
    # positions. Asking MaxPool for Indices would switch onnxruntime to a much slower kernel; strided
    # slices of the input cost several passes per tap, and ArgMax is slower than the ReduceSum that
    # counts the ties (benchmarks/results/design-measurements-*).
    x, y = node.input[0], node.output[0]
    kernel = _ints_attr(node, "kernel_shape", [])
    window = _Window(g, node, kernel)
    spatial = len(kernel)
    channels = g.static_dims(x, node, [1])[0]
    taps = int(np.prod(kernel))
    pads, _ = window.transpose_padding()
    source = x
    if any(pads):
        # Padding must never be picked. It is the lowest finite value, not -inf, which the zero
        # taps of the one-hot kernels would turn into NaN (0 * -inf).
        lowest = g.scalar(float(np.finfo(g.dtype(x)).min), x)
        source = g.op("Pad", [x, g.int64s([0, 0, *pads[:spatial], 0, 0, *pads[spatial:]]), lowest])
    one_hot = np.zeros((channels, taps, taps), dtype=g.dtype(x))
    one_hot[:, range(taps), range(taps)] = 1
    windows = g.op(
        "Conv",
        [source, g.constant(one_hot.reshape(channels * taps, 1, *kernel), "window_taps")],
        group=channels,
        kernel_shape=kernel,
        strides=window.strides,
        dilations=window.dilations,
    )
    per_window = g.int64s([0, channels, 1, -1])
    per_tap = g.op("Reshape", [windows, g.int64s([0, channels, taps, -1])])
    maxima = _mask_as_float(g, g.op("Equal", [per_tap, g.op("Reshape", [y, per_window])]), x)
    ties = g.op("ReduceSum", [maxima, g.int64s([2])], keepdims=1)
    share = g.op("Div", [g.op("Reshape", [dys[0], per_window]), ties])
    return [_scatter_windows(g, g.op("Mul", [maxima, share]), channels, window)]


def _window_counts(window: _Window, include_pad: bool) -> np.ndarray:
    """How many input elements each averaging window divides by, per output position."""
    per_axis = []
    for axis, (out, size, stride) in enumerate(
        zip(window.out_size, window.in_size, window.strides, strict=True)
    ):
        low = -window.pads_begin[axis] if include_pad else 0
        high = size + window.pads_end[axis] if include_pad else size
        starts = np.arange(out) * stride - window.pads_begin[axis]
        taps = starts[:, None] + np.arange(window.kernel[axis]) * window.dilations[axis]
        per_axis.append(((taps >= low) & (taps < high)).sum(axis=1))
    counts = per_axis[0]
    for axis_counts in per_axis[1:]:
        counts = np.multiply.outer(counts, axis_counts)
    return counts


@backward_rule("AveragePool")
def _average_pool(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    x = node.input[0]
    kernel = _ints_attr(node, "kernel_shape", [])
    window = _Window(g, node, kernel)
    channels = g.static_dims(x, node, [1])[0]
    include_pad = bool(_attr(node, "count_include_pad", 0))
    dtype = g.dtype(x)
    inverse_counts = g.constant((1.0 / _window_counts(window, include_pad)).astype(dtype), "inv_n")
    # Every position of a window gets its share of the window's gradient.
    share = g.op("Unsqueeze", [g.op("Mul", [dys[0], inverse_counts]), g.int64s([2])])
    per_offset = g.op("Expand", [share, g.int64s([1, 1, int(np.prod(kernel)), *[1] * len(kernel)])])
    return [_scatter_windows(g, per_offset, channels, window)]


@backward_rule("GlobalAveragePool")
def _global_average_pool(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    x = node.input[0]
    area = int(np.prod(g.static_dims(x, node, range(2, g.rank(x, node)))))
    scaled = g.op("Mul", [dys[0], g.scalar(1.0 / area, x)])
    return [g.op("Expand", [scaled, g.shape_tensor(x, node)])]


def _spread_over_maxima(
    g: BackwardGraph, x: str, kept_max: str, kept_grad: str, axes: list[int] | None
) -> str:
    """Share a reduction's gradient equally among the elements equal to the maximum (or minimum)."""
    mask = g.op("Cast", [g.op("Equal", [x, kept_max])], to=g.elem_type(x))
    count_inputs = [mask] if axes is None else [mask, g.int64s(axes)]
    count = g.op("ReduceSum", count_inputs, keepdims=1)
    return g.op("Mul", [mask, g.op("Div", [kept_grad, count])])


@backward_rule("GlobalMaxPool")
def _global_max_pool(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    x, y = node.input[0], node.output[0]
    axes = list(range(2, g.rank(x, node)))
    return [_spread_over_maxima(g, x, y, dys[0], axes)]


@backward_rule("BatchNormalization")
def _batch_normalization(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    if _attr(node, "training_mode", 0):
        raise g.error(node, "training-mode batch normalisation is not supported")
    x, scale, _, _, variance = node.input[:5]
    epsilon = float(_attr(node, "epsilon", 1e-5))  # type: ignore[arg-type]
    broadcast_shape = [-1] + [1] * (g.rank(x, node) - 2)
    scale_value, variance_value = g.value(scale), g.value(variance)
    if scale_value is not None and variance_value is not None:
        factor = (scale_value / np.sqrt(variance_value + epsilon)).astype(g.dtype(x))
        slope = g.constant(factor.reshape(broadcast_shape), "bn_slope")
    else:
        std = g.op("Sqrt", [g.op("Add", [variance, g.scalar(epsilon, variance)])])
        slope = g.op("Reshape", [g.op("Div", [scale, std]), g.int64s(broadcast_shape)])
    grads: Gradients = [None] * len(node.input)
    grads[0] = g.op("Mul", [dys[0], slope])
    return grads


@backward_rule("LRN")
def _lrn(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    # y = x * d^-beta with d = bias + alpha/size * (window sum over channels of x^2), so
    # dx = dy * d^-beta - 2 alpha beta / size * x * (transposed window sum of dy * x * d^(-beta-1)).
    x, y = node.input[0], node.output[0]
    size = int(_attr(node, "size"))  # type: ignore[arg-type]
    alpha = float(_attr(node, "alpha", 1e-4))  # type: ignore[arg-type]
    beta = float(_attr(node, "beta", 0.75))  # type: ignore[arg-type]
    bias = float(_attr(node, "bias", 1.0))  # type: ignore[arg-type]
    channels = g.static_dims(x, node, [1])[0]
    rank = g.rank(x, node)
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2

    def channel_window_sum(t: str, pad_before: int, pad_after: int) -> str:
        pads = [0] * 2 * rank
        pads[1], pads[rank + 1] = pad_before, pad_after
        padded = g.op("Pad", [t, g.int64s(pads)])
        shifted = [
            g.op("Slice", [padded, g.int64s([k]), g.int64s([k + channels]), g.int64s([1])])
            for k in range(size)
        ]
        return shifted[0] if size == 1 else g.op("Sum", shifted)

    squares = channel_window_sum(g.op("Mul", [x, x]), before, after)
    denominator = g.op("Add", [g.scalar(bias, x), g.op("Mul", [squares, g.scalar(alpha / size, x)])])
    direct = g.op("Mul", [dys[0], g.op("Pow", [denominator, g.scalar(-beta, x)])])
    # y / d = x * d^(-beta-1), so dy * y / d is the term every channel in the window feeds back.
    feedback = g.op("Div", [g.op("Mul", [dys[0], y]), denominator])
    gathered = channel_window_sum(feedback, after, before)
    cross = g.op("Mul", [g.op("Mul", [x, gathered]), g.scalar(2 * alpha * beta / size, x)])
    return [g.op("Sub", [direct, cross])]


@backward_rule("LpNormalization")
def _lp_normalization(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    x, y = node.input[0], node.output[0]
    axis = g.int64s([int(_attr(node, "axis", -1))])  # type: ignore[arg-type]
    p = int(_attr(node, "p", 2))  # type: ignore[arg-type]
    dot = g.op("ReduceSum", [g.op("Mul", [dys[0], y]), axis], keepdims=1)
    if p == 2:
        norm = g.op("Sqrt", [g.op("ReduceSum", [g.op("Mul", [x, x]), axis], keepdims=1)])
        direction = y
    elif p == 1:
        norm = g.op("ReduceSum", [g.op("Abs", [x]), axis], keepdims=1)
        direction = g.op("Sign", [x])
    else:
        raise g.error(node, f"p={p} is not a valid LpNormalization order")
    return [g.op("Div", [g.op("Sub", [dys[0], g.op("Mul", [dot, direction])]), norm])]


# ---- matrix products --------------------------------------------------------------------------


@backward_rule("Gemm")
def _gemm(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    # y = alpha * op(a) @ op(b) + beta * c; each gradient is again one Gemm on the shared weights.
    a, b = node.input[:2]
    dy = dys[0]
    alpha = float(_attr(node, "alpha", 1.0))  # type: ignore[arg-type]
    beta = float(_attr(node, "beta", 1.0))  # type: ignore[arg-type]
    trans_a = int(_attr(node, "transA", 0))  # type: ignore[arg-type]
    trans_b = int(_attr(node, "transB", 0))  # type: ignore[arg-type]
    grads: Gradients = [None] * len(node.input)
    if g.needs_grad(a):
        if trans_a:
            grads[0] = g.op("Gemm", [b, dy], alpha=alpha, transA=trans_b, transB=1)
        else:
            grads[0] = g.op("Gemm", [dy, b], alpha=alpha, transB=1 - trans_b)
    if g.needs_grad(b):
        if trans_b:
            grads[1] = g.op("Gemm", [dy, a], alpha=alpha, transA=1, transB=trans_a)
        else:
            grads[1] = g.op("Gemm", [a, dy], alpha=alpha, transA=1 - trans_a)
    if len(node.input) > 2 and g.needs_grad(node.input[2]):
        scaled = g.op("Mul", [dy, g.scalar(beta, node.input[2])])
        grads[2] = g.unbroadcast(scaled, node.input[2], node.output[0], node)
    return grads


def _swap_last_axes(g: BackwardGraph, t: str, rank: int) -> str:
    return g.op("Transpose", [t], perm=[*range(rank - 2), rank - 1, rank - 2])


@backward_rule("MatMul")
def _matmul(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    a, b = node.input
    y = node.output[0]
    rank_a, rank_b, rank_y = g.rank(a, node), g.rank(b, node), g.rank(y, node)
    dy = dys[0]
    if rank_a == 1 and rank_b == 1:
        return [
            g.op("Mul", [dy, b]) if g.needs_grad(a) else None,
            g.op("Mul", [dy, a]) if g.needs_grad(b) else None,
        ]
    # Vectors are matrices with one extra axis (a: a row, b: a column) that the product drops.
    matrix_a = g.op("Unsqueeze", [a, g.int64s([0])]) if rank_a == 1 else a
    matrix_b = g.op("Unsqueeze", [b, g.int64s([1])]) if rank_b == 1 else b
    matrix_dy = dy
    if rank_a == 1:
        matrix_dy = g.op("Unsqueeze", [matrix_dy, g.int64s([rank_y - 1 if rank_b > 1 else 0])])
    if rank_b == 1:
        matrix_dy = g.op("Unsqueeze", [matrix_dy, g.int64s([-1])])
    matrix_rank_dy = rank_y + (rank_a == 1) + (rank_b == 1)
    grads: Gradients = [None, None]
    if g.needs_grad(a):
        if rank_b == 2 and matrix_rank_dy == 2:
            grad = g.op("Gemm", [matrix_dy, matrix_b], transB=1)  # shares b instead of a copy of b^T
        else:
            grad = g.op("MatMul", [matrix_dy, _swap_last_axes(g, matrix_b, max(rank_b, 2))])
        grads[0] = _sum_to_operand(g, grad, matrix_rank_dy, a, node)
    if g.needs_grad(b):
        grad = g.op("MatMul", [_swap_last_axes(g, matrix_a, max(rank_a, 2)), matrix_dy])
        grads[1] = _sum_to_operand(g, grad, matrix_rank_dy, b, node)
    return grads


def _sum_to_operand(g: BackwardGraph, grad: str, grad_rank: int, operand: str, node: onnx.NodeProto) -> str:
    """Sum a MatMul operand's gradient over broadcast batch axes and drop a vector's extra axis."""
    operand_shape = g.shape(operand, node)
    if len(operand_shape) == 1:
        batch_axes = list(range(grad_rank - 2))
        if batch_axes:
            grad = g.op("ReduceSum", [grad, g.int64s(batch_axes)], keepdims=0)
        return g.op("Reshape", [grad, g.int64s([-1])])
    extra = grad_rank - len(operand_shape)
    return g.sum_leading_and(
        grad, extra, [axis + extra for axis, dim in enumerate(operand_shape[:-2]) if dim == 1]
    )


# ---- reshaping and data movement --------------------------------------------------------------


@backward_rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    x = node.input[0]
    return _only_first_input(g, node, g.op("Reshape", [dys[0], g.shape_tensor(x, node)]))


@backward_rule("Expand")
def _expand(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    return [g.unbroadcast(dys[0], node.input[0], node.output[0], node), None]


@backward_rule("Transpose")
def _transpose(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    rank = g.rank(node.input[0], node)
    perm = _ints_attr(node, "perm", list(reversed(range(rank))))
    return [g.op("Transpose", [dys[0]], perm=[int(i) for i in np.argsort(perm)])]


@backward_rule("Concat")
def _concat(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    axis = int(_attr(node, "axis"))  # type: ignore[arg-type]
    sizes = [g.static_dims(x, node, [axis])[0] for x in node.input]
    parts = g.op_multi("Split", [dys[0], g.int64s(sizes)], len(sizes), axis=axis)
    return _per_input(node, lambda index, x: parts[index] if g.needs_grad(x) else None)


@backward_rule("Split")
def _split(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    axis = int(_attr(node, "axis", 0))  # type: ignore[arg-type]
    parts = [dy if dy is not None else g.zeros_like(y, node) for dy, y in zip(dys, node.output, strict=True)]
    return _only_first_input(g, node, g.op("Concat", parts, axis=axis))


def _onnx_slice_indices(start: int, end: int, step: int, size: int) -> range:
    """The indices ONNX Slice selects, with its clamping rules (which differ from Python's)."""
    start = start + size if start < 0 else start
    end = end + size if end < 0 else end
    if step > 0:
        return range(min(max(start, 0), size), min(max(end, 0), size), step)
    return range(min(max(start, 0), size - 1), min(max(end, -1), size - 1), step)


def _scatter_along_axis(
    g: BackwardGraph,
    grad: str,
    selected: range,
    axis: int,
    x: str,
    node: onnx.NodeProto,
) -> str:
    """Place a gradient of the elements `selected` along `axis` into zeros of the input's size."""
    size = g.static_dims(x, node, [axis])[0]
    axes = g.int64s([axis])
    if selected.step < 0:
        grad = g.op("Slice", [grad, g.int64s([-1]), g.int64s([_INT64_MIN]), axes, g.int64s([-1])])
        selected = selected[::-1]
    count, step = len(selected), selected.step
    if step > 1:
        # Interleave step-1 zeros after each element: add an axis, pad it, and merge it back.
        rank = g.rank(x, node)
        trailing = g.static_dims(x, node, range(axis + 1, rank))
        spread = g.op("Unsqueeze", [grad, g.int64s([axis + 1])])
        pads = [0] * 2 * (rank + 1)
        pads[rank + 1 + axis + 1] = step - 1
        spread = g.op("Pad", [spread, g.int64s(pads)])
        merged_shape = [0] * axis + [count * step, *trailing]
        spread = g.op("Reshape", [spread, g.int64s(merged_shape)])
        span = (count - 1) * step + 1
        grad = g.op("Slice", [spread, g.int64s([0]), g.int64s([span]), axes])
    rank = g.rank(x, node)
    pads = [0] * 2 * rank
    pads[axis] = selected[0]
    pads[rank + axis] = size - selected[-1] - 1
    return g.op("Pad", [grad, g.int64s(pads)])


@backward_rule("Slice")
def _slice(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    x = node.input[0]
    rank = g.rank(x, node)
    starts = g.constant_input(node, 1)
    ends = g.constant_input(node, 2)
    axes = g.constant_input(node, 3)
    steps = g.constant_input(node, 4)
    axes_list = [int(a) % rank for a in (axes if axes is not None else range(len(starts)))]
    steps_list = [int(s) for s in (steps if steps is not None else [1] * len(axes_list))]
    x_shape = g.shape(x, node)
    grad = dys[0]
    # Last axis first: scattering along an axis needs every later axis already at the input's size.
    sliced = sorted(zip(axes_list, starts, ends, steps_list, strict=True), key=lambda entry: -entry[0])
    for axis, start, end, step in sliced:
        if x_shape[axis] is None and int(start) == 0 and int(end) >= _INT32_MAX and step == 1:
            continue  # a full slice of a dynamic axis, such as the batch
        size = g.static_dims(x, node, [axis])[0]
        selected = _onnx_slice_indices(int(start), int(end), step, size)
        if len(selected) == 0:
            return [g.zeros_like(x, node)] + [None] * (len(node.input) - 1)
        if len(selected) == size and step == 1:
            continue
        grad = _scatter_along_axis(g, grad, selected, axis, x, node)
    return _only_first_input(g, node, grad)


@backward_rule("Pad")
def _pad(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    if _attr(node, "mode", "constant") != "constant":
        raise g.error(node, "only constant-mode padding is supported")
    x = node.input[0]
    rank = g.rank(x, node)
    pads = [int(p) for p in g.constant_input(node, 1)]
    axes_value = g.constant_input(node, 3)
    axes = [int(a) % rank for a in axes_value] if axes_value is not None else list(range(rank))
    begins, ends = pads[: len(axes)], pads[len(axes) :]
    # Cropping undoes positive padding; negative padding (a crop in the forward pass) is padded back.
    grad = g.op(
        "Slice",
        [
            dys[0],
            g.int64s(max(b, 0) for b in begins),
            g.int64s(-e if e > 0 else _INT64_MAX for e in ends),
            g.int64s(axes),
        ],
    )
    if any(p < 0 for p in pads):
        restore = [0] * 2 * rank
        for axis, begin, end in zip(axes, begins, ends, strict=True):
            restore[axis], restore[rank + axis] = max(-begin, 0), max(-end, 0)
        grad = g.op("Pad", [grad, g.int64s(restore)])
    return _only_first_input(g, node, grad)


# ---- reductions -------------------------------------------------------------------------------


def _reduced_axes(g: BackwardGraph, node: onnx.NodeProto) -> list[int] | None:
    """The reduced axes (normalised to be non-negative), or None when every axis is reduced."""
    rank = g.rank(node.input[0], node)
    axes_input = g.constant_input(node, 1)
    axes = axes_input.tolist() if axes_input is not None else _attr(node, "axes")
    if not axes:
        return None
    return sorted(int(a) % rank for a in axes)  # type: ignore[union-attr]


def _is_identity_reduction(g: BackwardGraph, node: onnx.NodeProto) -> bool:
    return _reduced_axes(g, node) is None and bool(_attr(node, "noop_with_empty_axes", 0))


def _keep_reduced_axes(g: BackwardGraph, node: onnx.NodeProto, t: str, axes: list[int] | None) -> str:
    """Re-insert the axes a keepdims=0 reduction dropped, so `t` broadcasts against the input."""
    if _attr(node, "keepdims", 1):
        return t
    rank = g.rank(node.input[0], node)
    return g.op("Unsqueeze", [t, g.int64s(axes if axes is not None else range(rank))])


@backward_rule("ReduceSum")
def _reduce_sum(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    x = node.input[0]
    if _is_identity_reduction(g, node):
        return _only_first_input(g, node, dys[0])
    kept = _keep_reduced_axes(g, node, dys[0], _reduced_axes(g, node))
    return _only_first_input(g, node, g.op("Expand", [kept, g.shape_tensor(x, node)]))


@backward_rule("ReduceMean")
def _reduce_mean(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    x = node.input[0]
    if _is_identity_reduction(g, node):
        return _only_first_input(g, node, dys[0])
    axes = _reduced_axes(g, node)
    rank = g.rank(x, node)
    count = int(np.prod(g.static_dims(x, node, axes if axes is not None else range(rank))))
    kept = _keep_reduced_axes(g, node, dys[0], axes)
    scaled = g.op("Mul", [kept, g.scalar(1.0 / count, x)])
    return _only_first_input(g, node, g.op("Expand", [scaled, g.shape_tensor(x, node)]))


@backward_rule("ReduceSumSquare")
def _reduce_sum_square(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    x = node.input[0]
    if _is_identity_reduction(g, node):
        raise g.error(node, "a reduction over no axes (noop_with_empty_axes) is not supported")
    kept = _keep_reduced_axes(g, node, dys[0], _reduced_axes(g, node))
    twice_x = g.op("Mul", [x, g.scalar(2.0, x)])
    return _only_first_input(g, node, g.op("Mul", [twice_x, kept]))


@backward_rule("ReduceL2")
def _reduce_l2(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    # dx = x * dy / y. Where y = 0, x = 0 too, so flooring y at the smallest normal number turns the
    # 0/0 into the subgradient 0 instead of NaN.
    x, y = node.input[0], node.output[0]
    if _is_identity_reduction(g, node):
        raise g.error(node, "a reduction over no axes (noop_with_empty_axes) is not supported")
    axes = _reduced_axes(g, node)
    kept_y = _keep_reduced_axes(g, node, y, axes)
    kept_dy = _keep_reduced_axes(g, node, dys[0], axes)
    floor = g.scalar(float(np.finfo(g.dtype(y)).tiny), y)
    ratio = g.op("Div", [kept_dy, g.op("Max", [kept_y, floor])])
    return _only_first_input(g, node, g.op("Mul", [x, ratio]))


@backward_rule("ReduceMax", "ReduceMin")
def _reduce_max(g: BackwardGraph, node: onnx.NodeProto, dys: Gradients) -> Gradients:
    x, y = node.input[0], node.output[0]
    if _is_identity_reduction(g, node):
        return _only_first_input(g, node, dys[0])
    axes = _reduced_axes(g, node)
    kept_y = _keep_reduced_axes(g, node, y, axes)
    kept_dy = _keep_reduced_axes(g, node, dys[0], axes)
    return _only_first_input(g, node, _spread_over_maxima(g, x, kept_y, kept_dy, axes))
