"""ShuffleNet V1 and V2 for CIFAR as defined by RepDistiller / mdistiller.

``ShuffleV1``: out planes [240, 480, 960], blocks [4, 8, 4], 3 groups, 1x1 stem conv.
``ShuffleV2``: net size 1 (out channels 116, 232, 464, 1024; blocks 3, 7, 3), each stage a
``DownBlock`` followed by split-and-shuffle ``BasicBlock``s. Both keep PyTorch's default
initialisation, as upstream does.

Atoms: ``stem`` (conv1 + bn1 + relu), one atom per shuffle unit named by its state-dict
prefix (``layer1.0`` ... ``layer3.3``), and for ShuffleV2 a last atom ``conv2`` (conv2 +
bn2 + relu, 1x1 to 1024 channels). Head: 4x4 average pool, flatten, linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .atoms import Chain, Decomposition

__all__ = ["ShuffleNetV1", "ShuffleNetV2"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[N, g*c, H, W] -> [N, c*g, H, W]: interleave the channels of the ``groups`` groups."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class ShuffleV1Unit(nn.Module):
    """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; stride 2 concatenates an avg-pooled
    shortcut, stride 1 adds the input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        # The first unit reads the 24-channel stem, too few channels to split into groups.
        self.first_groups = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(
            mid_planes, mid_planes, 3, stride=stride, padding=1, groups=mid_planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        out = torch.cat([out, res], 1) if self.stride == 2 else out + res
        return F.relu(out)


class ShuffleNetV1(nn.Module):
    """RepDistiller's ``ShuffleNet(cfg)`` for 32x32 inputs."""

    def __init__(
        self, out_planes: list[int], num_blocks: list[int], groups: int, num_classes: int = 100
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            # The stride-2 unit concatenates its input, so it produces the rest only.
            cat_planes = self.in_planes if i == 0 else 0
            layers.append(
                ShuffleV1Unit(self.in_planes, out_planes - cat_planes, 2 if i == 0 else 1, groups)
            )
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, 4)
        return self.linear(torch.flatten(out, 1))

    def decompose(self) -> Decomposition:
        """Atoms ``stem``, ``layer1.0`` ... ``layer3.3``; head avgpool + flatten + linear."""
        atoms = [("stem", Chain(self.conv1, self.bn1, nn.ReLU()))]
        atoms += _unit_atoms(self)
        head = Chain(nn.AvgPool2d(4), nn.Flatten(1), self.linear)
        return Decomposition(tuple(atoms), head)

    def stage_ends(self) -> list[str]:
        """Atoms whose outputs are upstream's ``is_feat`` features f0..f3."""
        return _stage_ends(self)


class ShuffleV2Unit(nn.Module):
    """Split the channels in half, transform one half, concatenate and shuffle."""

    def __init__(self, in_channels: int, split_ratio: float = 0.5) -> None:
        super().__init__()
        self.split_ratio = split_ratio
        c = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = int(x.size(1) * self.split_ratio)
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([x1, out], 1), 2)


class ShuffleV2Down(nn.Module):
    """Stride-2 unit: two branches on the whole input, concatenated and shuffled."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        # left branch
        self.conv1 = nn.Conv2d(
            in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = self.bn1(self.conv1(x))
        out1 = F.relu(self.bn2(self.conv2(out1)))
        out2 = F.relu(self.bn3(self.conv3(x)))
        out2 = self.bn4(self.conv4(out2))
        out2 = F.relu(self.bn5(self.conv5(out2)))
        return channel_shuffle(torch.cat([out1, out2], 1), 2)


class ShuffleNetV2(nn.Module):
    """RepDistiller's ``ShuffleNetV2(net_size)`` for 32x32 inputs."""

    def __init__(
        self,
        out_channels: tuple[int, int, int, int],
        num_blocks: tuple[int, int, int],
        num_classes: int = 100,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    def _make_layer(self, out_channels: int, num_blocks: int) -> nn.Sequential:
        layers: list[nn.Module] = [ShuffleV2Down(self.in_channels, out_channels)]
        layers += [ShuffleV2Unit(out_channels) for _ in range(num_blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = F.avg_pool2d(out, 4)
        return self.linear(torch.flatten(out, 1))

    def decompose(self) -> Decomposition:
        """Atoms ``stem``, ``layer1.0`` ... ``layer3.3``, ``conv2``; head avgpool + flatten +
        linear."""
        atoms = [("stem", Chain(self.conv1, self.bn1, nn.ReLU()))]
        atoms += _unit_atoms(self)
        atoms.append(("conv2", Chain(self.conv2, self.bn2, nn.ReLU())))
        head = Chain(nn.AvgPool2d(4), nn.Flatten(1), self.linear)
        return Decomposition(tuple(atoms), head)

    def stage_ends(self) -> list[str]:
        """Atoms whose outputs are upstream's ``is_feat`` features f0..f3."""
        return _stage_ends(self)


def _unit_atoms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (f"{layer}.{i}", unit)
        for layer in ("layer1", "layer2", "layer3")
        for i, unit in enumerate(getattr(model, layer))
    ]


def _stage_ends(model: nn.Module) -> list[str]:
    return ["stem"] + [
        f"{layer}.{len(getattr(model, layer)) - 1}" for layer in ("layer1", "layer2", "layer3")
    ]


def shuffle_v1(num_classes: int = 100) -> ShuffleNetV1:
    """ShuffleNet V1 (g=3) of the CIFAR distillation benchmarks."""
    return ShuffleNetV1([240, 480, 960], [4, 8, 4], 3, num_classes)


def shuffle_v2(num_classes: int = 100) -> ShuffleNetV2:
    """ShuffleNet V2 (net size 1) of the CIFAR distillation benchmarks."""
    return ShuffleNetV2((116, 232, 464, 1024), (3, 7, 3), num_classes)
