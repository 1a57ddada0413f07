"""The eval cache's code digest: code changes re-cloak, rewording comments and docstrings does not."""

from __future__ import annotations

from ulixes_onnx.evaluation.cache import code_without_prose

MODULE = '''"""A module."""

# Why the step is what it is.
def step(x):
    """Move x."""
    return x + 1  # one


class Loop:
    """A loop."""

    def run(self):
        """Run."""
'''


def test_comments_and_docstrings_do_not_count() -> None:
    reworded = (
        MODULE.replace("A module.", "The module, said better.")
        .replace("# Why the step is what it is.", "# Another reason.")
        .replace("Move x.", "Move x by one.")
        .replace("# one", "# still one")
    )
    assert code_without_prose(reworded) == code_without_prose(MODULE)


def test_code_changes_count() -> None:
    assert code_without_prose(MODULE.replace("x + 1", "x + 2")) != code_without_prose(MODULE)
    # a string that is not a docstring is code
    assert code_without_prose(MODULE.replace("return x + 1", 'x = "a"\n    return x')) != code_without_prose(
        MODULE.replace("return x + 1", 'x = "b"\n    return x')
    )
