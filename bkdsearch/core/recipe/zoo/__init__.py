"""Model zoo: CIFAR distillation-benchmark models and torchvision ImageNet models.

``create_model(name, num_classes)`` builds a registered model; ``decompose(model)`` splits
it into named atoms (the places a block cut may follow) and a head.
"""

from __future__ import annotations

from torch import nn

from ..errors import WeightsError
from . import imagenet, mobilenetv2, resnet_cifar, shufflenet, vgg, wrn  # noqa: F401 (register)
from .atoms import Chain, Decomposition, Fn, atom_shapes, decompose, register_decomposer, run_atoms
from .registry import ModelEntry, create_model, list_models, model_entry, register_model
from .weights import load_weights

__all__ = [
    "Chain",
    "Decomposition",
    "Fn",
    "ModelEntry",
    "WeightsError",
    "atom_shapes",
    "create_model",
    "decompose",
    "list_models",
    "load_weights",
    "model_entry",
    "register_decomposer",
    "register_model",
    "run_atoms",
    "stage_ends",
]


def stage_ends(model: nn.Module) -> list[str]:
    """Return the atoms ending each stage of ``model`` (stem first): the feature taps of the
    distillation literature (upstream's ``is_feat`` features for the CIFAR models).

    Raises:
        TypeError: for a model without a known stage layout.
    """
    own = getattr(model, "stage_ends", None)
    if callable(own):
        return own()
    return imagenet.torchvision_stage_ends(model)
