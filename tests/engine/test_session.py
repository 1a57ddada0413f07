"""The onnxruntime session wrapper and the standard-operator check."""

from __future__ import annotations

import numpy as np
from onnx import helper

from tests.engine.conftest import make_model
from ulixes_onnx.engine.session import cached_session, create_session, default_domain_only


def relu_model():
    return make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": ["N", 2]}, ["y"])


def test_cached_session_is_reused_per_model_and_settings():
    model = relu_model()
    first = cached_session(model, threads=1)
    assert cached_session(model, threads=1) is first
    assert cached_session(model, threads=2) is not first


def test_session_runs_on_cpu_with_the_requested_threads():
    session = create_session(relu_model(), threads=1)
    assert session.get_providers() == ["CPUExecutionProvider"]
    (y,) = session.run(["y"], {"x": np.array([[-1.0, 2.0]])})
    np.testing.assert_array_equal(y, [[0.0, 2.0]])


def test_default_domain_only_finds_contrib_operators():
    model = relu_model()
    assert default_domain_only(model)
    model.graph.node[0].domain = "com.microsoft"
    assert not default_domain_only(model)
