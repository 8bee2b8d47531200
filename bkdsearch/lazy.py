"""Packages that import their public names on first use (PEP 562), so that a light command
(``status``, ``validate``, ``schema``) never pays for torch or Optuna it does not touch."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Collection, Mapping
from typing import Any


def lazy_attributes(package: str, where: Mapping[str, str], public: Collection[str]
                    ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return the ``(__getattr__, __dir__)`` pair of ``package``: a name of ``where`` is
    imported from its module (``where[name]``) on first use, then kept in the package.

    The returned ``__getattr__`` raises AttributeError for any name ``where`` does not hold.
    """

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *public})

    return __getattr__, __dir__
