"""The cloak graph: one onnxruntime run gives everything a cloaking step needs.

Given a face-embedding model f whose only input is the canonical chip x [N, 3, H, W] (see `adapter.py`)
and whose only output is the embedding [N, D], the graph computes

    loss[i] = max(w[i] * d(f(x[i]), e_neg[i]) - d(f(x[i]), e_pos[i]) + margin[i], 0)

(the adversarial triplet loss of the Ulixes paper with a weight w on the negative term; w = 0 with a large
margin turns descending the loss into moving away from e_pos), its gradient w.r.t. each chip, the
embeddings and both distances. The samples of a batch are independent, so the gradient of the summed loss
is each sample's own gradient.

Built with a `feature` layer (an intermediate tensor h of f), the graph also takes the original face's
features h_pos and a weight u, returns h and the relative feature distance

    d_feat[i] = ||h(x[i]) - h_pos[i]|| / ||h_pos[i]||,

and its gradient output is that of loss - u * d_feat: the step also disrupts mid-level features, which
other networks share more than they share embeddings (the feature-level attacks of the transfer
literature). `loss` itself stays the triplet loss, which decides when an objective is met.

Built with activation noise, every activation layer's output (a Relu, PRelu, LeakyRelu or Clip on
images) is multiplied by an input of per-sample, per-channel factors: each step can run another
perturbed copy of the network, a cheap ensemble of "ghost" networks whose common direction other
networks share more than they share the one network's (the ghost-network and feature-dropout attacks
of the transfer literature). Factors of 1 give the plain network.

Built with the skip-gradient method, the gradient output is no longer the true gradient: on the way
back, the gradient through every residual branch (the deeper input of an Add that joins two image
tensors of one shape) is multiplied by an input factor, while the skip connection passes it whole. The
direction then leans on the features of the early layers, which other networks share more than the
late ones (Wu et al., "Skip connections matter", ICLR 2020). Everything the graph computes forward,
the loss and distances included, is unchanged, and a factor of 1 gives the true gradient.

Built with the linear backward pass, the gradient output is not the true gradient either: the activation
layers of the network's second half pass the gradient back as t times the identity plus 1 - t times
their own derivative, t an input; at t = 1 the late network is taken for linear on the way back (Guo et
al., "Backpropagating linearly improves transferability", NeurIPS 2020), which leans less on the
one network's late decision boundaries. The forward is unchanged, and t = 0 gives the true gradient.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import onnx
from onnx import compose, helper, numpy_helper, shape_inference

from ulixes_onnx.engine.autodiff import add_input_gradient, prepare_model
from ulixes_onnx.engine.names import (
    ACTIVATION_NOISE,
    BACKWARD_LINEARITY,
    CANONICAL_INPUT,
    EMBEDDING,
    FEATURE,
    FEATURE_DISTANCE,
    FEATURE_POSITIVE,
    FEATURE_WEIGHT,
    GRADIENT,
    LOSS,
    MARGIN,
    NEGATIVE,
    NEGATIVE_DISTANCE,
    NEGATIVE_WEIGHT,
    POSITIVE,
    POSITIVE_DISTANCE,
    SKIP_GRADIENT_DECAY,
)
from ulixes_onnx.errors import GraphError

Distance = Literal["euclidean", "cosine"]

# Added under the square roots so that distances (and norms) have a finite gradient at zero: at the
# first step the chip is the original and its distance to its own embedding is exactly 0.
DISTANCE_EPSILON = 1e-12
_NETWORK_PREFIX = "net/"
_LOSS_PREFIX = "loss/"
ACTIVATIONS = ("Relu", "PRelu", "LeakyRelu", "Clip")


class _LossWriter:
    def __init__(self, elem_type: int) -> None:
        self.elem_type = elem_type
        self.dtype = helper.tensor_dtype_to_np_dtype(elem_type)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}

    def node(self, op_type: str, inputs: list[str], output: str, **attributes: object) -> str:
        name = output if output in _OUTPUT_NAMES else _LOSS_PREFIX + output
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attributes))
        return name

    def constant(self, value: np.ndarray, name: str) -> str:
        """A named constant; asking twice for the same name returns the first one."""
        name = _LOSS_PREFIX + name
        self.initializers.setdefault(name, numpy_helper.from_array(value, name))
        return name

    def scalar(self, value: float, name: str) -> str:
        return self.constant(np.array(value, dtype=self.dtype), name)

    def sum_over_features(self, t: str, output: str, keepdims: int) -> str:
        axes = self.constant(np.array([1], np.int64), "feature_axis")
        return self.node("ReduceSum", [t, axes], output, keepdims=keepdims)

    def euclidean(self, embedding: str, reference: str, output: str) -> str:
        difference = self.node("Sub", [embedding, reference], output + "_diff")
        squares = self.node("Mul", [difference, difference], output + "_squares")
        total = self.sum_over_features(squares, output + "_sum", keepdims=0)
        epsilon = self.scalar(DISTANCE_EPSILON, "epsilon")
        return self.node("Sqrt", [self.node("Add", [total, epsilon], output + "_safe")], output)

    def unit(self, t: str, output: str) -> str:
        squares = self.node("Mul", [t, t], output + "_squares")
        total = self.sum_over_features(squares, output + "_sum", keepdims=1)
        safe = self.node("Add", [total, self.scalar(DISTANCE_EPSILON, "epsilon")], output + "_safe")
        return self.node("Div", [t, self.node("Sqrt", [safe], output + "_norm")], output)

    def relative_distance(self, t: str, reference: str, rank: int) -> str:
        """||t - reference|| / ||reference|| per sample, over every axis but the batch's."""
        axes = self.constant(np.arange(1, rank, dtype=np.int64), f"sample_axes_{rank}")
        epsilon = self.scalar(DISTANCE_EPSILON, "epsilon")
        difference = self.node("Sub", [t, reference], "feature_diff")
        change = self.node(
            "ReduceSum",
            [self.node("Mul", [difference, difference], "feature_diff_squares"), axes],
            "feature_change",
            keepdims=0,
        )
        size = self.node(
            "ReduceSum",
            [self.node("Mul", [reference, reference], "feature_squares"), axes],
            "feature_size",
            keepdims=0,
        )
        ratio = self.node(
            "Div",
            [
                self.node("Add", [change, epsilon], "feature_change_safe"),
                self.node("Add", [size, epsilon], "feature_size_safe"),
            ],
            "feature_ratio",
        )
        return self.node("Sqrt", [ratio], FEATURE_DISTANCE)

    def cosine(self, embedding_unit: str, reference: str, output: str) -> str:
        # 1 - cos from normalised vectors: smooth everywhere except at a zero embedding, unlike the
        # distance between normalised vectors (a square root of a difference that cancels to 0).
        reference_unit = self.unit(reference, output + "_unit")
        product = self.node("Mul", [embedding_unit, reference_unit], output + "_product")
        similarity = self.sum_over_features(product, output + "_cos", keepdims=0)
        return self.node("Sub", [self.scalar(1.0, "one"), similarity], output)


_OUTPUT_NAMES = (LOSS, EMBEDDING, POSITIVE_DISTANCE, NEGATIVE_DISTANCE, FEATURE, FEATURE_DISTANCE)


def _single(values: list[onnx.ValueInfoProto], what: str) -> onnx.ValueInfoProto:
    if len(values) != 1:
        raise GraphError(
            f"an embedding model needs exactly one {what}, this one has {len(values)}; "
            "wrap it so that it maps one chip batch to one embedding batch"
        )
    return values[0]


def build_cloak_graph(
    embedding_model: onnx.ModelProto,
    distance: Distance = "euclidean",
    feature: str | None = None,
    *,
    activation_noise: bool = False,
    skip_gradient: bool = False,
    linear_backward: bool = False,
) -> onnx.ModelProto:
    """The cloak graph of a face-embedding model that takes the canonical chip.

    Inputs: x [N, 3, H, W], e_pos [N, D], e_neg [N, D], margin [N] or [1], neg_weight [N] or [1].
    Outputs: loss [N], grad [N, 3, H, W] (d loss_i / d x_i), emb [N, D], d_pos [N], d_neg [N].
    `distance` is "euclidean" (||a - b||) or "cosine" (1 - cos(a, b)). With a `feature` (the name of an
    intermediate tensor of the model): inputs f_pos (that tensor's shape) and feature_weight [N] or [1]
    too, outputs feat and d_feat [N] too, and grad is d (loss_i - feature_weight_i * d_feat_i) / d x_i.
    With `activation_noise`: inputs noise_0, noise_1, ... [N, C, 1, 1] too, the factors of each
    activation layer's output channels, in the order of the network's nodes. With `skip_gradient`: input
    skip_decay [1] too, the factor on the gradient through every residual branch (see the module's
    docstring); a network without residual connections is refused. With `linear_backward`: input
    backward_linearity [1] too, how far the late activation layers pass the gradient back unchanged.
    """
    if distance not in ("euclidean", "cosine"):
        raise GraphError(f"unknown distance '{distance}'; use 'euclidean' or 'cosine'")
    network = prepare_model(embedding_model)
    initializer_names = {tensor.name for tensor in network.graph.initializer}
    chip = _single([v for v in network.graph.input if v.name not in initializer_names], "input")
    embedding = _single(list(network.graph.output), "output")
    chip_dims = chip.type.tensor_type.shape.dim
    if len(chip_dims) != 4 or chip_dims[1].dim_value != 3:
        raise GraphError(
            f"model input '{chip.name}' is not a chip [N, 3, H, W]; fold the model's input "
            "convention in with ulixes_onnx.engine.adapter.with_canonical_input first"
        )
    embedding_dims = embedding.type.tensor_type.shape.dim
    if len(embedding_dims) != 2 or not embedding_dims[1].HasField("dim_value"):
        raise GraphError(
            f"model output '{embedding.name}' is not an embedding batch [N, D] with a fixed D; "
            "flatten the model's output"
        )
    feature_count = embedding_dims[1].dim_value
    elem_type = chip.type.tensor_type.elem_type

    network = compose.add_prefix(network, _NETWORK_PREFIX)
    graph = network.graph
    noise_inputs = _multiply_activations_by_noise(network) if activation_noise else []
    decayed = {branch: SKIP_GRADIENT_DECAY for branch in residual_branches(network)} if skip_gradient else {}
    if skip_gradient and not decayed:
        raise GraphError("the network has no residual connections for the skip-gradient method to decay")
    linearised = (
        {output: BACKWARD_LINEARITY for output in late_activations(network)} if linear_backward else {}
    )
    if linear_backward and not linearised:
        raise GraphError(
            "the network has no Relu, PRelu, LeakyRelu or Clip activations on images for the linear "
            "backward pass"
        )
    loss = _LossWriter(elem_type)
    loss.nodes.append(helper.make_node("Identity", [CANONICAL_INPUT], [graph.input[0].name], name="chip"))
    emb = loss.node("Identity", [graph.output[0].name], EMBEDDING)
    if distance == "euclidean":
        d_pos = loss.euclidean(emb, POSITIVE, POSITIVE_DISTANCE)
        d_neg = loss.euclidean(emb, NEGATIVE, NEGATIVE_DISTANCE)
    else:
        emb_unit = loss.unit(emb, "emb_unit")
        d_pos = loss.cosine(emb_unit, POSITIVE, POSITIVE_DISTANCE)
        d_neg = loss.cosine(emb_unit, NEGATIVE, NEGATIVE_DISTANCE)
    weighted = loss.node("Mul", [NEGATIVE_WEIGHT, d_neg], "weighted_negative")
    gap = loss.node("Sub", [weighted, d_pos], "gap")
    objective = loss.node("Relu", [loss.node("Add", [gap, MARGIN], "hinge_input")], LOSS)
    feature_shape = None
    if feature is not None:
        feature_shape = _tensor_shape(network, _NETWORK_PREFIX + feature, feature)
        d_feat = loss.relative_distance(
            loss.node("Identity", [_NETWORK_PREFIX + feature], FEATURE), FEATURE_POSITIVE, len(feature_shape)
        )
        disruption = loss.node("Mul", [FEATURE_WEIGHT, d_feat], "weighted_feature")
        objective = loss.node("Sub", [objective, disruption], "objective")

    batch = onnx.TensorShapeProto.Dimension()
    batch.CopyFrom(chip_dims[0])
    if not batch.dim_value and not batch.dim_param:
        batch.dim_param = "N"
    batch_dim = batch.dim_value or batch.dim_param

    chip_input = onnx.ValueInfoProto()
    chip_input.CopyFrom(chip)
    chip_input.name = CANONICAL_INPUT
    del graph.input[:]
    graph.input.extend(
        [
            chip_input,
            helper.make_tensor_value_info(POSITIVE, elem_type, [batch_dim, feature_count]),
            helper.make_tensor_value_info(NEGATIVE, elem_type, [batch_dim, feature_count]),
            # [N] or [1]: one value per sample, or one for the whole batch (broadcast).
            helper.make_tensor_value_info(MARGIN, elem_type, ["margin_count"]),
            helper.make_tensor_value_info(NEGATIVE_WEIGHT, elem_type, ["neg_weight_count"]),
        ]
    )
    graph.input.extend(
        helper.make_tensor_value_info(name, elem_type, [batch_dim, channels, 1, 1])
        for name, channels in noise_inputs
    )
    if decayed:
        graph.input.append(helper.make_tensor_value_info(SKIP_GRADIENT_DECAY, elem_type, [1]))
    if linearised:
        graph.input.append(helper.make_tensor_value_info(BACKWARD_LINEARITY, elem_type, [1]))
    if feature_shape is not None:
        feature_dims = [batch_dim, *feature_shape[1:]]
        graph.input.extend(
            [
                helper.make_tensor_value_info(FEATURE_POSITIVE, elem_type, feature_dims),
                helper.make_tensor_value_info(FEATURE_WEIGHT, elem_type, ["feature_weight_count"]),
            ]
        )
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(LOSS, elem_type, [batch_dim]),
            helper.make_tensor_value_info(EMBEDDING, elem_type, [batch_dim, feature_count]),
            helper.make_tensor_value_info(POSITIVE_DISTANCE, elem_type, [batch_dim]),
            helper.make_tensor_value_info(NEGATIVE_DISTANCE, elem_type, [batch_dim]),
        ]
    )
    if feature_shape is not None:
        graph.output.extend(
            [
                helper.make_tensor_value_info(FEATURE, elem_type, feature_dims),
                helper.make_tensor_value_info(FEATURE_DISTANCE, elem_type, [batch_dim]),
            ]
        )
    forward_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([loss.nodes[0], *forward_nodes, *loss.nodes[1:]])
    graph.initializer.extend(loss.initializers.values())
    return add_input_gradient(
        network,
        CANONICAL_INPUT,
        objective,
        grad_name=GRADIENT,
        scaled_gradients=decayed,
        linearised=linearised,
    )


def late_activations(network: onnx.ModelProto) -> list[str]:
    """The outputs of the activation layers on images in the second half of the network (by order)."""
    images = {name for name, shape in _inferred_shapes(network).items() if len(shape) == 4}
    layers = [
        node.output[0]
        for node in network.graph.node
        if node.op_type in ACTIVATIONS and node.output[0] in images
    ]
    return layers[len(layers) // 2 :]


def residual_branches(network: onnx.ModelProto) -> list[tuple[str, int]]:
    """The residual branches of a network: for every Add that joins two image tensors [N, C, H, W] of
    one shape computed from the input, (its output, the index of its deeper input). The deeper input,
    the one more nodes away from the input on its longest path, is the branch; the other is the skip
    connection (an identity, or a projection shorter than the branch)."""
    shapes = _inferred_shapes(network)
    depth = {value.name: 0 for value in network.graph.input}
    for tensor in network.graph.initializer:
        depth.pop(tensor.name, None)
    branches = []
    for node in network.graph.node:
        computed = [depth[name] for name in node.input if name in depth]
        if computed:
            for output in node.output:
                depth[output] = max(computed) + 1
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        left, right = node.input
        joined = [shapes.get(name) for name in (left, right)]
        if left not in depth or right not in depth or joined[0] != joined[1] or len(joined[0] or []) != 4:
            continue
        if depth[left] != depth[right]:
            branches.append((node.output[0], 0 if depth[left] > depth[right] else 1))
    return branches


def _multiply_activations_by_noise(network: onnx.ModelProto) -> list[tuple[str, int]]:
    """Multiply the output of every activation layer on images by a new input of per-channel factors;
    the inputs' names and channel counts."""
    channels = {
        name: shape[1]
        for name, shape in _inferred_shapes(network).items()
        if len(shape) == 4 and isinstance(shape[1], int) and shape[1] > 0
    }
    graph = network.graph
    nodes: list[onnx.NodeProto] = []
    inputs: list[tuple[str, int]] = []
    for node in graph.node:
        nodes.append(node)
        output = node.output[0]
        if node.op_type not in ACTIVATIONS or output not in channels:
            continue
        noise = f"{ACTIVATION_NOISE}{len(inputs)}"
        node.output[0] = output + "/noiseless"
        nodes.append(helper.make_node("Mul", [node.output[0], noise], [output], name=output + "/noise"))
        inputs.append((noise, channels[output]))
    del graph.node[:]
    graph.node.extend(nodes)
    return inputs


def _tensor_shape(network: onnx.ModelProto, name: str, shown: str) -> list[int | str]:
    """The inferred shape of one of the network's tensors (its batch axis first)."""
    shape = _inferred_shapes(network).get(name)
    if shape is None:
        raise GraphError(f"the model has no tensor '{shown}' to use as its feature layer")
    if len(shape) < 2 or not all(isinstance(size, int) and size > 0 for size in shape[1:]):
        raise GraphError(f"feature layer '{shown}' has no fixed shape [N, ...] ({shape})")
    return shape


def _inferred_shapes(network: onnx.ModelProto) -> dict[str, list[int | str]]:
    """The shape ONNX infers for each of the network's tensors (inputs included)."""
    inferred = shape_inference.infer_shapes(network).graph
    return {
        value.name: [dim.dim_value or dim.dim_param for dim in value.type.tensor_type.shape.dim]
        for value in [*inferred.input, *inferred.value_info, *inferred.output]
    }
