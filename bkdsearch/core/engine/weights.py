"""Loading checkpoints into zoo models, safely (``weights_only=True``) and with the errors a
user can act on: what torch's unpickler objected to without its advice, and the missing,
unexpected and mis-shaped keys (the first few of each)."""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..recipe.errors import WeightsError

# Wrappers used by the CIFAR distillation repos ({"model": ...}), Lightning-style
# checkpoints ({"state_dict": ...}) and our own run checkpoints ({"student": ...}).
_WRAPPER_KEYS = ("model", "state_dict", "student")
_SHOW = 5


def load_safely(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Return what ``torch.load(path, weights_only=True)`` reads: tensors and plain
    containers, never code from the file.

    Raises:
        WeightsError: the file holds more than tensors and plain containers (code to run, or
            corruption that looks alike: refused, nothing run), or is truncated or not a
            torch file; the message names the file and what was wrong.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        finding = unpickler_finding(exc)
        if _GLOBAL.search(finding):
            raise WeightsError(f"refused to load {path}: loading it would run code from the file "
                               f"({finding}); nothing was run") from None
        # Random bytes and a pickle of protocol 4+ carrying code look alike to it.
        raise WeightsError(f"refused to load {path}: not plain tensors: corrupt, or a pickle that "
                           f"would run code ({finding}); nothing was run") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, IndexError) as exc:
        raise WeightsError(f"cannot read {path}: corrupt or unreadable ({unpickler_finding(exc)})") from None


# What torch's weights-only unpickler objects to, in the words of several torch versions:
# "Unsupported global: GLOBAL x.y was not an allowed global by default" (older releases),
# "Trying to load unsupported GLOBAL posix.system whose module posix is blocked" (2.14),
# "Unsupported operand 149" (bytes it cannot read: random data, or pickle protocol 4+).
_GLOBAL = re.compile(r"(?i)\bglobal\b")
_FINDINGS = (
    re.compile(r"(?i)(?:trying to load )?unsupported global\b[^\n]*"),
    re.compile(r"(?i)WeightsUnpickler error:\s*([^\n]+)"),
    re.compile(r"(?i)unsupported [^\n]*"),
)
# Sentences never shown: torch's advice to load the file unsafely, and its boilerplate around it.
_ADVICE = re.compile(r"(?i)weights_only\W*(?:=|set to|to)\W*False|re-?running|"
                     r"add_safe_globals|safe_globals|allowlist|in pytorch 2\.6|file an issue|"
                     r"check the documentation|trusted source|weights only load failed")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def unpickler_finding(exc: BaseException) -> str:
    """Return what a loader objected to in ``exc``, in one line and without torch's advice.

    Only the finding (``Trying to load unsupported GLOBAL posix.system whose module posix is
    blocked``, ``Unsupported operand 149``, a zip reader's complaint) is kept; any sentence
    advising ``weights_only=False`` (or ``weights_only`` set to False), re-running, or
    allowlisting globals is dropped. Returns the exception's type name when nothing is left.
    """
    text = str(exc)
    for pattern in _FINDINGS:
        found = pattern.search(text)
        if found:
            text = found.group(found.lastindex or 0)
            break
    kept = [s for line in text.splitlines() for s in _SENTENCE_END.split(line.strip())
            if s.strip() and not _ADVICE.search(s)]
    finding = " ".join(kept[:1]).strip().rstrip(".")
    return finding or type(exc).__name__


def first_line(exc: BaseException) -> str:
    """Return the first line of ``exc``'s message, or its type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
    obj = load_safely(path)
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
