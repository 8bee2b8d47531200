"""``bkdsearch.data``: datasets and loaders (``build_data``, ``load_arrays``...), kept here for
users; the sources and loaders live in :mod:`bkdsearch.core.recipe.data`, the names, cache
and ``build_data`` in :mod:`bkdsearch.core.engine.data`."""

from __future__ import annotations

from .core.engine.data import (
    DATASETS,
    DatasetInfo,
    array_source,
    build_data,
    clear_cache,
    dataset_entry,
    dataset_info,
    input_size_of,
    load_arrays,
    register_bundle,
    register_source,
)
from .core.recipe.data import *  # noqa: F403
from .core.recipe.data import __all__ as _recipe_all

__all__ = [*_recipe_all, "DATASETS", "DatasetInfo", "array_source", "build_data", "clear_cache", "dataset_entry",
           "dataset_info", "input_size_of", "load_arrays", "register_bundle", "register_source"]
