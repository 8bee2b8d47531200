"""The error hierarchy: every error bkdsearch raises on purpose is a :class:`BkdsearchError`,
either :class:`BadInput` (the user can fix it: the CLI exits with 2) or :class:`RunFailure`
(a run went wrong: exit 1).

The root lives in ``core`` because the runtime raises these too and an exported script
carries the runtime; the declarative and orchestration errors build on it in
:mod:`bkdsearch.errors`.
"""

from __future__ import annotations


class BkdsearchError(Exception):
    """Base of every error raised on purpose; the message says what and how to fix."""


class BadInput(BkdsearchError):
    """A spec, argument, file or dataset the user gave is wrong (exit 2)."""


class RunFailure(BkdsearchError):
    """A run failed for a reason that is not the input's fault (exit 1)."""


class DataError(BadInput):
    """Missing, misplaced or corrupt data; the message says what was looked for, where, and
    how to fix it."""


class WeightsError(BadInput):
    """A checkpoint that cannot be read or does not fit the model; the message says why."""


class CheckpointError(WeightsError):
    """A run checkpoint (``last.pt``) that cannot be read: corrupt, truncated, not a run
    checkpoint, or a pickle that would run code. The message names the file and the fix."""


class PartitionError(BadInput, ValueError):
    """A partition that cannot be built; the message names the cut and the shapes."""


class NonFiniteLoss(RunFailure):
    """The training loss became NaN or infinite."""


class DiskFull(RunFailure):
    """A run file (checkpoint, weights, artifact) could not be written: no space left on its
    disk, or the OS error the message names. Whoever raises it has removed the partial file."""

    @classmethod
    def writing(cls, path: object, exc: BaseException, nbytes: int | None = None) -> DiskFull:
        """The error of writing ``path`` (about ``nbytes`` bytes) that failed with ``exc``: an
        ``OSError`` (ENOSPC: no space left; any other: named), or torch's writer's
        ``RuntimeError`` (which hides the errno: taken as no space left)."""
        import errno
        import os

        folder = os.path.dirname(os.path.abspath(os.fspath(path)))  # type: ignore[call-overload]
        size = "" if nbytes is None else f" (needed ~{max(nbytes / 1e6, 0.1):.1f} MB)"
        code = getattr(exc, "errno", None)
        if not isinstance(exc, OSError) or code == errno.ENOSPC:
            return cls(f"no space left on {folder}{size}; free some space (or point the run elsewhere) "
                       "and run again")
        name = errno.errorcode.get(code, "") if isinstance(code, int) else ""
        return cls(f"cannot write {os.fspath(path)}: {exc.strerror or exc}"  # type: ignore[call-overload]
                   f"{f' [{name}]' if name else ''}{size}")
