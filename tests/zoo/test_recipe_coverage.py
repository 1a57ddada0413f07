"""Guard: every conversion recipe is exercised by a slow conversion test, on real or random weights.

A recipe added to zoo/recipes.py without a test that converts a model through it fails here, in the
quick run, instead of going unnoticed until a user's build fails.
"""

from __future__ import annotations

from tests.zoo import test_converted_models, test_exporters, test_facenet_casia
from ulixes_onnx.cards import get_card
from ulixes_onnx.zoo.recipes import RECIPES

CONVERTED_IN_TESTS = {
    *test_converted_models.REAL_WEIGHTS,
    *test_exporters.RANDOM_WEIGHTS,
    test_facenet_casia.CARD.name,
}


def test_every_recipe_is_converted_by_a_test():
    tested = {get_card(name).builder for name in CONVERTED_IN_TESTS}
    assert set(RECIPES) <= tested, f"recipes no test converts: {sorted(set(RECIPES) - tested)}"
