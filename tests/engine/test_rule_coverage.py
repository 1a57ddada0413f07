"""Guard: every operator in the backward-rule table has a finite-difference test.

An operator counts as tested when an engine test module that compares gradients with finite
differences (through `assert_gradient_matches` or `gradient_error`) names it as a string: in a
`make_node` call or in a parametrize list of cases. A rule added to engine/rules.py without such a
case fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

from ulixes_onnx.engine.rules import BACKWARD_RULES

FINITE_DIFFERENCE_CHECKS = ("assert_gradient_matches", "gradient_error")


def _operators_named_in_finite_difference_tests() -> dict[str, list[str]]:
    named: dict[str, list[str]] = {}
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        if not used & set(FINITE_DIFFERENCE_CHECKS):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in BACKWARD_RULES:
                named.setdefault(node.value, []).append(path.name)
    return named


def test_every_backward_rule_has_a_finite_difference_case():
    untested = sorted(set(BACKWARD_RULES) - set(_operators_named_in_finite_difference_tests()))
    assert not untested, f"backward rules without a finite-difference test: {untested}"


def test_modules_without_finite_difference_checks_do_not_count():
    # test_rewrite.py names Relu, Clip, Max and Min but only compares forward values.
    named = _operators_named_in_finite_difference_tests()
    assert all("test_rewrite.py" not in files for files in named.values())
