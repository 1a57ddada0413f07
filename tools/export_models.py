"""Build models ahead of time into the model store.

The same as `ulixes-onnx models build [--force] [NAME ...]`; set ULIXES_ONNX_MODELS_DIR to choose the
store.

usage: python tools/export_models.py [--force] [NAME ...]
"""

from __future__ import annotations

import sys

from ulixes_onnx.cli import main

if __name__ == "__main__":
    sys.argv = ["ulixes-onnx", "models", "build", *sys.argv[1:]]
    main()
