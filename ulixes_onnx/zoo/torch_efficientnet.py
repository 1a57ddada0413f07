"""EfficientNet-B0 (Tan & Le 2019) in PyTorch, with the memento-face embedding head.

Toolchain side (imported by export_torch.py in the export interpreter; imports nothing from
ulixes_onnx). The module tree mirrors the parameter names of torchvision's `efficientnet_b0().features`
state dicts (`backbone.<stage>.<block>.block.<layer>...`), so that a memento-face state dict loads with
`strict=True`: a file of another architecture fails loudly instead of loading partly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

# (expand ratio, kernel, stride, input channels, output channels, blocks) of the seven MBConv stages.
B0_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
STEM_CHANNELS = 32
TOP_CHANNELS = 1280


class ConvBatchNorm(nn.Sequential):
    """Convolution without bias, batch norm, then SiLU unless `activate` is false ("0", "1", "2" keys)."""

    def __init__(
        self, inputs: int, outputs: int, kernel: int, stride: int = 1, groups: int = 1, activate: bool = True
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(inputs, outputs, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(outputs),
        ]
        if activate:
            layers.append(nn.SiLU())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gates from the globally pooled features: 1x1 conv down, SiLU, 1x1 conv up, sigmoid."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = functional.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(functional.silu(self.fc1(pooled))))


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expansion (absent at ratio 1), depthwise k x k, squeeze-excitation
    on a quarter of the block's input channels, linear 1x1 projection; residual when shapes agree."""

    def __init__(self, expand: int, kernel: int, stride: int, inputs: int, outputs: int) -> None:
        super().__init__()
        expanded = inputs * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBatchNorm(inputs, expanded, 1))
        layers += [
            ConvBatchNorm(expanded, expanded, kernel, stride, groups=expanded),
            SqueezeExcitation(expanded, max(1, inputs // 4)),
            ConvBatchNorm(expanded, outputs, 1, activate=False),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and inputs == outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


def efficientnet_b0_features() -> nn.Sequential:
    """Stem, the seven MBConv stages and the 1x1 conv to 1280 channels (resolution / 32)."""
    stages: list[nn.Module] = [ConvBatchNorm(3, STEM_CHANNELS, 3, stride=2)]
    for expand, kernel, stride, inputs, outputs, blocks in B0_STAGES:
        # Only a stage's first block changes the resolution and the channel count.
        first = MBConv(expand, kernel, stride, inputs, outputs)
        rest = (MBConv(expand, kernel, 1, outputs, outputs) for _ in range(blocks - 1))
        stages.append(nn.Sequential(first, *rest))
    stages.append(ConvBatchNorm(B0_STAGES[-1][4], TOP_CHANNELS, 1))
    return nn.Sequential(*stages)


class MementoFace(nn.Module):
    """memento-face's recognizer: EfficientNet-B0 features, 1x1 conv + batch norm + SiLU to the
    embedding size, global average pooling, batch norm, L2 normalisation.

    The training-only ArcFace class weights ("arcface.weight") are loaded when present, for the strict
    key check, and unused.
    """

    def __init__(self, embedding_size: int, classes: int | None) -> None:
        super().__init__()
        self.backbone = efficientnet_b0_features()
        self.neck = ConvBatchNorm(TOP_CHANNELS, embedding_size, 1)
        # Index 1, as in the state dict: index 0 flattens and has no parameters.
        self.embedding = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(embedding_size))
        if classes is not None:
            self.arcface = nn.Module()
            self.arcface.weight = nn.Parameter(torch.empty(classes, embedding_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = functional.adaptive_avg_pool2d(self.neck(self.backbone(x)), 1)
        return functional.normalize(self.embedding(x), dim=1)


def memento_face(state: dict[str, torch.Tensor]) -> MementoFace:
    """The network of a memento-face state dict, loaded strictly, in inference mode."""
    embedding_size = state["neck.0.weight"].shape[0]
    classes = state["arcface.weight"].shape[0] if "arcface.weight" in state else None
    model = MementoFace(embedding_size, classes)
    model.load_state_dict(state, strict=True)
    return model.eval()
