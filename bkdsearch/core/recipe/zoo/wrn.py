"""Wide ResNets for CIFAR as defined by RepDistiller / mdistiller (``wrn_16_1`` ... ``wrn_40_2``).

Pre-activation blocks grouped in ``NetworkBlock``s (``block1.layer.0`` ...), a 1x1
``convShortcut`` where the width changes, and a final ``bn1`` + relu before pooling.

Atoms: ``stem`` (conv1 alone: the blocks are pre-activation), then one atom per residual
block named by its state-dict prefix (``block1.layer.0`` ... ``block3.layer.{n-1}``). Head:
final bn1 + relu, 8x8 average pool, flatten, fc.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .atoms import Chain, Decomposition

__all__ = ["NetworkBlock", "WideBasicBlock", "WideResNet"]


class WideBasicBlock(nn.Module):
    """Pre-activation block: (bn-relu-conv) x 2, identity or 1x1 ``convShortcut``."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        # As upstream: with a projection shortcut the projection reads the pre-activated
        # input; an identity shortcut carries the raw input.
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return torch.add(shortcut, out)


class NetworkBlock(nn.Module):
    """A stage of ``nb_layers`` wide blocks, held in ``self.layer`` (upstream's name)."""

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(out_planes if i else in_planes, out_planes, 1 if i else stride)
                for i in range(nb_layers)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k for 32x32 inputs (no dropout, as in the distillation benchmarks)."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n+4 (16, 22, 28, 40...), got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.fc = nn.Linear(channels[3], num_classes)
        self.n_channels = channels[3]
        # Upstream initialisation: He (fan_out) convs, identity BN, zero linear bias.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def _head_modules(self) -> list[nn.Module]:
        return [self.bn1, nn.ReLU(), nn.AvgPool2d(8), nn.Flatten(1), self.fc]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits."""
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = F.relu(self.bn1(x))
        x = F.avg_pool2d(x, 8)
        return self.fc(torch.flatten(x, 1))

    def decompose(self) -> Decomposition:
        """Atoms ``stem``, ``block1.layer.0`` ...; head bn1 + relu + avgpool + flatten + fc."""
        atoms: list[tuple[str, nn.Module]] = [("stem", Chain(self.conv1))]
        for stage in ("block1", "block2", "block3"):
            for i, block in enumerate(getattr(self, stage).layer):
                atoms.append((f"{stage}.layer.{i}", block))
        return Decomposition(tuple(atoms), Chain(*self._head_modules()))

    def stage_ends(self) -> list[str]:
        """Atoms whose outputs are upstream's ``is_feat`` features f0..f3."""
        return ["stem"] + [
            f"{stage}.layer.{len(getattr(self, stage).layer) - 1}"
            for stage in ("block1", "block2", "block3")
        ]


def wrn_16_1(num_classes: int = 100) -> WideResNet:
    """Return WRN-16-1."""
    return WideResNet(16, 1, num_classes)


def wrn_16_2(num_classes: int = 100) -> WideResNet:
    """Return WRN-16-2."""
    return WideResNet(16, 2, num_classes)


def wrn_40_1(num_classes: int = 100) -> WideResNet:
    """Return WRN-40-1."""
    return WideResNet(40, 1, num_classes)


def wrn_40_2(num_classes: int = 100) -> WideResNet:
    """Return WRN-40-2."""
    return WideResNet(40, 2, num_classes)
