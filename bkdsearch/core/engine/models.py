"""Model registry: ``create_model(name, num_classes=...)`` like timm and torchvision, over the
recipe's model families (a family defines its builders; the names live here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..recipe.zoo import imagenet, mobilenetv2, resnet_cifar, shufflenet, vgg, wrn


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture.

    Attributes:
        name: registry name (``resnet32``, ``wrn_40_2``, ``resnet18``...).
        builder: ``builder(num_classes) -> nn.Module``, a top-level function of its family's
            module (an exported script calls it by name).
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
    """Return a decorator registering ``builder(num_classes)`` under ``name``.

    Raises:
        ValueError: (when applied) ``name`` is registered already.
    """

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


_CIFAR_MODELS = {
    "resnet8": resnet_cifar.resnet8, "resnet14": resnet_cifar.resnet14, "resnet20": resnet_cifar.resnet20,
    "resnet32": resnet_cifar.resnet32, "resnet44": resnet_cifar.resnet44, "resnet56": resnet_cifar.resnet56,
    "resnet110": resnet_cifar.resnet110, "resnet8x4": resnet_cifar.resnet8x4,
    "resnet32x4": resnet_cifar.resnet32x4, "ResNet50": resnet_cifar.resnet50_cifar,
    "wrn_16_1": wrn.wrn_16_1, "wrn_16_2": wrn.wrn_16_2, "wrn_40_1": wrn.wrn_40_1, "wrn_40_2": wrn.wrn_40_2,
    "vgg8": vgg.vgg8, "vgg13": vgg.vgg13, "MobileNetV2": mobilenetv2.mobile_half,
    "ShuffleV1": shufflenet.shuffle_v1, "ShuffleV2": shufflenet.shuffle_v2,
}
_IMAGENET_MODELS = {"resnet18": imagenet.resnet18, "resnet34": imagenet.resnet34, "resnet50": imagenet.resnet50,
                    "mobilenet_v2": imagenet.mobilenet_v2}
for _name, _builder in _CIFAR_MODELS.items():
    register_model(_name, "cifar", (3, 32, 32))(_builder)
for _name, _builder in _IMAGENET_MODELS.items():
    register_model(_name, "imagenet", (3, 224, 224))(_builder)
