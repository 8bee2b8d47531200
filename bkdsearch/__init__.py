"""bkdsearch: declarative AutoML for block-wise logit distillation (Block-KD).

The public API, imported on first use (``import bkdsearch`` stays cheap)::

    from bkdsearch import create_model, load_spec, resolve, Defaults, Trainer

Rooms (docs/design.md "Layout"): :mod:`bkdsearch.core` the torch-only runtime (recipe and engine),
:mod:`bkdsearch.spec` the declarative side, :mod:`bkdsearch.search` the orchestration,
:mod:`bkdsearch.report` and :mod:`bkdsearch.export` the outputs, :mod:`bkdsearch.cli`.
"""

from __future__ import annotations

from .lazy import lazy_attributes

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


__getattr__, __dir__ = lazy_attributes(__name__, _API, __all__)
