"""``bkdsearch.data``: datasets and loaders (``build_data``, ``load_arrays``...), kept here for
users; the code lives in :mod:`bkdsearch.core.recipe.data`."""

from __future__ import annotations

from .core.recipe.data import *  # noqa: F403
from .core.recipe.data import __all__ as __all__
