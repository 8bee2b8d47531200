"""``bkdsearch.zoo``: the model zoo's public entry points (``create_model``, ``decompose``,
``load_weights``...), kept here for users; the families live in :mod:`bkdsearch.core.recipe.zoo`,
their names in :mod:`bkdsearch.core.engine.models`, and models from outside the zoo in
:mod:`bkdsearch.core.engine.external`."""

from __future__ import annotations

from typing import Any

from torch import nn

from .core.engine.external import create_external, is_external
from .core.engine.models import ModelEntry, list_models, model_entry, register_model
from .core.engine.models import create_model as create_zoo_model
from .core.engine.weights import load_weights
from .core.recipe.zoo import *  # noqa: F403
from .core.recipe.zoo import __all__ as _families_all

__all__ = [*_families_all, "ModelEntry", "create_model", "list_models", "load_weights", "model_entry",
           "register_model"]


def create_model(name: str, num_classes: int = 100, **options: Any) -> nn.Module:  # noqa: F811
    """Build model ``name`` with a ``num_classes``-way classifier; ``forward(x)`` returns logits.

    Zoo names build the zoo's models; ``timm:<name>``, ``torchvision:<name>`` and
    ``module.path:factory`` build models from outside it, with ``options`` (``pretrained``,
    ``checkpoint``, ``kwargs``, ``search_paths``) going to
    :func:`bkdsearch.core.engine.external.create_external`.

    Raises:
        KeyError: unknown zoo name.
        ModelSourceError: an outside model that cannot be built (see ``create_external``).
    """
    if is_external(name):
        return create_external(name, num_classes, **options)
    return create_zoo_model(name, num_classes)
