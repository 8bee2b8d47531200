"""torchvision's ImageNet models, built without weights (``weights=None``).

Their state dicts are torchvision's, so torchvision checkpoints load directly.

Atoms of a torchvision ``ResNet``: ``stem`` (conv1, bn1, relu, maxpool), then one atom per
residual block (``layer1.0`` ... ``layer4.{n-1}``). Head: avgpool, flatten, fc.

Atoms of a torchvision ``MobileNetV2``: ``features.0`` (the stem conv) ... ``features.18``
(the 1x1 conv to 1280 channels, kept as an atom like the CIFAR model's ``conv2``). Head:
adaptive average pool, flatten, classifier (dropout + linear).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import MobileNetV2, ResNet

from .atoms import Chain, Decomposition, Fn, register_decomposer

__all__ = ["torchvision_stage_ends"]

def _decompose_resnet(model: nn.Module) -> Decomposition:
    assert isinstance(model, ResNet)
    atoms: list[tuple[str, nn.Module]] = [
        ("stem", Chain(model.conv1, model.bn1, model.relu, model.maxpool))
    ]
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        for i, block in enumerate(getattr(model, layer)):
            atoms.append((f"{layer}.{i}", block))
    return Decomposition(tuple(atoms), Chain(model.avgpool, nn.Flatten(1), model.fc))


def _global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # torchvision's MobileNetV2.forward pools functionally (it has no avgpool module).
    return F.adaptive_avg_pool2d(x, (1, 1))


def _decompose_mobilenet_v2(model: nn.Module) -> Decomposition:
    assert isinstance(model, MobileNetV2)
    atoms = tuple((f"features.{i}", m) for i, m in enumerate(model.features))
    head = Chain(Fn(_global_avg_pool), nn.Flatten(1), model.classifier)
    return Decomposition(atoms, head)


register_decomposer(ResNet, _decompose_resnet)
register_decomposer(MobileNetV2, _decompose_mobilenet_v2)


def torchvision_stage_ends(model: nn.Module) -> list[str]:
    """Atoms ending each resolution stage of a torchvision ResNet or MobileNetV2 (stem
    first), the usual feature taps for distillation.

    Raises:
        TypeError: for any other model.
    """
    if isinstance(model, ResNet):
        return ["stem"] + [
            f"{layer}.{len(getattr(model, layer)) - 1}"
            for layer in ("layer1", "layer2", "layer3", "layer4")
        ]
    if isinstance(model, MobileNetV2):
        # The same taps as the CIFAR MobileNetV2: the stem, then the last block at strides
        # 4, 8, 16 and 32 (24, 32, 96 and 320 channels).
        return [f"features.{i}" for i in (0, 3, 6, 13, 17)]
    raise TypeError(f"no stage list for {type(model).__name__}")


def resnet18(num_classes: int = 1000) -> nn.Module:
    """Return torchvision's ``resnet18`` without weights."""
    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


def resnet34(num_classes: int = 1000) -> nn.Module:
    """Return torchvision's ``resnet34`` without weights."""
    return torchvision.models.resnet34(weights=None, num_classes=num_classes)


def resnet50(num_classes: int = 1000) -> nn.Module:
    """Return torchvision's ``resnet50`` without weights."""
    return torchvision.models.resnet50(weights=None, num_classes=num_classes)


def mobilenet_v2(num_classes: int = 1000) -> nn.Module:
    """Return torchvision's ``mobilenet_v2`` without weights."""
    return torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)
