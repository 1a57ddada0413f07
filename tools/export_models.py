"""Build models ahead of time into the model store, or set up the export toolchain.

The same as `ulixes-onnx models build [--force] [--weights FILE] [NAME ...]`; set ULIXES_ONNX_MODELS_DIR
to choose the store. `--setup-toolchain` only installs the export toolchain (TensorFlow, tf-keras,
tf2onnx, PyTorch, in a virtualenv of their own; see ulixes_onnx/zoo/toolchain.py) and prints its python,
which converted models (facenet-vggface2, faceres and the user-weights exporters) need to build.

usage: python tools/export_models.py [--force] [--weights FILE] [NAME ...]
       python tools/export_models.py --setup-toolchain
"""

from __future__ import annotations

import sys

from ulixes_onnx.cli import main
from ulixes_onnx.errors import UlixesError
from ulixes_onnx.zoo.toolchain import install_toolchain, installed_toolchain

if __name__ == "__main__":
    if sys.argv[1:] == ["--setup-toolchain"]:
        try:
            print(installed_toolchain() or install_toolchain())
        except UlixesError as error:
            sys.exit(f"error: {error}")
    else:
        sys.argv = ["ulixes-onnx", "models", "build", *sys.argv[1:]]
        main()
