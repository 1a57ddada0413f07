"""The cloak graph on a small random dlib-style ResNet: outputs, gradient, the away objective."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests.engine.tiny_resnet import CHIP_SIZE, INPUT_NAME, tiny_resnet
from ulixes_onnx.engine.adapter import InputSpec, with_canonical_input
from ulixes_onnx.engine.cloak_graph import build_cloak_graph, late_activations, residual_branches
from ulixes_onnx.engine.session import create_session, default_domain_only
from ulixes_onnx.errors import GraphError

BATCH = 3
OUTPUTS = ["loss", "grad", "emb", "d_pos", "d_neg"]
# dlib's convention: the network takes 0..255 RGB, so native = x * 127.5 + 127.5.
DLIB_STYLE = InputSpec(INPUT_NAME, scale=(127.5,) * 3, offset=(127.5,) * 3)


@pytest.fixture(scope="module")
def network() -> onnx.ModelProto:
    return with_canonical_input(tiny_resnet(), DLIB_STYLE)


@pytest.fixture(scope="module", params=["euclidean", "cosine"])
def cloak(request, network):
    graph = build_cloak_graph(network, distance=request.param)
    return request.param, graph, create_session(graph, threads=1)


def chips(seed: int = 0, batch: int = BATCH) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (batch, 3, CHIP_SIZE, CHIP_SIZE)).astype(np.float32)


def distance(kind: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    if kind == "euclidean":
        return np.linalg.norm(a - b, axis=1)
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return 1 - cosine


def feeds_for(network, x: np.ndarray, margin=0.5, neg_weight=1.0) -> dict[str, np.ndarray]:
    embeddings = create_session(network, threads=1).run(None, {"x": x})[0]
    rng = np.random.default_rng(1)
    count = len(x)
    return {
        "x": x,
        "e_pos": (embeddings + 0.3 * rng.standard_normal(embeddings.shape)).astype(np.float32),
        "e_neg": rng.standard_normal(embeddings.shape).astype(np.float32),
        "margin": np.broadcast_to(np.float32(margin), (count,)).copy(),
        "neg_weight": np.broadcast_to(np.float32(neg_weight), (count,)).copy(),
    }


def test_outputs_equal_the_plain_model_and_the_loss_formula(cloak, network):
    kind, _, session = cloak
    feeds = feeds_for(network, chips())
    loss, grad, emb, d_pos, d_neg = session.run(OUTPUTS, feeds)
    plain = create_session(network, threads=1).run(None, {"x": feeds["x"]})[0]
    np.testing.assert_allclose(emb, plain, rtol=0, atol=1e-6)
    np.testing.assert_allclose(d_pos, distance(kind, emb, feeds["e_pos"]), atol=1e-5)
    np.testing.assert_allclose(d_neg, distance(kind, emb, feeds["e_neg"]), atol=1e-5)
    expected_loss = np.maximum(d_neg - d_pos + 0.5, 0)
    np.testing.assert_allclose(loss, expected_loss, atol=1e-6)
    assert grad.shape == feeds["x"].shape and grad.dtype == np.float32


def directional_errors(session, feeds, step: float, seed: int = 2) -> list[float]:
    """|finite difference - g.d| / |g| per sample along unit directions: the gradient's own and a
    random one (each sample's direction has norm 1, so `step` is the distance moved)."""
    grad = session.run(["grad"], feeds)[0]
    x = feeds["x"]
    errors = []
    for direction in (grad, np.random.default_rng(seed).standard_normal(x.shape)):
        norms = np.linalg.norm(direction.reshape(len(x), -1), axis=1).reshape(-1, 1, 1, 1)
        direction = (direction / norms).astype(np.float32)
        plus = session.run(["loss"], {**feeds, "x": x + step * direction})[0]
        minus = session.run(["loss"], {**feeds, "x": x - step * direction})[0]
        numeric = (plus.astype(np.float64) - minus) / (2 * step)
        analytic = np.sum((grad * direction).reshape(len(x), -1), axis=1, dtype=np.float64)
        scale = np.linalg.norm(grad.reshape(len(x), -1), axis=1)
        errors += list(np.abs(numeric - analytic) / scale)
    return errors


def test_gradient_matches_finite_differences(cloak, network):
    # float32 graph with Relu kinks: the step is as small as float32 rounding of the loss allows.
    _, _, session = cloak
    feeds = feeds_for(network, chips())
    errors = directional_errors(session, feeds, step=1e-3)
    assert max(errors) < 5e-3, errors


def test_each_sample_gets_its_own_gradient(cloak, network):
    _, _, session = cloak
    feeds = feeds_for(network, chips())
    batch_grad = session.run(["grad"], feeds)[0]
    for index in range(BATCH):
        single = {name: value[index : index + 1] for name, value in feeds.items()}
        np.testing.assert_allclose(session.run(["grad"], single)[0][0], batch_grad[index], atol=1e-6)


def test_away_objective_is_margin_minus_distance(cloak, network):
    _, _, session = cloak
    feeds = feeds_for(network, chips(), margin=100.0, neg_weight=0.0)
    loss, d_pos = session.run(["loss", "d_pos"], feeds)
    np.testing.assert_allclose(loss, 100.0 - d_pos, rtol=1e-6)


def test_scalar_margin_and_weight_broadcast_over_the_batch(cloak, network):
    _, _, session = cloak
    per_sample = feeds_for(network, chips(), margin=0.25, neg_weight=0.5)
    shared = {**per_sample, "margin": np.float32([0.25]), "neg_weight": np.float32([0.5])}
    for ours, reference in zip(session.run(OUTPUTS, shared), session.run(OUTPUTS, per_sample), strict=True):
        np.testing.assert_array_equal(ours, reference)


def test_gradient_is_finite_when_the_chip_is_its_own_positive(cloak, network):
    # The first cloaking step starts from the original chip: d_pos = 0 exactly.
    _, _, session = cloak
    feeds = feeds_for(network, chips(), margin=100.0, neg_weight=0.0)
    feeds["e_pos"] = create_session(network, threads=1).run(None, {"x": feeds["x"]})[0]
    loss, grad, d_pos = session.run(["loss", "grad", "d_pos"], feeds)
    assert np.all(d_pos < 1e-5)
    assert np.all(np.isfinite(grad)) and np.all(np.isfinite(loss))


def test_cloak_graph_uses_standard_operators_only(cloak):
    _, graph, _ = cloak
    onnx.checker.check_model(graph)
    assert default_domain_only(graph)
    assert [value.name for value in graph.graph.input] == [
        "x", "e_pos", "e_neg", "margin", "neg_weight"
    ]  # fmt: skip
    assert {value.name for value in graph.graph.output} == set(OUTPUTS)


def test_unknown_distance_is_a_graph_error(network):
    with pytest.raises(GraphError, match="unknown distance"):
        build_cloak_graph(network, distance="manhattan")


def test_model_with_two_inputs_is_a_graph_error(network):
    two_inputs = onnx.ModelProto()
    two_inputs.CopyFrom(network)
    two_inputs.graph.input.append(onnx.helper.make_tensor_value_info("extra", 1, [1]))
    with pytest.raises(GraphError, match="exactly one input"):
        build_cloak_graph(two_inputs)


def middle_feature(network: onnx.ModelProto) -> str:
    """The output of the residual block after the stem: a mid-level feature map of the tiny ResNet."""
    relus = [node.output[0] for node in network.graph.node if node.op_type == "Relu"]
    return relus[len(relus) // 2]


@pytest.fixture(scope="module", params=["euclidean", "cosine"])
def feature_cloak(request, network):
    """The feature graph of one distance, and the plain graph's session of the same distance."""
    graph = build_cloak_graph(network, distance=request.param, feature=middle_feature(network))
    plain = create_session(build_cloak_graph(network, distance=request.param), threads=1)
    return graph, create_session(graph, threads=1), plain


def feature_feeds(network, x: np.ndarray, weight: float = 0.7) -> dict[str, np.ndarray]:
    """Feeds for the feature graph: the features of a nearby chip as the original's."""
    probe = create_session(build_cloak_graph(network, feature=middle_feature(network)), threads=1)
    nearby = (x + 0.05 * np.random.default_rng(3).standard_normal(x.shape)).astype(np.float32)
    base = feeds_for(network, x)
    shape = next(value.shape for value in probe.get_inputs() if value.name == "f_pos")
    placeholders = {"f_pos": np.ones((len(x), *shape[1:]), np.float32), "feature_weight": np.float32([0])}
    f_pos = probe.run(["feat"], {**base, "x": nearby, **placeholders})[0]
    return {**base, "f_pos": f_pos, "feature_weight": np.float32([weight])}


def test_feature_graph_returns_the_relative_feature_distance_and_keeps_the_loss(feature_cloak, network):
    _, session, plain = feature_cloak
    feeds = feature_feeds(network, chips())
    loss, emb, feat, d_feat = session.run(["loss", "emb", "feat", "d_feat"], feeds)
    plain_feeds = {name: value for name, value in feeds.items() if name not in ("f_pos", "feature_weight")}
    plain_loss, plain_emb = plain.run(["loss", "emb"], plain_feeds)
    np.testing.assert_allclose(loss, plain_loss, atol=1e-6)
    np.testing.assert_allclose(emb, plain_emb, atol=1e-6)
    change = np.linalg.norm((feat - feeds["f_pos"]).reshape(len(feat), -1).astype(np.float64), axis=1)
    size = np.linalg.norm(feeds["f_pos"].reshape(len(feat), -1).astype(np.float64), axis=1)
    np.testing.assert_allclose(d_feat, change / size, rtol=1e-4)
    assert np.all(d_feat > 0)


def test_feature_graph_gradient_is_that_of_loss_minus_weighted_feature_distance(feature_cloak, network):
    _, session, _ = feature_cloak
    feeds = feature_feeds(network, chips(), weight=0.7)
    grad = session.run(["grad"], feeds)[0]
    x = feeds["x"]

    def objective(moved: np.ndarray) -> np.ndarray:
        loss, d_feat = session.run(["loss", "d_feat"], {**feeds, "x": moved})
        return loss.astype(np.float64) - 0.7 * d_feat

    step = 1e-3
    for direction in (grad, np.random.default_rng(4).standard_normal(x.shape)):
        norms = np.linalg.norm(direction.reshape(len(x), -1), axis=1).reshape(-1, 1, 1, 1)
        direction = (direction / norms).astype(np.float32)
        numeric = (objective(x + step * direction) - objective(x - step * direction)) / (2 * step)
        analytic = np.sum((grad * direction).reshape(len(x), -1), axis=1, dtype=np.float64)
        scale = np.linalg.norm(grad.reshape(len(x), -1), axis=1)
        assert np.max(np.abs(numeric - analytic) / scale) < 5e-3


def test_feature_weight_zero_gives_the_plain_gradient(feature_cloak, network):
    _, session, plain = feature_cloak
    feeds = feature_feeds(network, chips(), weight=0.0)
    plain_feeds = {name: value for name, value in feeds.items() if name not in ("f_pos", "feature_weight")}
    np.testing.assert_allclose(
        session.run(["grad"], feeds)[0], plain.run(["grad"], plain_feeds)[0], atol=1e-6
    )


def test_feature_graph_has_its_extra_inputs_and_outputs(feature_cloak):
    graph, _, _ = feature_cloak
    onnx.checker.check_model(graph)
    assert default_domain_only(graph)
    assert [value.name for value in graph.graph.input][-2:] == ["f_pos", "feature_weight"]
    assert {value.name for value in graph.graph.output} == {*OUTPUTS, "feat", "d_feat"}


def test_unknown_feature_layer_is_a_graph_error(network):
    with pytest.raises(GraphError, match="no tensor 'nowhere'"):
        build_cloak_graph(network, feature="nowhere")


@pytest.fixture(scope="module")
def noisy_cloak(network):
    graph = build_cloak_graph(network, activation_noise=True)
    return graph, create_session(graph, threads=1), create_session(build_cloak_graph(network), threads=1)


def noise_feeds(session, count: int, spread: float, seed: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        value.name: rng.uniform(1 - spread, 1 + spread, (count, value.shape[1], 1, 1)).astype(np.float32)
        for value in session.get_inputs()
        if value.name.startswith("noise_")
    }


def test_noisy_graph_has_one_channel_noise_input_per_activation(noisy_cloak, network):
    graph, session, _ = noisy_cloak
    onnx.checker.check_model(graph)
    assert default_domain_only(graph)
    relus = [node for node in network.graph.node if node.op_type == "Relu"]
    noise = [value for value in session.get_inputs() if value.name.startswith("noise_")]
    assert [value.name for value in noise] == [f"noise_{i}" for i in range(len(relus))]
    # The tiny ResNet's Relus have 8, 8, 8, 16, 16 channels.
    assert [value.shape[1:] for value in noise] == [[8, 1, 1]] * 3 + [[16, 1, 1]] * 2


def test_unit_noise_gives_the_plain_network(noisy_cloak, network):
    _, session, plain = noisy_cloak
    feeds = feeds_for(network, chips())
    ones = {name: np.ones_like(value) for name, value in noise_feeds(session, BATCH, 0.1).items()}
    for noisy_value, plain_value in zip(
        session.run(OUTPUTS, {**feeds, **ones}), plain.run(OUTPUTS, feeds), strict=True
    ):
        np.testing.assert_allclose(noisy_value, plain_value, atol=1e-6)


def test_noise_changes_the_network_and_its_gradient_matches_finite_differences(noisy_cloak, network):
    _, session, plain = noisy_cloak
    feeds = feeds_for(network, chips())
    noisy = {**feeds, **noise_feeds(session, BATCH, 0.3)}
    noisy_emb, noisy_grad = session.run(["emb", "grad"], noisy)
    plain_emb, plain_grad = plain.run(["emb", "grad"], feeds)
    assert np.min(np.abs(noisy_emb - plain_emb).max(axis=1)) > 1e-3
    assert np.min(np.abs(noisy_grad - plain_grad).reshape(BATCH, -1).max(axis=1)) > 1e-4
    assert max(directional_errors(session, noisy, step=1e-3)) < 5e-3


def _chosen_and_plain(network: onnx.ModelProto, **option: bool):
    """Sessions of the cloak graph with a chosen backward pass and of the plain one."""
    graph = build_cloak_graph(network, **option)
    onnx.checker.check_model(graph)
    assert default_domain_only(graph)
    return create_session(graph, threads=1), create_session(build_cloak_graph(network), threads=1)


@pytest.mark.parametrize(
    ("option", "feed", "neutral", "chosen"),
    [("skip_gradient", "skip_decay", 1.0, 0.3), ("linear_backward", "backward_linearity", 0.0, 1.0)],
)
def test_a_backward_pass_at_its_neutral_value_is_the_true_one_and_never_changes_the_forward(
    network, option, feed, neutral, chosen
):
    session, plain = _chosen_and_plain(network, **{option: True})
    feeds = feeds_for(network, chips())
    expected = plain.run(OUTPUTS, feeds)
    for value, plain_value in zip(
        session.run(OUTPUTS, {**feeds, feed: np.full(1, neutral, np.float32)}), expected, strict=True
    ):
        np.testing.assert_allclose(value, plain_value, atol=1e-6)
    changed = session.run(OUTPUTS, {**feeds, feed: np.full(1, chosen, np.float32)})
    for index in (0, 2, 3, 4):
        np.testing.assert_allclose(changed[index], expected[index], atol=1e-6)
    assert np.abs(changed[1] - expected[1]).max() > 1e-2 * np.abs(expected[1]).max()


def test_residual_branches_are_the_deeper_inputs_of_the_residual_adds(network):
    constants = {tensor.name for tensor in network.graph.initializer}
    adds = [node for node in network.graph.node if node.op_type == "Add" and not constants & set(node.input)]
    # The tiny ResNet's two blocks: Add(block, x) and Add(block, padded average-pooled skip).
    assert residual_branches(network) == [(adds[0].output[0], 0), (adds[1].output[0], 0)]


def test_network_without_residual_connections_or_activations_is_refused_those_backward_passes():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 4, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 48])
    plain = helper.make_model(
        helper.make_graph([helper.make_node("Flatten", ["x"], ["y"])], "flat", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    with pytest.raises(GraphError, match="no residual connections"):
        build_cloak_graph(plain, skip_gradient=True)
    with pytest.raises(GraphError, match="no Relu, PRelu, LeakyRelu or Clip activations"):
        build_cloak_graph(plain, linear_backward=True)


def _frozen_branches(network: onnx.ModelProto, x: np.ndarray, decay: float) -> onnx.ModelProto:
    """The network with every residual branch b replaced by decay * b + (1 - decay) * b(x): the same
    forward at x, and a true gradient there that is the skip-gradient method's."""
    frozen = onnx.ModelProto()
    frozen.CopyFrom(network)
    adds = {node.output[0]: node for node in frozen.graph.node}
    branches = [(adds[output], index) for output, index in residual_branches(network)]
    values = _values_at(network, [node.input[i] for node, i in branches], x)
    for (node, index), value in zip(branches, values, strict=True):
        branch = node.input[index]
        held = numpy_helper.from_array((1 - decay) * value, f"{branch}/held")
        factor = numpy_helper.from_array(np.array(decay, np.float32), f"{branch}/decay")
        frozen.graph.initializer.extend([held, factor])
        frozen.graph.node.extend(
            [
                helper.make_node("Mul", [branch, factor.name], [f"{branch}/decayed"]),
                helper.make_node("Add", [f"{branch}/decayed", held.name], [f"{branch}/mixed"]),
            ]
        )
        node.input[index] = f"{branch}/mixed"
    return _in_topological_order(frozen)


def _values_at(network: onnx.ModelProto, tensors: list[str], x: np.ndarray) -> list[np.ndarray]:
    """The values of some of the network's tensors at chips x."""
    probe = onnx.ModelProto()
    probe.CopyFrom(network)
    probe.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in tensors)
    return create_session(probe, threads=1).run(tensors, {"x": x})


def _in_topological_order(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its nodes reordered so that each comes after the nodes it reads from."""
    done = {value.name for value in [*model.graph.input, *model.graph.initializer]}
    ordered, pending = [], list(model.graph.node)
    while pending:
        ready = next(node for node in pending if all(name in done or not name for name in node.input))
        pending.remove(ready)
        ordered.append(ready)
        done.update(ready.output)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return model


def _assert_chosen_gradient_is_the_frozen_networks(session, network, feed: str, value: float, freeze) -> None:
    """The chosen backward pass's gradient at a chip (`feed` set to `value`) is the true gradient of the
    network frozen there by `freeze(network, x, value)`, by its own graph and by finite differences."""
    x = chips(batch=1)
    feeds = feeds_for(network, x)
    grad = session.run(["grad"], {**feeds, feed: np.full(1, value, np.float32)})[0]
    frozen = create_session(build_cloak_graph(freeze(network, x, value)), threads=1)
    np.testing.assert_allclose(frozen.run(["grad"], feeds)[0], grad, atol=1e-5 * np.abs(grad).max())
    assert_finite_differences_agree(frozen, feeds, grad)


def test_decayed_gradient_is_the_finite_difference_gradient_of_the_network_with_frozen_branches(network):
    session, _ = _chosen_and_plain(network, skip_gradient=True)
    _assert_chosen_gradient_is_the_frozen_networks(session, network, "skip_decay", 0.4, _frozen_branches)


def assert_finite_differences_agree(frozen, feeds: dict[str, np.ndarray], grad: np.ndarray) -> None:
    """`grad` is the gradient of the frozen network's loss at feeds["x"]: central differences along
    the gradient's own direction and a random one."""
    x, step = feeds["x"], 1e-3
    for direction in (grad, np.random.default_rng(3).standard_normal(x.shape)):
        direction = (direction / np.linalg.norm(direction)).astype(np.float32)
        plus = frozen.run(["loss"], {**feeds, "x": x + step * direction})[0][0]
        minus = frozen.run(["loss"], {**feeds, "x": x - step * direction})[0][0]
        numeric = (float(plus) - float(minus)) / (2 * step)
        assert abs(numeric - float(np.sum(grad * direction))) < 5e-3 * np.linalg.norm(grad)


def test_late_activations_are_the_second_half_of_the_activation_layers(network):
    relus = [node.output[0] for node in network.graph.node if node.op_type == "Relu"]
    assert len(relus) == 5 and late_activations(network) == relus[2:]


def _frozen_activations(network: onnx.ModelProto, x: np.ndarray, linearity: float) -> onnx.ModelProto:
    """The network with every late Relu replaced by the affine map through its value at x whose slope is
    linearity + (1 - linearity) * its derivative there: the same forward at x, and a true gradient there
    that is the linear backward pass's."""
    frozen = onnx.ModelProto()
    frozen.CopyFrom(network)
    late = set(late_activations(network))
    relus = [node for node in frozen.graph.node if node.op_type == "Relu" and node.output[0] in late]
    inputs = _values_at(network, [node.input[0] for node in relus], x)
    for node, value in zip(relus, inputs, strict=True):
        slope = linearity + (1 - linearity) * (value > 0)
        offset = np.maximum(value, 0) - slope * value
        output = node.output[0]
        slope_name, offset_name = f"{output}/slope", f"{output}/offset"
        frozen.graph.initializer.extend(
            [
                numpy_helper.from_array(slope.astype(np.float32), slope_name),
                numpy_helper.from_array(offset.astype(np.float32), offset_name),
            ]
        )
        scaled = f"{output}/scaled"
        node.CopyFrom(helper.make_node("Mul", [node.input[0], slope_name], [scaled]))
        frozen.graph.node.append(helper.make_node("Add", [scaled, offset_name], [output]))
    return _in_topological_order(frozen)


def test_linear_gradient_is_the_finite_difference_gradient_of_the_network_with_frozen_activations(network):
    session, _ = _chosen_and_plain(network, linear_backward=True)
    _assert_chosen_gradient_is_the_frozen_networks(
        session, network, "backward_linearity", 0.7, _frozen_activations
    )
