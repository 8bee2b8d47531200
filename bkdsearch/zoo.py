"""``bkdsearch.zoo``: the model zoo's public entry points (``create_model``, ``decompose``,
``load_weights``...), kept here for users; the code lives in :mod:`bkdsearch.core.recipe.zoo`."""

from __future__ import annotations

from .core.recipe.zoo import *  # noqa: F403
from .core.recipe.zoo import __all__ as __all__
