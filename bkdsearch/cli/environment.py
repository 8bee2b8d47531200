"""The ``BKDSEARCH_*`` environment variables, checked when a command starts: a bad value is
bad input (exit 2) before any trial, not an error of the first trial (or of the first
multi-process run) that reads it."""

from __future__ import annotations

from ..errors import BadInput


def check_environment() -> None:
    """Read every ``BKDSEARCH_*`` setting a run uses, as the run will.

    Raises:
        BadInput: the first variable whose value its reader refuses (the message names it
            and the values it takes).
    """
    from ..core.engine.processes import collective_timeout
    from ..search.heartbeat import heartbeat_settings
    from ..search.objective import keep_checkpoints
    from ..search.patient import patience_setting

    for read in (heartbeat_settings, patience_setting, keep_checkpoints, collective_timeout):
        try:
            read()
        except BadInput:
            raise
        except ValueError as exc:  # the readers of the core raise plain ValueErrors
            raise BadInput(str(exc)) from None
