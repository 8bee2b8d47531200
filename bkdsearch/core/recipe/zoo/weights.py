"""Loading a weights file into a model: tensors only (``weights_only=True``), strictly."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError

# Wrappers used by the CIFAR distillation repos ({"model": ...}), Lightning-style
# checkpoints ({"state_dict": ...}) and run checkpoints ({"student": ...}).
WRAPPER_KEYS = ("model", "state_dict", "student")


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load the state dict in the file at ``path`` (plain, or under one of
    :data:`WRAPPER_KEYS`; a DataParallel ``module.`` prefix stripped) into ``model`` strictly
    and return the model.

    Raises:
        WeightsError: the file cannot be read as tensors, or its state dict does not fit.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, IndexError, pickle.UnpicklingError,
            zipfile.BadZipFile) as exc:  # what torch.load raises for a missing, bad or unsafe file
        raise WeightsError(f"cannot read {path}: {exc}") from None
    for key in WRAPPER_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path} holds no state dict")
    try:
        model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not fit {type(model).__name__}: {exc}") from None
    return model
