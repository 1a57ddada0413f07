"""The ONNX gradient engine: cloak graphs (loss, input gradient, embeddings) in standard ONNX operators.

- `adapter.with_canonical_input` folds a model's input convention in front of it;
- `cloak_graph.build_cloak_graph` builds the one graph a cloaking step runs;
- `autodiff.add_input_gradient` is the reverse-mode differentiation behind it, with the per-operator
  backward rules in `rules.py` and value-preserving forward rewrites in `rewrite.py`;
- `session` runs graphs in onnxruntime on the CPU.

The names below are loaded on first use: running built graphs needs only `session` and `names`, and
the builders import onnx.
"""

from importlib import import_module

_PUBLIC = {
    "InputSpec": "ulixes_onnx.engine.adapter",
    "with_canonical_input": "ulixes_onnx.engine.adapter",
    "add_input_gradient": "ulixes_onnx.engine.autodiff",
    "build_cloak_graph": "ulixes_onnx.engine.cloak_graph",
    "cached_session": "ulixes_onnx.engine.session",
    "create_session": "ulixes_onnx.engine.session",
    "default_domain_only": "ulixes_onnx.engine.session",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str) -> object:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'ulixes_onnx.engine' has no attribute {name!r}")
