"""MobileNetV2 for CIFAR as defined by RepDistiller / mdistiller.

Registered as ``MobileNetV2``: the half-width variant upstream calls ``mobile_half``
(``MobileNetV2(T=6, width_mult=0.5)``), the name its checkpoints are published under.

Atoms: ``stem`` (conv1: 3x3 stride-2 conv + BN + ReLU), one atom per inverted residual
named by its state-dict prefix (``blocks.0.0``, ``blocks.1.0`` ... ``blocks.6.0``), then
``conv2`` (the 1x1 conv + BN + ReLU to 1280 channels) as the last atom, so that a cut may
fall after ``blocks.6.0``. Head: average pool, flatten, classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from .atoms import Chain, Decomposition, init_vgg_style

__all__ = ["InvertedResidual", "MobileNetV2"]

# (expansion t, channels c, repeats n, first stride s), channels before the width
# multiplier; t None means the model's expansion T.
_SETTING = [
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
]


def _conv_bn(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) - depthwise (3x3) - project (1x1, linear); residual when shapes allow.

    Unlike torchvision, upstream keeps the expansion conv even for ``expand_ratio == 1``.
    """

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """RepDistiller's ``MobileNetV2(T, feature_dim, input_size=32, width_mult)``."""

    def __init__(
        self,
        expansion: int,
        num_classes: int = 100,
        width_mult: float = 1.0,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        if input_size % 32 != 0:
            raise ValueError(f"input_size must be a multiple of 32, got {input_size}")
        # Upstream widens the last conv beyond 1280 for width_mult > 1, which no
        # distillation checkpoint uses; refuse rather than build a different network.
        if width_mult > 1.0:
            raise ValueError(f"width_mult > 1 is not supported, got {width_mult}")
        input_channel = int(32 * width_mult)
        self.conv1 = _conv_bn(3, input_channel, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in _SETTING:
            output_channel = int(c * width_mult)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(
                    InvertedResidual(input_channel, output_channel, stride, t or expansion)
                )
                input_channel = output_channel
            self.blocks.append(nn.Sequential(*layers))
        self.last_channel = 1280
        self.conv2 = _conv_bn(input_channel, self.last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        self.avgpool = nn.AvgPool2d(input_size // 16, ceil_mode=True)
        # Upstream initialisation: He (fan_out) convs, identity BN, N(0, 0.01) linear.
        init_vgg_style(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits."""
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        x = self.conv2(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))

    def decompose(self) -> Decomposition:
        """Atoms ``stem``, ``blocks.{i}.{j}`` ..., ``conv2``; head avgpool + flatten + classifier."""
        atoms: list[tuple[str, nn.Module]] = [("stem", self.conv1)]
        for i, stage in enumerate(self.blocks):
            for j, block in enumerate(stage):
                atoms.append((f"blocks.{i}.{j}", block))
        atoms.append(("conv2", self.conv2))
        head = Chain(self.avgpool, nn.Flatten(1), self.classifier)
        return Decomposition(tuple(atoms), head)

    def stage_ends(self) -> list[str]:
        """Atoms whose outputs are upstream's ``is_feat`` features f0..f4."""
        # Upstream takes features after blocks 1, 2, 4 and 6 (the stride changes).
        return ["stem"] + [f"blocks.{i}.{len(self.blocks[i]) - 1}" for i in (1, 2, 4, 6)]


def mobile_half(num_classes: int = 100) -> MobileNetV2:
    """Upstream's ``mobile_half``: ``MobileNetV2(T=6, width_mult=0.5)``."""
    return MobileNetV2(6, num_classes, width_mult=0.5)
