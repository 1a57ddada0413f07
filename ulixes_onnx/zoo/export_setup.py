"""TensorFlow's environment for the export scripts, set before TensorFlow is first imported.

The export modules (export_graphdef.py, export_tfjs.py, export_keras.py, export_tflite.py) run in the
export toolchain's interpreter, never inside the ulixes-onnx process, and import nothing from
ulixes_onnx. Each imports this module first: `import export_setup` sorts before the TensorFlow imports.
"""

import os

import numpy as np

# tf-keras (Keras 2) instead of Keras 3: Keras 3 has no LocallyConnected2D and reads .h5 weights of
# Keras 2 models only partly.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if not hasattr(np, "product"):
    # tf2onnx 1.17 still calls numpy.product, which numpy 2 removed.
    np.product = np.prod

# The opset tf2onnx converts to.
OPSET = 17
