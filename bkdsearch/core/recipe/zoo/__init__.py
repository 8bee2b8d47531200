"""Model zoo: CIFAR distillation-benchmark models and torchvision ImageNet models.

Each family module defines its builders (``resnet32(num_classes)``...); the names they are
known by live in the engine's registry (``bkdsearch.core.engine.models``).
``decompose(model)`` splits a model into named atoms (the places a block cut may follow) and
a head.
"""

from __future__ import annotations

from torch import nn

from ..errors import WeightsError
from . import imagenet
from .atoms import Chain, Decomposition, Fn, atom_shapes, decompose, register_decomposer, run_atoms

__all__ = [
    "Chain",
    "Decomposition",
    "Fn",
    "WeightsError",
    "atom_shapes",
    "decompose",
    "register_decomposer",
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
