"""CIFAR ResNets as defined by the CIFAR distillation community (RepDistiller / mdistiller).

Two families, with the upstream module names so their checkpoints load directly:

* ``resnet8`` ... ``resnet110``, ``resnet8x4``, ``resnet32x4``: ``ResNet(depth, num_filters)``
  with :class:`BasicBlock` (6n+2 layers, three stages, 1x1 conv + BN downsample).
* ``ResNet50``: RepDistiller's ``resnetv2`` (3x3 stem of 64 channels, :class:`Bottleneck`
  blocks [3, 4, 6, 3], ``shortcut.0/1``, ``linear``).

Atoms: ``stem`` (conv1 + bn1 + relu), then one atom per residual block named by its
state-dict prefix (``layer1.0`` ... ``layer3.17`` for resnet110). Head: average pool,
flatten, classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .atoms import Chain, Decomposition

__all__ = ["BasicBlock", "Bottleneck", "CifarResNet", "CifarResNetV2"]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _init_fan_out(model: nn.Module) -> None:
    # Upstream initialisation: He (fan_out) for convs, identity BN; linear layers keep
    # PyTorch's default.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity or (1x1 conv + BN) ``downsample`` shortcut."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class CifarResNet(nn.Module):
    """RepDistiller's CIFAR ``ResNet(depth, num_filters)`` with basic blocks."""

    def __init__(self, depth: int, num_filters: list[int], num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 (20, 32, 44, 56, 110...), got {depth}")
        n = (depth - 2) // 6
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.layer1 = self._make_layer(num_filters[1], n)
        self.layer2 = self._make_layer(num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(num_filters[3], n, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(num_filters[3] * BasicBlock.expansion, num_classes)
        _init_fan_out(self)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * BasicBlock.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits."""
        x = self._stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self._head(x)

    def decompose(self) -> Decomposition:
        """Atoms ``stem``, ``layer1.0`` ... ``layer3.{n-1}``; head avgpool + flatten + fc."""
        return _residual_decomposition(self, ("layer1", "layer2", "layer3"), "fc")

    def stage_ends(self) -> list[str]:
        """Atoms whose outputs are upstream's ``is_feat`` features f0..f3."""
        return _stage_ends(self, ("layer1", "layer2", "layer3"))


class Bottleneck(nn.Module):
    """ResNet-v1 bottleneck (1x1, 3x3, 1x1, expansion 4) with a ``shortcut`` Sequential."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.expansion * planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(self.expansion * planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarResNetV2(nn.Module):
    """RepDistiller's ``resnetv2`` ResNet for 32x32 inputs (3x3 stem, no max pool)."""

    def __init__(self, num_blocks: list[int], num_classes: int = 100) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512 * Bottleneck.expansion, num_classes)
        _init_fan_out(self)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(Bottleneck(self.in_planes, planes, s))
            self.in_planes = planes * Bottleneck.expansion
        return nn.Sequential(*layers)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits."""
        x = self._stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self._head(x)

    def decompose(self) -> Decomposition:
        """Atoms ``stem``, ``layer1.0`` ... ``layer4.2``; head avgpool + flatten + linear."""
        return _residual_decomposition(self, ("layer1", "layer2", "layer3", "layer4"), "linear")

    def stage_ends(self) -> list[str]:
        """Atoms whose outputs are upstream's ``is_feat`` features f0..f4."""
        return _stage_ends(self, ("layer1", "layer2", "layer3", "layer4"))


def _residual_decomposition(
    model: nn.Module, layers: tuple[str, ...], classifier: str
) -> Decomposition:
    # Atoms hold the model's own submodules as children, so .parameters(), .train() and
    # .to() on an atom reach the model's weights and BN layers.
    atoms: list[tuple[str, nn.Module]] = [
        ("stem", Chain(model.conv1, model.bn1, nn.ReLU()))
    ]
    for layer in layers:
        for i, block in enumerate(getattr(model, layer)):
            atoms.append((f"{layer}.{i}", block))
    head = Chain(model.avgpool, nn.Flatten(1), getattr(model, classifier))
    return Decomposition(tuple(atoms), head)


def _stage_ends(model: nn.Module, layers: tuple[str, ...]) -> list[str]:
    return ["stem"] + [f"{layer}.{len(getattr(model, layer)) - 1}" for layer in layers]


_PLAIN = [16, 16, 32, 64]
_X4 = [32, 64, 128, 256]


def resnet8(num_classes: int = 100) -> CifarResNet:
    """Return the CIFAR ResNet of depth 8."""
    return CifarResNet(8, _PLAIN, num_classes)


def resnet14(num_classes: int = 100) -> CifarResNet:
    """Return the CIFAR ResNet of depth 14."""
    return CifarResNet(14, _PLAIN, num_classes)


def resnet20(num_classes: int = 100) -> CifarResNet:
    """Return the CIFAR ResNet of depth 20."""
    return CifarResNet(20, _PLAIN, num_classes)


def resnet32(num_classes: int = 100) -> CifarResNet:
    """Return the CIFAR ResNet of depth 32."""
    return CifarResNet(32, _PLAIN, num_classes)


def resnet44(num_classes: int = 100) -> CifarResNet:
    """Return the CIFAR ResNet of depth 44."""
    return CifarResNet(44, _PLAIN, num_classes)


def resnet56(num_classes: int = 100) -> CifarResNet:
    """Return the CIFAR ResNet of depth 56."""
    return CifarResNet(56, _PLAIN, num_classes)


def resnet110(num_classes: int = 100) -> CifarResNet:
    """Return the CIFAR ResNet of depth 110."""
    return CifarResNet(110, _PLAIN, num_classes)


def resnet8x4(num_classes: int = 100) -> CifarResNet:
    """Return the CIFAR ResNet of depth 8 with 4x wider stages."""
    return CifarResNet(8, _X4, num_classes)


def resnet32x4(num_classes: int = 100) -> CifarResNet:
    """Return the CIFAR ResNet of depth 32 with 4x wider stages."""
    return CifarResNet(32, _X4, num_classes)


def resnet50_cifar(num_classes: int = 100) -> CifarResNetV2:
    """RepDistiller's CIFAR ``ResNet50`` (bottleneck blocks [3, 4, 6, 3])."""
    return CifarResNetV2([3, 4, 6, 3], num_classes)
