"""Steps a worker survives: when one fails, one log line says which trial, what was tried and
what went wrong, and the worker carries on (nothing is swallowed without a word)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from ..urls import redact


def stderr(message: str) -> None:
    """Print ``message`` to stderr at once (the default destination of failure lines)."""
    print(message, file=sys.stderr, flush=True)


def failure_line(what: str, exc: BaseException, trial: int | None = None) -> str:
    """Return the line logged for a step that failed: ``trial N: WHAT failed (Type: first
    line of the message); carrying on`` (URL passwords redacted)."""
    text = str(exc).strip().splitlines()
    said = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    who = f"trial {trial}: " if trial is not None else ""
    return redact(f"{who}{what} failed ({said}); carrying on")


@contextlib.contextmanager
def carry_on(what: str, trial: int | None = None, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Run the ``with`` block; an ``Exception`` raised in it is logged (:func:`failure_line`,
    to ``log``, default stderr) and not raised. Only for steps whose failure must not end the
    worker or its trial (a storage hiccup while writing a reason, a progress line)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - logged; the callers' steps are optional by design
        (log or stderr)(failure_line(what, exc, trial))
