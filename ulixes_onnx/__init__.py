"""ulixes-onnx: adversarial face cloaks against facial recognition, computed with ONNX gradient graphs.

The public API, importable from here: `Cloaker` and `CloakSettings` (cloak pixels), `cloak_files` with
`PhotoFile` and `OutputOptions` (cloak files as the `cloak` command does), and the results
`CloakResult`, `FaceReport` and `FileReport`. They are loaded on first use, so that importing the
package (and the command line's `--help`) stays quick.
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "Cloaker": "ulixes_onnx.cloaking.pipeline",
    "CloakResult": "ulixes_onnx.cloaking.pipeline",
    "FaceReport": "ulixes_onnx.cloaking.pipeline",
    "PhotoPixels": "ulixes_onnx.cloaking.pipeline",
    "CloakSettings": "ulixes_onnx.cloaking.settings",
    "cloak_files": "ulixes_onnx.cloaking.files",
    "FileReport": "ulixes_onnx.cloaking.files",
    "PhotoFile": "ulixes_onnx.cloaking.files",
    "OutputOptions": "ulixes_onnx.cloaking.files",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> object:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'ulixes_onnx' has no attribute {name!r}")
