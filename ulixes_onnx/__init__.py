"""ulixes-onnx: adversarial face cloaks against facial recognition, computed with ONNX gradient graphs."""

__version__ = "0.1.0"
