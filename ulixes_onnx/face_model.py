"""Face-embedding models ready to run: embeddings and cloak steps on canonical chips.

A `FaceModel` takes chips in the canonical space (float32 RGB [N, 3, H, W] in [-1, 1], at the model's
chip size); the model's own input convention is folded into its graphs (`engine.adapter`). It holds two
onnxruntime sessions: the plain forward graph for embeddings, and the cloak graph (loss, input gradient,
embedding and distances in one run). The cloak graph is built once per model and engine version and
kept in the model store, and so are both graphs as onnxruntime optimises them for this machine (see
`engine.session`). Sessions are thread-safe, so one `FaceModel` serves concurrent requests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from ulixes_onnx import faces
from ulixes_onnx.cards import ModelCard, get_card
from ulixes_onnx.engine import names
from ulixes_onnx.engine.session import create_session, machine_key, optimised_for_this_machine
from ulixes_onnx.errors import ModelError
from ulixes_onnx.faces import ChipSpec
from ulixes_onnx.store import BuiltModel, ModelStore

# The graph builders (and onnx, a second of start-up) are imported only when a graph has to be built:
# cloaking runs graphs built earlier and kept in the store.
if TYPE_CHECKING:
    import onnx

    from ulixes_onnx.engine.adapter import InputSpec


@dataclass(frozen=True)
class CloakStep:
    """What one run of the cloak graph returns, one entry per chip."""

    loss: np.ndarray
    grad: np.ndarray
    emb: np.ndarray
    d_pos: np.ndarray
    d_neg: np.ndarray
    d_feat: np.ndarray | None = None


@cache
def engine_fingerprint() -> str:
    """A digest of the engine's source and the onnx version: cached cloak graphs are keyed by it."""
    digest = hashlib.sha256(metadata.version("onnx").encode())
    for entry in sorted(resources.files("ulixes_onnx.engine").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".py"):
            digest.update(entry.read_bytes())
    return digest.hexdigest()


def adapter_spec(card: ModelCard) -> InputSpec:
    """The engine's description of how the card's network takes its input."""
    from ulixes_onnx.engine.adapter import InputSpec

    model_input = card.input
    if model_input is None:
        raise ModelError(f"model {card.name!r} is a {card.kind}, not a face-embedding model")
    return InputSpec(
        input_name=model_input.tensor,
        layout=model_input.layout,  # type: ignore[arg-type]
        channel_order=model_input.channels,  # type: ignore[arg-type]
        scale=model_input.scale,
        offset=model_input.offset,
        prewhiten=model_input.prewhiten,
    )


def forward_graph(card: ModelCard, model_path: Path) -> onnx.ModelProto:
    """The graph the product runs for a card's model file: canonical chip in, embedding out, clamps
    folded into Clip as the cloak graph folds them."""
    import onnx

    from ulixes_onnx.engine.adapter import with_canonical_input
    from ulixes_onnx.engine.rewrite import fold_clamps

    return fold_clamps(with_canonical_input(onnx.load(model_path), adapter_spec(card)))


def distances(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Row-wise distance between embeddings: Euclidean, or cosine distance (1 - cos)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if metric == "euclidean":
        return np.linalg.norm(a - b, axis=-1)
    unit_a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    unit_b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return 1.0 - np.sum(unit_a * unit_b, axis=-1)


class FaceModel:
    """One face-embedding model from the store, with its forward and cloak sessions."""

    def __init__(
        self, model: str | ModelCard, store: ModelStore | None = None, *, threads: int | None = None
    ) -> None:
        store = store or ModelStore()
        self.store = store
        card = get_card(model) if isinstance(model, str) else model
        if card.kind != "embedding":
            raise ModelError(f"model {card.name!r} is a {card.kind}, not a face-embedding model")
        self.card = card
        self.built: BuiltModel = store.get(card)
        self._threads = threads
        # Sessions load the optimised graphs; the graphs they are made from are read (and verified)
        # only when an optimised one has to be made again.
        self._forward = self._optimised_session("forward", lambda: self.forward_graph_path, threads)
        self._cloak = self._optimised_session(f"cloak-{self.metric}", lambda: self.cloak_graph_path, threads)

    @cached_property
    def forward_graph_path(self) -> Path:
        return self.store.derived(
            self.built,
            "forward",
            engine_fingerprint(),
            lambda: forward_graph(self.card, self.built.path).SerializeToString(),
        )

    @cached_property
    def cloak_graph_path(self) -> Path:
        return self.store.derived(
            self.built, f"cloak-{self.metric}", engine_fingerprint(), self._build_cloak_graph
        )

    def _build_cloak_graph(
        self,
        feature: str | None = None,
        activation_noise: bool = False,
        skip_gradient: bool = False,
        linear_backward: bool = False,
        network: onnx.ModelProto | None = None,
    ) -> bytes:
        """The serialised cloak graph, built on `network` (the forward graph, loaded if not given)."""
        import onnx

        from ulixes_onnx.engine.cloak_graph import build_cloak_graph

        graph = build_cloak_graph(
            onnx.load(self.forward_graph_path) if network is None else network,
            self.metric,
            feature,
            activation_noise=activation_noise,
            skip_gradient=skip_gradient,
            linear_backward=linear_backward,
        )
        return graph.SerializeToString()

    @property
    def feature_layer(self) -> str | None:
        """The intermediate tensor the feature-level objective disrupts (the card's), if any."""
        return self.card.cloak.feature_layer

    @cached_property
    def _feature_cloak(self) -> ort.InferenceSession:
        """The cloak graph with the feature-level objective, made on first use (few runs need it)."""
        layer = self.feature_layer
        if layer is None:
            raise ModelError(
                f"model {self.name!r} has no feature layer in its card, so it cannot cloak with a "
                "feature weight; use a feature weight of 0 with it"
            )
        name = f"cloak-{self.metric}-features"
        graph = self.store.derived(
            self.built, name, engine_fingerprint() + layer, lambda: self._build_cloak_graph(layer)
        )
        return self._optimised_session(name, lambda: graph, self._threads)

    @cached_property
    def _noisy_cloak(self) -> ort.InferenceSession:
        """The cloak graph with activation noise, made on first use."""
        name = f"cloak-{self.metric}-noisy"
        graph = self.store.derived(
            self.built, name, engine_fingerprint(), lambda: self._build_cloak_graph(activation_noise=True)
        )
        return self._optimised_session(name, lambda: graph, self._threads)

    @cached_property
    def _chosen_backward_cloak(self) -> tuple[ort.InferenceSession, frozenset[str]]:
        """The cloak graph with the chosen backward passes that the network has room for (the
        skip-gradient method needs residual connections, the linear backward pass Relu-family
        activations), made on first use, and the names of its inputs (read once, not at every step)."""
        name = f"cloak-{self.metric}-chosen-backward"
        graph = self.store.derived(self.built, name, engine_fingerprint(), self._build_chosen_backward_graph)
        session = self._optimised_session(name, lambda: graph, self._threads)
        return session, frozenset(value.name for value in session.get_inputs())

    def _build_chosen_backward_graph(self) -> bytes:
        import onnx

        from ulixes_onnx.engine.cloak_graph import late_activations, residual_branches

        network = onnx.load(self.forward_graph_path)
        return self._build_cloak_graph(
            skip_gradient=bool(residual_branches(network)),
            linear_backward=bool(late_activations(network)),
            network=network,
        )

    @cached_property
    def noise_channels(self) -> tuple[int, ...]:
        """The channel count of each activation layer that activation noise multiplies, in order."""
        prefix = names.ACTIVATION_NOISE
        noise_inputs = [value for value in self._noisy_cloak.get_inputs() if value.name.startswith(prefix)]
        noise_inputs.sort(key=lambda value: int(value.name.removeprefix(prefix)))
        return tuple(int(value.shape[1]) for value in noise_inputs)

    def _optimised_session(
        self, name: str, graph: Callable[[], Path], threads: int | None
    ) -> ort.InferenceSession:
        """A session on the graph as optimised for this machine, optimised once and kept in the store."""
        optimised = self.store.derived(
            self.built,
            f"{name}-optimised",
            engine_fingerprint() + machine_key(),
            lambda: optimised_for_this_machine(graph()),
        )
        unoptimised = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return create_session(optimised, threads=threads, optimization=unoptimised)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def chip_spec(self) -> ChipSpec:
        """How a face is aligned to this model's chip."""
        return faces.chip_spec(self.card.input.alignment, self.store)

    @property
    def chip_size(self) -> tuple[int, int]:
        return self.card.input.size

    @property
    def metric(self) -> str:
        return self.card.embedding.metric

    @property
    def threshold(self) -> float:
        """Distances below this are judged the same person."""
        return self.card.embedding.threshold

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """Embeddings [N, D] of canonical chips [N, 3, H, W]."""
        return self._forward.run(None, {names.CANONICAL_INPUT: self._chips(chips)})[0]

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return distances(a, b, self.metric)

    def step(
        self,
        chips: np.ndarray,
        e_pos: np.ndarray,
        e_neg: np.ndarray,
        margin: float | np.ndarray,
        neg_weight: float | np.ndarray = 1.0,
        *,
        f_pos: np.ndarray | None = None,
        feature_weight: float = 0.0,
        noise: Sequence[np.ndarray] | None = None,
        skip_decay: float = 1.0,
        backward_linearity: float = 0.0,
    ) -> CloakStep:
        """One run of the cloak graph: loss, d loss / d chip, embeddings and both distances. With the
        original faces' `features` (`f_pos`) and a positive `feature_weight`, the gradient is that of
        loss - feature_weight * d_feat (and `d_feat` is returned). With `noise`, one array [N, C] per
        activation layer (`noise_channels`), each layer's output channels are multiplied by those
        factors: everything returned is the perturbed network's. With a `skip_decay` below 1 or a
        `backward_linearity` above 0, the gradient is the chosen backward passes' (see
        `engine.cloak_graph`: the gradient through every residual branch multiplied by `skip_decay`, and
        the late activation layers passing `backward_linearity` of it back unchanged; a network without
        residual connections, or without Relu-family activations, ignores that one); everything else is
        unchanged."""
        feeds = {
            names.CANONICAL_INPUT: self._chips(chips),
            names.POSITIVE: np.asarray(e_pos, np.float32),
            names.NEGATIVE: np.asarray(e_neg, np.float32),
            names.MARGIN: np.atleast_1d(np.asarray(margin, np.float32)),
            names.NEGATIVE_WEIGHT: np.atleast_1d(np.asarray(neg_weight, np.float32)),
        }
        outputs = [
            names.LOSS,
            names.GRADIENT,
            names.EMBEDDING,
            names.POSITIVE_DISTANCE,
            names.NEGATIVE_DISTANCE,
        ]
        if skip_decay != 1.0 or backward_linearity != 0.0:
            if noise is not None or feature_weight > 0:
                raise ValueError("a chosen backward pass cannot be combined with noise or a feature weight")
            session, taken = self._chosen_backward_cloak
            # A network without residual connections (or Relu-family activations) has no such input:
            # that pass leaves its gradient true.
            for input_name, value in (
                (names.SKIP_GRADIENT_DECAY, skip_decay),
                (names.BACKWARD_LINEARITY, backward_linearity),
            ):
                if input_name in taken:
                    feeds[input_name] = np.array([value], np.float32)
            return CloakStep(*session.run(outputs, feeds))
        if noise is not None:
            if feature_weight > 0:
                raise ValueError("activation noise and a feature weight cannot be combined")
            if len(noise) != len(self.noise_channels):
                raise ValueError(
                    f"{self.name} has {len(self.noise_channels)} activation layers, not {len(noise)}"
                )
            for index, factors in enumerate(noise):
                feeds[f"{names.ACTIVATION_NOISE}{index}"] = np.asarray(factors, np.float32)[:, :, None, None]
            return CloakStep(*self._noisy_cloak.run(outputs, feeds))
        if feature_weight <= 0:
            return CloakStep(*self._cloak.run(outputs, feeds))
        if f_pos is None:
            raise ValueError("a feature weight needs the original faces' features (f_pos)")
        feeds[names.FEATURE_POSITIVE] = np.asarray(f_pos, np.float32)
        feeds[names.FEATURE_WEIGHT] = np.array([feature_weight], np.float32)
        return CloakStep(*self._feature_cloak.run([*outputs, names.FEATURE_DISTANCE], feeds))

    def features(self, chips: np.ndarray) -> np.ndarray:
        """The feature layer's activations [N, ...] of canonical chips (see `feature_layer`)."""
        chips = self._chips(chips)
        count = len(chips)
        size = self.card.embedding.size
        feature_input = next(
            value for value in self._feature_cloak.get_inputs() if value.name == names.FEATURE_POSITIVE
        )
        # The graph needs every input; with a zero weight the placeholders change nothing it returns.
        feeds = {
            names.CANONICAL_INPUT: chips,
            names.POSITIVE: np.zeros((count, size), np.float32),
            names.NEGATIVE: np.zeros((count, size), np.float32),
            names.MARGIN: np.zeros(1, np.float32),
            names.NEGATIVE_WEIGHT: np.zeros(1, np.float32),
            names.FEATURE_POSITIVE: np.ones((count, *feature_input.shape[1:]), np.float32),
            names.FEATURE_WEIGHT: np.zeros(1, np.float32),
        }
        return self._feature_cloak.run([names.FEATURE], feeds)[0]

    def _chips(self, chips: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips, np.float32)
        expected = (3, *self.chip_size)
        if chips.ndim != 4 or chips.shape[1:] != expected:
            raise ValueError(
                f"{self.name} takes chips [N, {', '.join(map(str, expected))}], got {chips.shape}"
            )
        return chips
