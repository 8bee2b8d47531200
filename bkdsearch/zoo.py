"""``bkdsearch.zoo``: the model zoo's public entry points (``create_model``, ``decompose``,
``load_weights``...), kept here for users; the code lives in :mod:`bkdsearch.core.zoo`, and
models from outside the zoo in :mod:`bkdsearch.core.external`."""

from __future__ import annotations

from typing import Any

from torch import nn

from .core.external import create_external, is_external
from .core.zoo import *  # noqa: F403
from .core.zoo import __all__ as __all__
from .core.zoo import create_model as create_zoo_model


def create_model(name: str, num_classes: int = 100, **options: Any) -> nn.Module:  # noqa: F811
    """Build model ``name`` with a ``num_classes``-way classifier; ``forward(x)`` returns logits.

    Zoo names build the zoo's models; ``timm:<name>``, ``torchvision:<name>`` and
    ``module.path:factory`` build models from outside it, with ``options`` (``pretrained``,
    ``checkpoint``, ``kwargs``, ``search_paths``) going to
    :func:`bkdsearch.core.external.create_external`.

    Raises:
        KeyError: unknown zoo name.
        ModelSourceError: an outside model that cannot be built (see ``create_external``).
    """
    if is_external(name):
        return create_external(name, num_classes, **options)
    return create_zoo_model(name, num_classes)
