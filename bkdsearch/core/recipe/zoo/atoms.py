"""Atoms: the ordered, named smallest units a block cut may follow.

Every zoo model decomposes into ``atoms`` (run in order) followed by a ``head``
(pooling + classifier). Running the atoms and then the head reproduces
``model(x)`` exactly. Atom modules are thin views over the model's own
submodules: they share parameters and buffers with the model and never appear
in its ``state_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Decomposition:
    """A model split into named atoms and a head.

    Attributes:
        atoms: ``(name, module)`` pairs in execution order.
        head: maps the last atom's output to logits.
    """

    atoms: tuple[tuple[str, nn.Module], ...]
    head: nn.Module

    @property
    def names(self) -> list[str]:
        """Return the atom names in execution order."""
        return [name for name, _ in self.atoms]


class Chain(nn.Module):
    """Runs modules in sequence without owning a state dict entry of its own: used to assemble
    atoms out of a model's existing submodules.

    A plain tensor function goes in wrapped, as ``Fn(f)``.
    """

    def __init__(self, *steps: nn.Module) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return x


class Fn(nn.Module):
    """Wraps a parameter-free tensor function (relu, pooling, flatten) as a module."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


_ADAPTERS: list[tuple[type, Callable[[nn.Module], Decomposition]]] = []


def register_decomposer(cls: type, fn: Callable[[nn.Module], Decomposition]) -> None:
    """Teach :func:`decompose` how to split models of class ``cls`` that we do not own
    (torchvision's)."""
    _ADAPTERS.append((cls, fn))


def decompose(model: nn.Module) -> Decomposition:
    """Return the atoms and head of ``model``.

    Raises:
        TypeError: for a model the zoo cannot decompose.
    """
    own = getattr(model, "decompose", None)
    if callable(own):
        return own()
    for cls, fn in _ADAPTERS:
        if isinstance(model, cls):
            return fn(model)
    raise TypeError(f"cannot split {type(model).__name__} into atoms: not a model of the zoo")


def run_atoms(parts: Sequence[tuple[str, nn.Module]], x: torch.Tensor) -> torch.Tensor:
    """Run ``parts`` (a slice of a decomposition's atoms) in order and return the output."""
    for _, module in parts:
        x = module(x)
    return x


@torch.no_grad()
def atom_shapes(model: nn.Module, input_size: Sequence[int]) -> list[tuple[str, tuple[int, ...]]]:
    """Return ``(atom name, output shape without batch)`` for every atom, for an input of
    shape ``input_size`` = (C, H, W). Runs one eval-mode forward on zeros; the model's
    training flag is restored and BN statistics are untouched."""
    dec = decompose(model)
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        x = torch.zeros(1, *input_size, device=device)
        shapes = []
        for name, module in dec.atoms:
            x = module(x)
            shapes.append((name, tuple(x.shape[1:])))
        return shapes
    finally:
        model.train(was_training)


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
