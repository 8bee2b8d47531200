"""Model registry: ``create_model(name, num_classes=...)`` like timm and torchvision."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture.

    Attributes:
        name: registry name (``resnet32``, ``wrn_40_2``, ``resnet18``...).
        builder: ``builder(num_classes) -> nn.Module``.
        family: ``"cifar"`` (32x32 inputs) or ``"imagenet"`` (224x224 inputs).
        input_size: the (C, H, W) the architecture is defined for.
    """

    name: str
    builder: Callable[[int], nn.Module]
    family: str
    input_size: tuple[int, int, int]


_MODELS: dict[str, ModelEntry] = {}


def register_model(
    name: str, family: str, input_size: tuple[int, int, int]
) -> Callable[[Callable[[int], nn.Module]], Callable[[int], nn.Module]]:
    """Decorator registering ``builder(num_classes)`` under ``name``."""

    def wrap(builder: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = ModelEntry(name, builder, family, input_size)
        return builder

    return wrap


def list_models(family: str | None = None) -> list[str]:
    """Return the registered model names (optionally of one family), sorted."""
    return sorted(n for n, e in _MODELS.items() if family is None or e.family == family)


def model_entry(name: str) -> ModelEntry:
    """Return the registry entry of ``name``.

    Raises:
        KeyError: unknown name; the message lists the known ones.
    """
    try:
        return _MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def create_model(name: str, num_classes: int = 100) -> nn.Module:
    """Build model ``name`` with a ``num_classes``-way classifier; ``forward(x)`` returns logits.

    Raises:
        KeyError: unknown name.
    """
    return model_entry(name).builder(num_classes)


def init_vgg_style(model: nn.Module) -> None:
    """Initialise ``model`` in place as upstream's VGG and MobileNetV2 do: He (fan_out) normal
    convs with zero bias, identity BN, N(0, 0.01) linear with zero bias.

    Modules are visited in ``model.modules()`` order, so a seed gives the same weights as
    upstream's own loop.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear):
            m.weight.data.normal_(0, 0.01)
            m.bias.data.zero_()
