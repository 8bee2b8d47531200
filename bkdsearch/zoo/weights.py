"""Loading checkpoints into zoo models, safely (``weights_only=True``) and with clear errors."""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

# Wrappers used by the CIFAR distillation repos ({"model": ...}), Lightning-style
# checkpoints ({"state_dict": ...}) and our own run checkpoints ({"student": ...}).
_WRAPPER_KEYS = ("model", "state_dict", "student")
_SHOW = 5


class WeightsError(Exception):
    """A checkpoint that cannot be read or does not fit the model; the message says why."""


def unpickling_finding(exc: pickle.UnpicklingError) -> tuple[bool, str]:
    """Return (whether the file names code to run, what torch's weights-only unpickler
    objected to: e.g. ``Unsupported global: GLOBAL os.system``, ``Unsupported operand 149``).

    torch's own message goes on to advise ``weights_only=False``, which would run that code:
    only the finding is worth showing.
    """
    found = re.search(r"Unsupported (global: GLOBAL \S+|[^.\n]*)", str(exc))
    text = str(exc).strip()
    finding = found.group(0) if found else (text.splitlines()[0] if text else "unpickling failed")
    return finding.startswith("Unsupported global"), finding


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` without executing any code from it.

    Accepts a plain state dict or one wrapped as ``{"model": ...}``, ``{"state_dict": ...}``
    or ``{"student": ...}``. A leading ``module.`` (DataParallel) is stripped.

    Raises:
        WeightsError: missing file, corrupt file, a pickle that needs code to load, or no
            state dict inside.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        runs_code, finding = unpickling_finding(exc)
        why = ("loading it would run code from the file; nothing was run" if runs_code
               else "corrupt, or not plain tensors")
        raise WeightsError(
            f"refused to load {path}: it is not a plain tensor checkpoint ({why}: {finding}). "
            "Re-save it as a state dict."
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, IndexError) as exc:
        raise WeightsError(f"cannot read checkpoint {path}: {exc}".splitlines()[0]) from None
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            f"{path} holds no state dict (expected tensors by name, or a dict with one of "
            f"{', '.join(repr(k) for k in _WRAPPER_KEYS)})"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def check_fits(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`WeightsError` listing missing keys, unexpected keys and shape mismatches
    (the first few of each) when ``state`` does not fit ``model`` exactly."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
            problems.append(f"{label} ({len(items)}): {', '.join(items[:_SHOW])}{more}")
    if problems:
        raise WeightsError(
            f"checkpoint does not fit {type(model).__name__}: " + "; ".join(problems)
        )


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load the checkpoint at ``path`` into ``model`` strictly and return the model.

    Raises:
        WeightsError: unreadable or unsafe file, or a state dict that does not fit (listing
            missing and unexpected keys and shape mismatches).
    """
    state = read_state_dict(path)
    check_fits(model, state)
    model.load_state_dict(state, strict=True)
    return model
