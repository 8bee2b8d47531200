"""Optimiser and learning-rate schedule of one run: SGD or AdamW; linear warm-up, then
multistep, cosine or constant."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

Recipe = Any
"""A run's recipe (:class:`bkdsearch.spec.Recipe` or the same attributes)."""

def milestones_of(recipe: Recipe) -> list[int]:
    """Return the multistep milestones (epochs): given, or 5/8, 6/8, 7/8 of the run
    (150/180/210 of 240, the published CIFAR schedule)."""
    if recipe.milestones is not None:
        return list(recipe.milestones)
    return [round(recipe.epochs * f) for f in (0.625, 0.75, 0.875)]


def scale_milestones(milestones: list[int], epochs: int, new_epochs: int) -> list[int]:
    """Return ``milestones`` of an ``epochs``-long run moved to the same fractions of a
    ``new_epochs``-long one (150/180/210 of 240 -> 62/75/88 of 100), rounded, each at
    least 1."""
    return [max(1, round(m * new_epochs / epochs)) for m in milestones]


def lr_at(recipe: Recipe, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Return the learning rate at 0-based ``epoch`` and ``step`` within it: linear warmup over
    ``warmup_epochs``, then multistep (x lr_decay at each milestone), cosine or constant."""
    progress = epoch + step / steps_per_epoch
    if recipe.warmup_epochs and progress < recipe.warmup_epochs:
        return recipe.lr * (progress + 1 / steps_per_epoch) / recipe.warmup_epochs
    if recipe.schedule == "multistep":
        passed = sum(1 for m in milestones_of(recipe) if epoch >= m)
        return recipe.lr * recipe.lr_decay**passed
    if recipe.schedule == "cosine":
        span = max(recipe.epochs - recipe.warmup_epochs, 1e-9)
        t = min(max(progress - recipe.warmup_epochs, 0.0) / span, 1.0)
        return recipe.lr * 0.5 * (1 + math.cos(math.pi * t))
    return recipe.lr


def make_optimizer(recipe: Recipe, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """Return SGD (momentum, optional Nesterov) or AdamW over ``params``."""
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                               nesterov=recipe.nesterov and recipe.momentum > 0, weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
