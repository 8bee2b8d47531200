"""Models from outside the zoo, named as a spec names them (DESIGN.md, "Atoms and partitions"):

- ``timm:<name>``: any ``timm.list_models()`` name, with ``pretrained``, ``num_classes`` and
  model kwargs (timm is the optional extra ``bkdsearch[timm]``);
- ``torchvision:<name>``: any ``torchvision.models.list_models()`` name;
- ``<python.module.path>:<factory>``: the user's own factory returning an ``nn.Module``,
  importable from the working directory, the spec's folder or the installed packages.

Weights come from a local ``checkpoint`` (read weights-only, loaded strictly, the mismatch
named) or, with ``pretrained``, from the local cache only: there is no network at run time,
and a missing file is an error that says how to fill the cache, never a download that hangs.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torchvision
from torch import nn

from ..recipe.errors import BadInput
from .weights import load_weights

__all__ = ["ModelSourceError", "create_external", "is_external", "split_name"]

TIMM_EXTRA = "pip install 'bkdsearch[timm]'"
SOURCES = ("timm", "torchvision")


class ModelSourceError(BadInput):
    """A model name that cannot be resolved or built: unknown name, missing package, a module
    or factory that cannot be imported, or pretrained weights absent from the local cache."""


def is_external(name: str) -> bool:
    """Return whether ``name`` names a model outside the zoo (it has a ``source:`` part)."""
    return ":" in name


def split_name(name: str) -> tuple[str, str]:
    """Return ``(source, model)`` of ``timm:x``, ``torchvision:x`` or ``module.path:factory``.

    Raises:
        ModelSourceError: an empty part on either side of the colon.
    """
    source, _, model = name.partition(":")
    if not source or not model or ":" in model:
        raise ModelSourceError(f"cannot read model name {name!r}: write timm:<name>, torchvision:<name> or "
                               "<python.module.path>:<factory>")
    return source, model


def _suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _timm() -> ModuleType:
    try:
        # Imported by name: timm is an optional extra, not part of the torch-only runtime.
        return importlib.import_module("timm")
    except ImportError:
        raise ModelSourceError(f"a timm: model needs timm, which is not installed: {TIMM_EXTRA}") from None


def _hub_checkpoint(url: str | None) -> Path | None:
    """The file torch.hub keeps for ``url`` when it is in the local cache."""
    if not url:
        return None
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])
    return path if path.is_file() else None


def _timm_cached_weights(timm: ModuleType, name: str) -> Path:
    """The locally cached weights of timm model ``name``: the Hugging Face cache first (timm's
    default source), then torch.hub's.

    Raises:
        ModelSourceError: no cached file (the message says how to fill the cache offline).
    """
    cfg = timm.models.get_pretrained_cfg(name)
    looked = []
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hub_id:
        try:  # timm's own dependency, imported by name like timm itself
            try_to_load_from_cache = importlib.import_module("huggingface_hub").try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo, _, revision = hub_id.partition("@")
            for filename in (getattr(cfg, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin"):
                if filename:
                    found = try_to_load_from_cache(repo, filename, revision=revision or None)
                    if isinstance(found, str):
                        return Path(found)
            looked.append(f"the Hugging Face cache ({hub_id})")
    url = getattr(cfg, "url", None) if cfg is not None else None
    if (found_url := _hub_checkpoint(url)) is not None:
        return found_url
    if url:
        looked.append(f"{Path(torch.hub.get_dir()) / 'checkpoints'}")
    raise ModelSourceError(
        f"pretrained weights for timm:{name} are not in the local cache ({'; '.join(looked) or 'no source known'}) "
        "and there is no network at run time. Fix: on a machine with network run "
        f"`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"` and copy its "
        "~/.cache/huggingface (or $HF_HOME) here, or save the model's state_dict and give it as `checkpoint:`")


def _create_timm(name: str, num_classes: int, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    timm = _timm()
    known = timm.list_models()
    base = name.split(".")[0]  # timm names may carry a pretrained tag: convnext_atto.d2_in1k
    if base not in known:
        raise ModelSourceError(f"timm has no model {name!r}{_suggest(base, known)}")
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    weights = _timm_cached_weights(timm, name)
    return timm.create_model(name, pretrained=True, num_classes=num_classes,
                             pretrained_cfg_overlay={"file": str(weights)}, **kwargs)


def _create_torchvision(name: str, num_classes: int, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    known = torchvision.models.list_models()
    if name not in known:
        raise ModelSourceError(f"torchvision has no model {name!r}{_suggest(name, known)}")
    if not pretrained:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    if _hub_checkpoint(weights.url) is None:
        raise ModelSourceError(
            f"pretrained weights for torchvision:{name} ({os.path.basename(weights.url)}) are not in "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'} and there is no network at run time. Fix: copy the file "
            f"there from a machine with network (or set $TORCH_HOME), or give the state_dict as `checkpoint:`")
    classes = len(weights.meta["categories"])
    if num_classes != classes:
        raise ModelSourceError(f"torchvision:{name} pretrained weights have {classes} classes, not {num_classes}: "
                               "set num_classes to match or give a checkpoint: with your head")
    return torchvision.models.get_model(name, weights=weights, **kwargs)


def _import_user_module(path: str, search: Sequence[Path]) -> ModuleType:
    """Import ``path`` from the installed packages, else from the first folder of ``search``
    that holds it. That folder joins ``sys.path`` for good: the module's own imports, DDP
    workers and pickled objects resolve it the same way afterwards."""
    top = path.split(".")[0]
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (path == exc.name or path.startswith(exc.name + ".")):
            raise ModelSourceError(f"importing {path!r} failed: {exc}") from None
    for folder in search:
        if (folder / f"{top}.py").is_file() or (folder / top / "__init__.py").is_file():
            if str(folder) not in sys.path:
                sys.path.insert(0, str(folder))
            importlib.invalidate_caches()
            try:
                return importlib.import_module(path)
            except ModuleNotFoundError as exc:
                raise ModelSourceError(f"importing {path!r} from {folder} failed: {exc}") from None
    where = ", ".join(str(f) for f in search)
    raise ModelSourceError(f"cannot import {path!r}: no module {top!r} in {where} or the installed packages")


def _create_user(path: str, factory_name: str, num_classes: int, kwargs: dict[str, Any],
                 search: Sequence[Path]) -> nn.Module:
    label = f"{path}:{factory_name}"
    try:
        module = _import_user_module(path, search)
    except ModelSourceError:
        raise
    except Exception as exc:  # the user's module raised while importing: name it and stop
        raise ModelSourceError(f"importing {path!r} raised {type(exc).__name__}: {exc}") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ModelSourceError(f"module {path!r} has no factory {factory_name!r}{_suggest(factory_name, public)} "
                               f"(it defines: {', '.join(public[:10])})")
    params = inspect.signature(factory).parameters
    takes_classes = "num_classes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    call_kwargs = {**({"num_classes": num_classes} if takes_classes else {}), **kwargs}
    try:
        model = factory(**call_kwargs)
    except TypeError as exc:
        raise ModelSourceError(f"{label}({', '.join(f'{k}=...' for k in call_kwargs)}) failed: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelSourceError(f"{label} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def create_external(name: str, num_classes: int = 1000, *, pretrained: bool = False,
                    checkpoint: str | Path | None = None, kwargs: dict[str, Any] | None = None,
                    search_paths: Sequence[str | Path] = ()) -> nn.Module:
    """Build the model named ``timm:<name>``, ``torchvision:<name>`` or ``module.path:factory``
    with a ``num_classes``-way classifier, then load ``checkpoint`` into it when given.

    ``kwargs`` go to the model's constructor (timm, torchvision) or the factory. A user module
    is looked for in the installed packages, then the working directory, then
    ``search_paths`` (the spec's folder). Returns the model as its source builds it (its
    state dict is the source's, so the source's checkpoints load as they are).

    Raises:
        ModelSourceError: unknown source or model, timm not installed (naming the extra),
            a module or factory that cannot be imported or called, ``pretrained`` weights
            not in the local cache (with the offline fix).
        WeightsError: ``checkpoint`` unreadable, unsafe, or not fitting the model (the
            mismatching keys and shapes named).
    """
    source, model_name = split_name(name)
    kwargs = dict(kwargs or {})
    if source == "timm":
        model = _create_timm(model_name, num_classes, pretrained, kwargs)
    elif source == "torchvision":
        model = _create_torchvision(model_name, num_classes, pretrained, kwargs)
    else:
        if pretrained:
            raise ModelSourceError(f"pretrained: true has no meaning for {name}: give its weights as checkpoint:")
        search = [Path.cwd(), *(Path(p).resolve() for p in search_paths)]
        model = _create_user(source, model_name, num_classes, kwargs, search)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model
