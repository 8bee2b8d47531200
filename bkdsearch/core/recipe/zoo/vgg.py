"""VGG with batch norm for CIFAR as defined by RepDistiller / mdistiller (``vgg8``, ``vgg13``).

Five conv blocks ``block0`` ... ``block4`` (each a Sequential conv, BN, ReLU, conv, BN ...
without the last ReLU, which forward applies), max pools ``pool0`` ... ``pool3`` between
them, adaptive average ``pool4`` and a linear ``classifier``. As upstream, ``pool3`` only
runs for 64x64 inputs; here that is decided from the feature map entering ``block4`` (8x8
exactly when the input is 64x64), so that the atoms can decide it alone.

Atoms: one per conv + BN + ReLU unit, named ``block{b}.{i}`` where ``i`` is the index of
the unit's conv inside ``block{b}`` (its state-dict prefix): ``block0.0``, ``block1.0`` ...
for vgg8 and ``block0.0``, ``block0.3``, ``block1.0``, ``block1.3`` ... for vgg13. The max
pool in front of a block belongs to that block's first atom. Head: pool4, flatten, classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .atoms import Chain, Decomposition, init_vgg_style

__all__ = ["VGG", "VGG_CFGS"]

VGG_CFGS: dict[str, list[list[int]]] = {
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
    "S": [[64], [128], [256], [512], [512]],
}

# block3's output is 8x8 only for a 64x64 input: the case where upstream adds pool3.
_POOL3_AT = 8


def _gate_pool3(pool3: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return pool3(x) if x.shape[-2] == _POOL3_AT else x


class _Pool3Gate(nn.Module):
    """Applies ``pool3`` when the feature map is the one a 64x64 input gives."""

    def __init__(self, pool3: nn.Module) -> None:
        super().__init__()
        self.pool3 = pool3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _gate_pool3(self.pool3, x)


class VGG(nn.Module):
    """VGG-BN of RepDistiller: ``VGG(cfg, batch_norm=True)``."""

    def __init__(self, cfg: list[list[int]], num_classes: int = 100) -> None:
        super().__init__()
        in_channels = 3
        for b, widths in enumerate(cfg):
            setattr(self, f"block{b}", self._make_block(widths, in_channels))
            in_channels = widths[-1]
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(512, num_classes)
        # Upstream initialisation: He (fan_out) convs with zero bias, identity BN,
        # N(0, 0.01) linear with zero bias.
        init_vgg_style(self)

    @staticmethod
    def _make_block(widths: list[int], in_channels: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for v in widths:
            conv = nn.Conv2d(in_channels, v, kernel_size=3, padding=1)
            layers += [conv, nn.BatchNorm2d(v), nn.ReLU()]
            in_channels = v
        # Upstream drops the block's last ReLU and applies it in forward.
        return nn.Sequential(*layers[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits."""
        x = F.relu(self.block0(x))
        x = F.relu(self.block1(self.pool0(x)))
        x = F.relu(self.block2(self.pool1(x)))
        x = F.relu(self.block3(self.pool2(x)))
        x = F.relu(self.block4(_gate_pool3(self.pool3, x)))
        return self.classifier(torch.flatten(self.pool4(x), 1))

    def decompose(self) -> Decomposition:
        """One atom per conv unit (``block{b}.{conv index}``); head pool4 + flatten + classifier."""
        gate = _Pool3Gate(self.pool3)
        pools: list[nn.Module | None] = [None, self.pool0, self.pool1, self.pool2, gate]
        atoms: list[tuple[str, nn.Module]] = []
        for b, pool in enumerate(pools):
            block: nn.Sequential = getattr(self, f"block{b}")
            for start in range(0, len(block), 3):
                steps: list[nn.Module] = [] if pool is None or start else [pool]
                # conv, BN, then the block's own ReLU or, for its last unit, forward's.
                steps += list(block[start : start + 3])
                if start + 3 > len(block):
                    steps.append(nn.ReLU())
                atoms.append((f"block{b}.{start}", Chain(*steps)))
        head = Chain(self.pool4, nn.Flatten(1), self.classifier)
        return Decomposition(tuple(atoms), head)

    def stage_ends(self) -> list[str]:
        """Atoms whose outputs are upstream's ``is_feat`` features f0..f4 (block outputs)."""
        return [f"block{b}.{len(getattr(self, f'block{b}')) - 2}" for b in range(5)]


def vgg8(num_classes: int = 100) -> VGG:
    """Return the CIFAR VGG-8."""
    return VGG(VGG_CFGS["S"], num_classes)


def vgg13(num_classes: int = 100) -> VGG:
    """Return the CIFAR VGG-13."""
    return VGG(VGG_CFGS["B"], num_classes)
