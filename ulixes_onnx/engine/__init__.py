"""The ONNX gradient engine: cloak graphs (loss, input gradient, embeddings) in standard ONNX operators.

- `adapter.with_canonical_input` folds a model's input convention in front of it;
- `cloak_graph.build_cloak_graph` builds the one graph a cloaking step runs;
- `autodiff.add_input_gradient` is the reverse-mode differentiation behind it, with the per-operator
  backward rules in `rules.py` and value-preserving forward rewrites in `rewrite.py`;
- `session` runs graphs in onnxruntime on the CPU.
"""

from ulixes_onnx.engine.adapter import InputSpec, with_canonical_input
from ulixes_onnx.engine.autodiff import add_input_gradient
from ulixes_onnx.engine.cloak_graph import build_cloak_graph
from ulixes_onnx.engine.session import cached_session, create_session, default_domain_only

__all__ = [
    "InputSpec",
    "add_input_gradient",
    "build_cloak_graph",
    "cached_session",
    "create_session",
    "default_domain_only",
    "with_canonical_input",
]
