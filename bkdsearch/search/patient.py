"""Patience with a database server that goes away for a while (a restart, a failover, a
network cut): every storage call of a worker retries with exponential backoff (with jitter,
capped at :data:`BACKOFF_CAP_S`) while the server is unreachable, for up to
``BKDSEARCH_STORAGE_PATIENCE_S`` seconds (default :data:`PATIENCE_S`) counted from the start
of the outage. One line is logged when an outage starts (what is retried, for how long at
most) and one when the server is back (how long it was out); a call still failing past the
patience raises :class:`StorageUnreachable` (the worker exits 1, its trial is retried by the
stale-trial check of another worker once the server is back: nothing is lost).

What counts as unreachable (:func:`failure_kind`): SQLAlchemy's ``OperationalError``,
``InterfaceError`` and ``DisconnectionError`` (and Optuna's ``StorageInternalError`` wrapping
them) raised while connecting, or on a connection that SQLAlchemy found dead, or that carries
a connection error code; any other ``OperationalError`` only when the server does not answer
a ``SELECT 1`` either. Deadlocks and lock timeouts are retried a few times without a log line
(the transaction was rolled back); integrity, data and programming errors are never retried.

Writes that are not idempotent check, before they are tried again, whether the failed try did
land (a commit the server made whose acknowledgement was lost): ``create_new_trial`` and
``set_trial_state_values`` write a one-off token (system attr :data:`WRITE_TOKEN`) in the same
transaction, so a retry finds the trial it created (no second trial) or the state change it
made (no second retry of a stale trial, no ``UpdateFinishedTrialError`` for a tell that did
land). The other writes are upserts (attrs, intermediate values, heartbeats, params): trying
one again is harmless.

Heartbeats and grace: no heartbeat can be recorded during an outage, so after one longer
than the grace period every running trial looks stale. A worker that saw the outage reports
no stale trials until the server has been back for one grace period
(:attr:`PatientStorage.outage_ended_at`): by then the heartbeat threads of live workers have
beaten again, and only the trials of workers that really died are failed and retried. A
worker that never saw the outage (started after it, or cut off alone from a server the others
still reached) cannot tell a cut-off worker from a dead one: its trials are failed after the
grace period, so give ``BKDSEARCH_GRACE_S`` more than the cuts the study should ride out.
"""

from __future__ import annotations

import copy
import math
import os
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from ..errors import RunFailure, StorageError
from ..urls import redact
from .optuna_seam import WrappedStorage, create_trial_with_token, set_state_with_token, trial_with_token

PATIENCE_S = 300
"""Default seconds a storage call waits for an unreachable server (``BKDSEARCH_STORAGE_PATIENCE_S``)."""

PATIENCE_RANGE = (1, 86400)
"""Bounds of ``BKDSEARCH_STORAGE_PATIENCE_S`` in seconds."""

BACKOFF_FIRST_S = 0.5
"""The first pause between tries during an outage; it doubles at each failure..."""

BACKOFF_CAP_S = 4.0
"""...up to this many seconds (each pause is jittered between half of it and all of it)."""

QUIET_RETRY_S = 0.2
"""A call that fails once is tried again after this pause before an outage is declared (a
single dropped connection is no outage)."""

MAX_CONFLICT_RETRIES = 5
"""Deadlocks and lock wait timeouts are tried again this many times (quietly)."""

WRITE_TOKEN = "bkdsearch:write"
"""System attr holding the token of the latest trial creation or state change, written in the
same transaction, so a retry can tell whether the failed try landed."""

_NOT_LANDED = object()

T = TypeVar("T")


class StorageUnreachable(RunFailure):
    """The storage server stayed unreachable for longer than the patience; the CLI exits 1."""


def patience_setting() -> float:
    """Return the patience in seconds from ``BKDSEARCH_STORAGE_PATIENCE_S`` (default
    :data:`PATIENCE_S`).

    Raises:
        StorageError: not a number of seconds, or outside :data:`PATIENCE_RANGE`.
    """
    name, raw = "BKDSEARCH_STORAGE_PATIENCE_S", os.environ.get("BKDSEARCH_STORAGE_PATIENCE_S", "").strip()
    if not raw:
        return float(PATIENCE_S)
    low, high = PATIENCE_RANGE
    try:
        value = float(raw)
    except ValueError:
        raise StorageError(f"{name}={raw!r}: expected a number of seconds ({low} to {high})") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise StorageError(f"{name}={raw!r}: must be between {low} and {high} seconds")
    return value


# ------------------------------------------------------------------ what failed

_PG_OUTAGE_STATES = {"57P01", "57P02", "57P03", "53300", "53400"}  # + class 08 (connection exception)
_PG_CONFLICT_STATES = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock not available
_MYSQL_OUTAGE_CODES = {1040, 1042, 1043, 1045, 1053, 1129, 1130, 1152, 1158, 1159, 1160, 1161, 1184, 1927,
                       2002, 2003, 2006, 2013, 2014, 2045, 2055, 3118, 4031, 4151}
_MYSQL_CONFLICT_CODES = {1205, 1213}  # lock wait timeout, deadlock


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes / contexts, outermost first."""
    out: list[BaseException] = []
    seen: set[int] = set()
    todo: BaseException | None = exc
    while todo is not None and id(todo) not in seen:
        out.append(todo)
        seen.add(id(todo))
        todo = todo.__cause__ or todo.__context__
    return out


def _driver_code(error: Any) -> tuple[str | None, int | None]:
    """(PostgreSQL SQLSTATE, MySQL error number) of a driver exception, where it has one."""
    orig = getattr(error, "orig", None)
    state = getattr(orig, "sqlstate", None)
    args = getattr(orig, "args", ())
    number = args[0] if args and isinstance(args[0], int) else None
    return (state if isinstance(state, str) else None), number


def _cause(exc: BaseException) -> BaseException | None:
    """The error that ``exc`` was raised from or while handling."""
    return exc.__cause__ or exc.__context__


def failure_kind(exc: BaseException, reachable: Callable[[], bool] | None = None) -> str | None:
    """``"outage"`` (the server is unreachable: wait for it), ``"conflict"`` (a deadlock or
    lock timeout: try again soon) or None (an error of the call itself: never retry).

    Looks through Optuna's ``StorageInternalError`` (and SQLAlchemy's own non-driver errors,
    such as a failed rollback) to the driver error under it; any other exception is the
    call's own. ``reachable`` answers whether the server runs a trivial query; it is asked
    only about an ``OperationalError`` that none of the other signs explain.
    """
    from sqlalchemy import exc as sa

    error: BaseException | None = exc
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, sa.DisconnectionError | sa.TimeoutError):  # dead pool connection, pool timeout
            return "outage"
        if isinstance(error, StorageInternalError) or (
                isinstance(error, sa.SQLAlchemyError) and not isinstance(error, sa.DBAPIError)):
            error = _cause(error)
            continue
        if not isinstance(error, sa.DBAPIError):
            return None
        if isinstance(error, sa.IntegrityError | sa.DataError | sa.ProgrammingError | sa.NotSupportedError):
            return None
        state, number = _driver_code(error)
        if state in _PG_CONFLICT_STATES or number in _MYSQL_CONFLICT_CODES:
            return "conflict"
        if not isinstance(error, sa.OperationalError | sa.InterfaceError):
            return None
        if (error.connection_invalidated or error.statement is None  # connecting failed
                or (state is not None and (state.startswith("08") or state in _PG_OUTAGE_STATES))
                or number in _MYSQL_OUTAGE_CODES or isinstance(error, sa.InterfaceError)):
            return "outage"
        return "outage" if reachable is not None and not reachable() else None
    return None


def _first_line(exc: BaseException) -> str:
    """The first line of the outermost SQLAlchemy error in ``exc`` or under it (what the driver
    said, not Optuna's wrapper)."""
    from sqlalchemy import exc as sa

    found = next((e for e in _chain(exc) if isinstance(e, sa.SQLAlchemyError)), exc)
    text = str(found).strip()
    return f"{type(found).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


# ------------------------------------------------------------------ the retry loop

class Patience:
    """Retries of storage calls while the server is unreachable, shared by the threads of
    one process: one log line when an outage starts, one when it ends, the patience counted
    from the start of the outage (a call that starts when the patience is already spent
    fails after one try).

    Args:
        patience_s: how long an outage may last before calls give up.
        where: the storage as shown in log lines (no password).
        log: where the two lines of an outage go (default: stderr).
        reachable: whether the server answers a trivial query (see :func:`failure_kind`).
        clock, sleep: for tests.
    """

    def __init__(self, patience_s: float, *, where: str = "storage", log: Callable[[str], None] | None = None,
                 reachable: Callable[[], bool] | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.patience_s, self.where = float(patience_s), where
        self.log = log or _stderr
        self.reachable = reachable
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._local = threading.local()
        self._since: float | None = None
        self._gave_up = False
        self.outage_ended_at: float | None = None
        """``time.monotonic()`` when the last outage ended (the first call that succeeded
        after it), None before any outage."""
        self.outages = 0
        """How many outages this process has seen."""

    @property
    def in_outage(self) -> bool:
        """True while an outage is on (a call failed and none has succeeded since)."""
        return self._since is not None

    def quiet(self, window_s: float) -> bool:
        """True during an outage and for ``window_s`` seconds after it ended."""
        if self._since is not None:
            return True
        ended = self.outage_ended_at
        return ended is not None and self._clock() - ended < window_s

    def call(self, what: str, attempt: Callable[[], T], landed: Callable[[], Any] | None = None) -> T:
        """Return ``attempt()``, tried again while the server is unreachable.

        ``landed``, asked before each retry, returns what ``attempt`` would have returned when
        the failed try did reach the database after all (else :data:`_NOT_LANDED`). Calls
        nested in a call of the same thread are not retried themselves (the outer one is).

        Raises:
            StorageUnreachable: the outage outlasted the patience (from the last error).
            Exception: any error that is not an outage, as it came.
        """
        if getattr(self._local, "depth", 0):
            return attempt()
        self._local.depth = 1
        try:
            return self._loop(what, attempt, landed)
        finally:
            self._local.depth = 0

    def _loop(self, what: str, attempt: Callable[[], T], landed: Callable[[], Any] | None) -> T:
        failures = conflicts = 0
        first: float | None = None
        while True:
            try:
                if (failures or conflicts) and landed is not None:
                    found = landed()
                    if found is not _NOT_LANDED:
                        self._back()
                        return found
                result = attempt()
            except Exception as exc:  # noqa: BLE001 - sorted by failure_kind; the rest re-raised
                kind = failure_kind(exc, self.reachable)
                if kind is None:
                    raise
                now = self._clock()
                if kind == "conflict":
                    conflicts += 1
                    if conflicts > MAX_CONFLICT_RETRIES:
                        raise
                    self._sleep(random.uniform(0.05, 0.5) * conflicts)
                    continue
                failures += 1
                first = now if first is None else first
                since = self._failed(what, exc, first, quietly=failures == 1)
                if since is None:
                    self._sleep(QUIET_RETRY_S)
                    continue
                left = since + self.patience_s - now
                if left <= 0:
                    raise self._give_up(what, exc, now - since) from exc
                pause = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** max(0, failures - 2))
                self._sleep(min(left, random.uniform(pause / 2, pause)))
            else:
                self._back()
                return result

    def _failed(self, what: str, exc: BaseException, first: float, *, quietly: bool) -> float | None:
        """Note a failed try; return the start of the outage it belongs to, or None for the
        quiet first retry of a call when no outage is on."""
        with self._lock:
            if self._since is None:
                if quietly:
                    return None
                self._since, self._gave_up = first, False
                self.outages += 1
                self.log(f"storage {self.where} unreachable ({_first_line(exc)}) at {_time_of_day()}; retrying "
                         f"{what} and the other storage calls with backoff for up to {self.patience_s:g} s")
            return self._since

    def _give_up(self, what: str, exc: BaseException, out_s: float) -> StorageUnreachable:
        with self._lock:
            if not self._gave_up:
                self._gave_up = True
                self.log(f"storage {self.where} still unreachable after {out_s:.0f} s at {_time_of_day()}: "
                         f"giving up (BKDSEARCH_STORAGE_PATIENCE_S={self.patience_s:g})")
        return StorageUnreachable(
            f"storage {self.where} unreachable for {out_s:.0f} s (more than BKDSEARCH_STORAGE_PATIENCE_S="
            f"{self.patience_s:g}) during {what}: {_first_line(exc)}; a running trial is retried by the "
            "next worker once the server is back")

    def _back(self) -> None:
        if self._since is None:
            return
        with self._lock:
            if self._since is None:
                return
            now = self._clock()
            out_s, self._since = now - self._since, None
            self.outage_ended_at = now
            self.log(f"storage {self.where} reachable again after {out_s:.1f} s out at {_time_of_day()}")


def _time_of_day() -> str:
    return datetime.now().strftime("%H:%M:%S")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ the storage

class PatientStorage(WrappedStorage):
    """An RDB storage whose calls wait for an unreachable server (see the module): it wraps an
    :class:`optuna.storages.RDBStorage` method by method (:class:`~.optuna_seam.WrappedStorage`)
    and is a ``BaseHeartbeat``, so the heartbeat interval, grace period and stale-trial callback
    work as there. Put it under Optuna's cache with :func:`~.optuna_seam.with_cache`.

    Args:
        url, **kwargs: as for ``RDBStorage`` (opening it is not retried: a server that is not
            there at the start is an error of the command).
        patience_s: see :func:`patience_setting` (default: from the environment).
        where: the storage as shown in log lines (default: the URL without its password).
        log: where the lines of an outage go (default: stderr).
    """

    def __init__(self, url: str, *, patience_s: float | None = None, where: str | None = None,
                 log: Callable[[str], None] | None = None, **kwargs: Any) -> None:
        self.patience = Patience(patience_setting() if patience_s is None else patience_s,
                                 where=where or redact(url), log=log, reachable=self._reachable)
        super().__init__(RDBStorage(url, **kwargs))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        patience = state.pop("patience")
        state["_patience_args"] = (patience.patience_s, patience.where)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        patience_s, where = state.pop("_patience_args")
        self.__dict__.update(state)
        self.patience = Patience(patience_s, where=where, reachable=self._reachable)

    @property
    def outage_ended_at(self) -> float | None:
        """``time.monotonic()`` when the last outage this process saw ended, or None."""
        return self.patience.outage_ended_at

    @property
    def in_outage(self) -> bool:
        """True while the server is unreachable (some call is waiting for it)."""
        return self.patience.in_outage

    def guard(self, what: str, attempt: Callable[[], T]) -> T:
        """Return ``attempt()``, tried again through an outage (:meth:`Patience.call`).

        Raises:
            StorageUnreachable: the outage outlasted the patience.
        """
        return self.patience.call(what, attempt)

    def _reachable(self) -> bool:
        try:
            with self.backend.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except Exception:  # noqa: BLE001 - any failure means no
            return False
        return True

    # -------------------------------------------------------------- trial creation
    def create_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        """Create a trial like ``RDBStorage._create_new_trial`` (a fresh RUNNING one, or one
        from a template) and return it; its token, written in the same transaction, lets a
        retry find the trial that a failed try did create (no second trial)."""
        token = uuid.uuid4().hex

        def template() -> FrozenTrial:
            if template_trial is None:
                return FrozenTrial(number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(),
                                   datetime_complete=None, params={}, distributions={}, user_attrs={},
                                   system_attrs={WRITE_TOKEN: token}, intermediate_values={}, trial_id=-1)
            made = copy.copy(template_trial)
            made.system_attrs = {**template_trial.system_attrs, WRITE_TOKEN: token}
            return made

        def landed() -> Any:
            found = trial_with_token(self.backend, study_id, WRITE_TOKEN, token)
            return _NOT_LANDED if found is None else self.backend.get_trial(found)

        return self.patience.call(
            "create_new_trial", lambda: create_trial_with_token(self.backend, study_id, template(), WRITE_TOKEN),
            landed)

    # -------------------------------------------------------------- state changes
    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        """Like ``RDBStorage.set_trial_state_values`` (False: a RUNNING request for a trial
        that is not WAITING any more, i.e. another worker took it); its token, written in the
        same transaction, lets a retry tell a change that did land (True) from one to make.

        Raises:
            UpdateFinishedTrialError: the trial had finished.
            StorageUnreachable: the outage outlasted the patience.
        """
        token = uuid.uuid4().hex

        def landed() -> Any:
            return True if self.backend.get_trial_system_attrs(trial_id).get(WRITE_TOKEN) == token else _NOT_LANDED

        return self.patience.call(
            "set_trial_state_values",
            lambda: set_state_with_token(self.backend, trial_id, state, values, WRITE_TOKEN, token), landed)

    # -------------------------------------------------------------- heartbeats
    def stale_trial_ids(self, study_id: int) -> list[int]:
        """The running trials whose heartbeat is older than the grace period, except during
        an outage and for one grace period after it (when every heartbeat is old: the live
        workers have not beaten again yet)."""
        grace = self.backend.grace_period or 2 * (self.backend.heartbeat_interval or 1)
        if self.patience.quiet(grace):
            return []
        stale = super().stale_trial_ids(study_id)
        return [] if self.patience.quiet(grace) else stale
