"""bkdsearch: declarative AutoML for block-wise logit distillation (Block-KD).

The public API, imported on first use (``import bkdsearch`` stays cheap)::

    from bkdsearch import create_model, load_spec, resolve, Defaults, Trainer

Rooms (docs/design.md "Layout"): :mod:`bkdsearch.core` the torch-only runtime (recipe and engine),
:mod:`bkdsearch.spec` the declarative side, :mod:`bkdsearch.search` the orchestration,
:mod:`bkdsearch.report` and :mod:`bkdsearch.export` the outputs, :mod:`bkdsearch.cli`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "create_model": "bkdsearch.zoo",
    "list_models": "bkdsearch.core.engine.models",
    "decompose": "bkdsearch.core.recipe.zoo",
    "load_weights": "bkdsearch.core.engine.weights",
    "build_data": "bkdsearch.core.engine.data",
    "Trainer": "bkdsearch.core.engine.trainer",
    "RunResult": "bkdsearch.core.engine.trainer",
    "Spec": "bkdsearch.spec",
    "RunConfig": "bkdsearch.spec",
    "Defaults": "bkdsearch.spec",
    "load_spec": "bkdsearch.spec",
    "parse_spec": "bkdsearch.spec",
    "resolve": "bkdsearch.spec",
    "open_study": "bkdsearch.search",
    "run_workers": "bkdsearch.search",
    "export_trial": "bkdsearch.export",
    "render_script": "bkdsearch.export",
    "BkdsearchError": "bkdsearch.errors",
    "BadInput": "bkdsearch.errors",
    "RunFailure": "bkdsearch.errors",
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str) -> Any:
    """Import a public name on first use.

    Raises:
        AttributeError: ``name`` is not part of the public API.
    """
    if name not in _API:
        raise AttributeError(f"module 'bkdsearch' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value
