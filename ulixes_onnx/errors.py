"""Errors a user can act on.

Every exception raised for bad input or a broken environment derives from `UlixesError`; its message is
one line that names the problem and what to do. The CLI prints that line and exits non-zero, without a
traceback.
"""


class UlixesError(Exception):
    """A problem the user can fix; `str(error)` is a complete one-line explanation."""

    exit_code = 1


class UsageError(UlixesError):
    """The command line asks for something that cannot be done (e.g. two inputs with one output)."""

    exit_code = 2


class ModelError(UlixesError):
    """A model is unknown, cannot be built, or its file on disk is damaged."""

    exit_code = 3


class GraphError(UlixesError):
    """An ONNX graph cannot be differentiated or wrapped (e.g. an operator without a backward rule)."""

    exit_code = 4


class ImageError(UlixesError):
    """A photo cannot be read or written."""

    exit_code = 5


class FaceError(UlixesError):
    """Faces cannot be detected, aligned or pasted back with the given photo or settings."""

    exit_code = 6
