"""Random weights of the Keras architectures ulixes-onnx converts, saved as Keras 2 .h5 (for the tests).

Runs in the export toolchain's interpreter, like the exporters whose architectures it imports:

    python random_keras_weights.py JOB.json   (job: architecture, output path, seed)

The architecture "foreign-lambda" is a whole saved model whose Lambda layer is not keras-facenet's
residual scaling, which the facenet-keras builder must refuse.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# The exporters are scripts in ulixes_onnx/zoo, importable by name from there.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ulixes_onnx" / "zoo"))

import export_keras
import numpy as np
from export_keras import keras, layers

# Plain stacks, whose random features Keras' defaults shrink far below 1. ResNet-50 keeps the defaults:
# its batch norms (given non-trivial statistics below) rescale every block, and He-normal kernels make
# its residual sums grow block after block instead.
HE_INITIALISED = ("deepface", "vggface-vgg16")


def _he_initialise(model: keras.Model, seed: int) -> None:
    """Random kernels of He-normal scale (the fan-in of one output position) and random biases.

    Keras' default initialisers shrink deep random features far below 1 (DeepFace's to about 1e-5:
    Glorot counts every output position of a locally connected kernel in its fan-in): a fidelity check
    relative to max(1, output scale) would then pass any output. He-normal kernels keep the features
    near unit scale through the ReLUs, and non-zero biases make a misplaced bias show."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if not isinstance(layer, layers.Conv2D | layers.Dense | layers.LocallyConnected2D):
            continue
        kernel, *bias = layer.get_weights()
        fan_in = kernel.shape[-2] if isinstance(layer, layers.LocallyConnected2D) else kernel[..., 0].size
        kernel = rng.standard_normal(kernel.shape, np.float32) * np.float32(np.sqrt(2 / fan_in))
        layer.set_weights([kernel, *(rng.normal(0, 0.1, b.shape).astype(np.float32) for b in bias)])


def save_model_with_foreign_lambda(path: str) -> None:
    """A whole model (architecture and weights) whose Lambda takes a `scale` argument, as keras-facenet's
    do, but adds it instead of multiplying: only its stored code tells it apart."""
    image = layers.Input((160, 160, 3))
    x = layers.Conv2D(4, 3)(image)
    x = layers.Lambda(lambda t, scale: t + scale, arguments={"scale": 1.0})(x)
    x = layers.GlobalAveragePooling2D()(x)
    keras.Model(image, layers.Dense(128)(x)).save(path)


def save_random_keras_weights(architecture: str, path: str, seed: int) -> None:
    """Save randomly initialised weights of an architecture as Keras 2 .h5 (used by the tests)."""
    keras.utils.set_random_seed(seed)
    builders = {
        "vggface-vgg16": export_keras.vggface_vgg16,
        "vggface-resnet50": export_keras.vggface_resnet50,
        "deepface": export_keras.deepface_taigman,
    }
    model = builders[architecture]()
    if architecture in HE_INITIALISED:
        _he_initialise(model, seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            # Non-trivial moving statistics, so that a mix-up of BN weights would show.
            mean, variance = layer.moving_mean.shape, layer.moving_variance.shape
            layer.moving_mean.assign(np.random.default_rng(seed).normal(0, 0.1, mean))
            layer.moving_variance.assign(np.random.default_rng(seed + 1).uniform(0.5, 1.5, variance))
    model.save_weights(path)


if __name__ == "__main__":
    job = json.loads(Path(sys.argv[1]).read_text())
    if job["architecture"] == "foreign-lambda":
        save_model_with_foreign_lambda(job["output"])
    else:
        save_random_keras_weights(job["architecture"], job["output"], job["seed"])
