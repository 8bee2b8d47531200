"""``bkdsearch.zoo``: the model zoo's public entry points (``create_model``, ``decompose``,
``load_weights``...), kept here for users; the families live in :mod:`bkdsearch.core.recipe.zoo`
and their names in :mod:`bkdsearch.core.engine.models`."""

from __future__ import annotations

from .core.engine.models import ModelEntry, create_model, list_models, model_entry, register_model
from .core.engine.weights import load_weights
from .core.recipe.zoo import *  # noqa: F403
from .core.recipe.zoo import __all__ as _families_all

__all__ = [*_families_all, "ModelEntry", "create_model", "list_models", "load_weights", "model_entry",
           "register_model"]
