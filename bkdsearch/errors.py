"""Every error bkdsearch raises on purpose, in one hierarchy that the CLI maps by class:
:class:`BadInput` exits with 2, :class:`RunFailure` with 1.

The root and the runtime's own errors live in :mod:`bkdsearch.core.recipe.errors` (an exported
script carries them); this module adds those of the spec, the search and the outputs.
"""

from __future__ import annotations

from .core.recipe.errors import (
    BadInput,
    BkdsearchError,
    CheckpointError,
    DataError,
    NonFiniteLoss,
    PartitionError,
    RunFailure,
    WeightsError,
)

__all__ = [
    "BadInput",
    "BkdsearchError",
    "CheckpointError",
    "ConfigMismatch",
    "DataError",
    "ExportError",
    "NonFiniteLoss",
    "NotFound",
    "PartitionError",
    "RunFailure",
    "SpecError",
    "StorageError",
    "TrialsKeepFailing",
    "WeightsError",
]


class SpecError(BadInput):
    """Bad spec or parameter: a list of ``(path, message, line)``; the CLI exits with 2."""

    def __init__(self, errors: list[tuple[str, str, int | None]]) -> None:
        self.errors = errors
        super().__init__(self.format())

    def format(self, source: str | None = None) -> str:
        """Return one line per error: ``source:line: path: message``."""
        lines = []
        for path, message, line in self.errors:
            where = f"{source}:" if source else ""
            where += f"{line}:" if line else ""
            lines.append(f"{where} {path or '<spec>'}: {message}".strip())
        return "\n".join(lines)


class StorageError(BadInput):
    """The storage URL is malformed or the database cannot be reached."""


class ConfigMismatch(BadInput):
    """A worker's fixed configuration differs from the one its study was made with."""


class NotFound(BadInput, LookupError):
    """No such study or trial in the storage."""


class ExportError(BadInput):
    """The trial cannot be exported (a pruned or failed trial, an unknown architecture)."""


class TrialsKeepFailing(RunFailure):
    """Several trials in a row failed: something is wrong beyond one configuration."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit, a preemption, ``kill``): stops like a first Ctrl-C,
    at a step boundary with the running trials checkpointed and queued again, and the
    process exits 143 (128 + SIGTERM) where Ctrl-C exits 130. Not a :class:`BkdsearchError`:
    it travels the KeyboardInterrupt paths."""

    exit_code = 143


def interrupt_exit_code(exc: KeyboardInterrupt) -> int:
    """Return the exit status of a process stopped by ``exc``: 143 for SIGTERM, 130 for Ctrl-C."""
    return Terminated.exit_code if isinstance(exc, Terminated) else 130
