"""Heartbeats of running trials, and the retry of trials whose worker died.

Every running trial records a heartbeat every ``BKDSEARCH_HEARTBEAT_S`` seconds (default
10); one silent for ``BKDSEARCH_GRACE_S`` seconds (default 30, or three intervals when that
is longer) belongs to a dead worker, and so does a running trial that never recorded a
heartbeat (its worker died between asking for it and its first heartbeat) once it started
more than the grace period ago: the next worker that looks queues it again with the same
parameters (up to ``BKDSEARCH_MAX_RETRY`` times, default :data:`MAX_RETRY`) and then fails it.

The retry is queued *before* the dead trial is failed, and keyed to it (system attr
:data:`RETRY_OF` = the dead trial's number): a worker that dies in between leaves a running
trial whose retry exists, and the next worker only fails it. A trial is never queued twice:
a worker queues no retry for a trial that has one, and of two retries queued at the same
moment by two workers the higher-numbered one is withdrawn (``fail_reason`` ``surplus: ...``).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from ..errors import StorageError
from .carry_on import carry_on, failure_line, stderr
from .optuna_seam import (
    all_trials,
    fail_if_running,
    grace_period,
    heartbeat_interval,
    rdb_of,
    running_without_heartbeat,
    stale_trial_ids,
    storage_of,
    study_id_of,
    unwrap_cache,
)

HEARTBEAT_S = 10
"""Default seconds between heartbeats of a running trial (``BKDSEARCH_HEARTBEAT_S``)."""

HEARTBEAT_RANGE = (1, 3600)
"""Allowed heartbeat intervals, in seconds."""

GRACE_S = 30
"""Default seconds without a heartbeat after which a running trial counts as dead
(``BKDSEARCH_GRACE_S``); the default grows to three heartbeat intervals when those are
longer, a value given must exceed one interval."""

MAX_GRACE_S = 24 * 3600
"""The longest grace period allowed, in seconds."""

MAX_RETRY = 3
"""Default of how many times a trial whose worker died is queued again
(``BKDSEARCH_MAX_RETRY``, 0 to :data:`MAX_RETRY_LIMIT`); Ctrl-C does not count."""

MAX_RETRY_LIMIT = 100
"""The largest ``BKDSEARCH_MAX_RETRY`` allowed."""

RETRY_OF = "retry_of"
"""System attr of a queued retry: the number of the trial it replaces (at most one live
retry per number)."""

CONSTRAINTS_PREFIX = "constraints"
"""Optuna's system attrs of a trial's constraints (``constraints:<name>``; a list in ``constraints``)."""

LOST = "lost_retries"
"""System attr of a retry: how many times its chain lost its worker."""

_ATTEMPT_ATTRS = ("fail_reason", "pruned_reason", "resumed_from", "resume_note", "test_acc",
                  "wall_time_s", "images_per_s", "worker")

T = TypeVar("T")

_LOCK = threading.RLock()
"""The threads of one process check for stale trials, and queue retries, one at a time."""

_FIRST_SEEN: dict[tuple[str, int], float] = {}
"""(storage, trial id) -> when this process first saw that running trial without a heartbeat."""


def _env_number(name: str, default: int, low: int, high: int, what: str, note: str = "") -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value != int(value) or not low <= value <= high:
        raise StorageError(f"{name}={raw!r}: expected {what} from {low} to {high}{note}")
    return int(value)


def heartbeat_settings() -> tuple[int, int]:
    """Return (heartbeat interval, grace period) in seconds from the environment
    (``BKDSEARCH_HEARTBEAT_S``: 1 to 3600, ``BKDSEARCH_GRACE_S``: longer than the interval,
    at most 24 h) or the defaults. ``BKDSEARCH_MAX_RETRY`` is checked too, so that a bad
    value stops a worker before it opens the storage.

    Raises:
        StorageError: a value that is not a whole number of seconds in its range (NaN,
            inf, 1e12), a grace period not longer than the interval (a live trial would look
            dead), or a bad ``BKDSEARCH_MAX_RETRY``.
    """
    low, high = HEARTBEAT_RANGE
    beat = _env_number("BKDSEARCH_HEARTBEAT_S", HEARTBEAT_S, low, high, "a whole number of seconds")
    grace = _env_number("BKDSEARCH_GRACE_S", max(GRACE_S, 3 * beat), beat + 1, MAX_GRACE_S,
                        "a whole number of seconds", f" (longer than BKDSEARCH_HEARTBEAT_S, {beat} s)")
    max_retry()
    return beat, grace


def max_retry() -> int:
    """How many times a chain of trials whose worker died is queued again
    (``BKDSEARCH_MAX_RETRY``, 0 to 100, default :data:`MAX_RETRY`).

    Raises:
        StorageError: not a whole number in that range.
    """
    return _env_number("BKDSEARCH_MAX_RETRY", MAX_RETRY, 0, MAX_RETRY_LIMIT, "a whole number")


def retries_of(study: optuna.Study, number: int) -> list[FrozenTrial]:
    """The trials queued to replace trial ``number`` (normally one), lowest number first."""
    return sorted((t for t in all_trials(study) if t.system_attrs.get(RETRY_OF) == number), key=lambda t: t.number)


def duplicate_of(study: optuna.Study, trial_id: int) -> int | None:
    """For a retry that two workers queued at the same moment, the number of the retry that
    is kept (the lowest): this one must not train. None for every other trial."""
    frozen = storage_of(study).get_trial(trial_id)
    key = frozen.system_attrs.get(RETRY_OF)
    if key is None:
        return None
    first = retries_of(study, key)
    return first[0].number if first and first[0].number < frozen.number else None


def lost_count(trial: FrozenTrial) -> int:
    """How many times the retry chain of ``trial`` lost its worker before it."""
    return int(trial.system_attrs.get(LOST, 0))


def queue_again(study: optuna.Study, trial: FrozenTrial, *, lost: bool = False, limit: int | None = None,
                retry: bool = True) -> bool:
    """Queue ``trial`` (still running, or just failed) again with the same parameters and
    its user attrs (the ``checkpoint`` a retry resumes from), minus those describing how the
    attempt ended; never its intermediate values (a retry that resumes copies them from its
    checkpoint, one that starts over reports its own). Return False, queueing nothing, when
    ``lost`` and the chain already lost its worker ``limit`` times (giving up); True when a
    retry of ``trial`` is queued, now or before (never a second one).

    ``retry`` False (a trial dropped before it trained) keeps its retry history as it is.
    """
    # A retry sets its own constraint (Trial.set_constraint keeps the first value it sees).
    system_attrs: dict[str, Any] = {k: v for k, v in trial.system_attrs.items()
                                    if k != RETRY_OF and not k.startswith(CONSTRAINTS_PREFIX)}
    if retry:  # Optuna's retry attrs: the original trial and every attempt so far
        system_attrs.setdefault("failed_trial", trial.number)
        system_attrs["retry_history"] = [*trial.system_attrs.get("retry_history", []), trial.number]
    if lost:
        if lost_count(trial) >= (max_retry() if limit is None else limit):
            return False
        system_attrs[LOST] = lost_count(trial) + 1
    system_attrs[RETRY_OF] = trial.number
    template = optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={k: v for k, v in trial.user_attrs.items() if k not in _ATTEMPT_ATTRS},
        system_attrs=system_attrs)
    storage = storage_of(study)
    with _LOCK:
        if retries_of(study, trial.number):
            return True  # queued before (its worker died before failing the trial), or by another
        mine = storage.create_new_trial(study_id_of(study), template_trial=template)
    # Another worker may have queued one at the same moment: the lowest-numbered one stays.
    kept = duplicate_of(study, mine)
    if kept is not None:
        with carry_on(f"withdrawing its duplicate retry (trial {kept} is kept)", trial.number):
            if storage.get_trial(mine).state == TrialState.WAITING:
                storage.set_trial_user_attr(mine, "fail_reason", f"surplus: a duplicate of trial {kept}, "
                                            f"the retry of trial {trial.number} another worker queued at once")
                storage.set_trial_state_values(mine, state=TrialState.FAIL)
    return True


class RetryDeadTrial(RetryHeartbeatStaleTrialCallback):
    """The storage's callback for a trial whose worker died: :func:`queue_again` (once, up
    to ``BKDSEARCH_MAX_RETRY`` times, else ``max_retry``). Intermediate values are never
    inherited, whatever ``inherit_intermediate_values`` says: a retry that resumes copies
    them from the checkpoint it resumes, one that starts from epoch 0 reports its own."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        limit = max_retry() if os.environ.get("BKDSEARCH_MAX_RETRY", "").strip() else self._max_retry
        queue_again(study, trial, lost=True, limit=MAX_RETRY_LIMIT if limit is None else limit)


def _patience(storage: BaseStorage) -> Any:
    """The :class:`~.patient.Patience` of a storage that waits out a server's outage, or None."""
    return getattr(unwrap_cache(storage), "patience", None)


def _guarded(storage: BaseStorage, what: str, attempt: Callable[[], T]) -> T:
    """``attempt()``, tried again through an outage when the storage is a patient one."""
    patience = _patience(storage)
    return attempt() if patience is None else patience.call(what, attempt)


def _stale_trial_ids(study: optuna.Study, grace: float) -> list[tuple[int, bool]]:
    """(trial id, had a heartbeat) of the running trials of ``study`` that belong to a dead
    worker: their heartbeat is older than ``grace`` seconds, or they never recorded one and
    started over ``grace`` seconds ago (and this process saw them without one at least an
    interval ago, or for longer than ``grace``, whatever the clocks of the machines say)."""
    storage, study_id = storage_of(study), study_id_of(study)
    found = [(trial_id, True) for trial_id in stale_trial_ids(storage, study_id)]
    rdb, patience = rdb_of(storage), _patience(storage)
    if rdb is None or (patience is not None and patience.quiet(grace)):
        return found  # a patient storage reports no stale trial during an outage and a grace period after
    silent = _guarded(storage, "running trials without a heartbeat", lambda: running_without_heartbeat(rdb, study_id))
    beat = float(heartbeat_interval(storage) or 1)
    where, now, clock = str(rdb.engine.url), time.monotonic(), datetime.now()
    with _LOCK:
        for key in [k for k in _FIRST_SEEN if k[0] == where and k[1] not in silent]:
            del _FIRST_SEEN[key]
        for trial_id, started in silent.items():
            seen_for = now - _FIRST_SEEN.setdefault((where, trial_id), now)
            age = (clock - started).total_seconds() if started else 0.0
            if seen_for >= beat and (age > grace or seen_for > grace):
                found.append((trial_id, False))
    return found


def fail_stale_trials(study: optuna.Study, *, limit: int | None = None) -> list[int]:
    """Queue the retry of every running trial of a dead worker (see :func:`_stale_trial_ids`),
    then fail it (``fail_reason``: worker lost); return the numbers of the trials failed.

    Safe when several workers call it at once (each stale trial is failed, and queued again,
    once) and when a worker dies inside it (the next one finishes the job). ``limit``: the
    retry limit (default ``BKDSEARCH_MAX_RETRY``); a chain that reached it gives up and says
    so in ``fail_reason``.
    """
    storage = storage_of(study)
    beat = heartbeat_interval(storage)
    if beat is None:
        return []
    grace = grace_period(storage) or 2 * beat
    limit = max_retry() if limit is None else limit
    numbers = []
    with _LOCK:
        for trial_id, had_beat in _stale_trial_ids(study, grace):
            number = _fail_dead(study, trial_id, grace, limit, had_beat)
            if number is not None:
                numbers.append(number)
    return numbers


def _fail_dead(study: optuna.Study, trial_id: int, grace: float, limit: int, had_beat: bool) -> int | None:
    storage = storage_of(study)
    frozen = storage.get_trial(trial_id)
    if frozen.state != TrialState.RUNNING:
        return None  # another worker failed it first
    queued = queue_again(study, frozen, lost=True, limit=limit)  # first: a crash here loses nothing
    lost = (f"no heartbeat for over {grace} s" if had_beat
            else f"no heartbeat since it started over {grace} s ago")
    outcome = ("queued again with the same parameters" if queued
               else f"retried {lost_count(frozen)} times; giving up")
    with carry_on("recording its fail_reason (worker lost)", frozen.number):
        storage.set_trial_user_attr(trial_id, "fail_reason",
                                    f"worker lost: {lost} (killed, or its machine went away); {outcome}")
    try:
        return frozen.number if _fail_if_running(storage, trial_id) else None
    except UpdateFinishedTrialError:
        return None  # another worker failed it first


def _fail_if_running(storage: BaseStorage, trial_id: int) -> bool:
    """Set a running trial FAIL in one conditional UPDATE (:func:`~.optuna_seam.fail_if_running`);
    False when it was not running any more (another worker failed it first)."""
    rdb = rdb_of(storage)
    if rdb is None:
        return storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    return _guarded(storage, "fail a stale trial", lambda: fail_if_running(rdb, trial_id))


class HeartbeatThread:
    """Records a heartbeat for a running trial every ``interval`` seconds in a thread. A beat
    that fails is logged (the first of a run of failures; the next beat that lands says so)
    and tried again at the next interval: the trial goes on.

    Args:
        storage, trial_id: where and for which trial. interval: seconds between beats.
        number: the trial's number, for log lines. log: where they go (default stderr).
    """

    def __init__(self, storage: BaseStorage, trial_id: int, interval: float, *, number: int | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.number, self.log = number, log
        self._failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"heartbeat-{trial_id}")

    def _beat(self) -> None:
        try:
            self.storage.record_heartbeat(self.trial_id)
        except Exception as exc:  # noqa: BLE001 - logged; the next beat tries again
            if not self._failing:
                self._failing = True
                (self.log or stderr)(failure_line(f"a heartbeat (tried again every {self.interval:g} s)", exc,
                                                   self.number))
            return
        if self._failing:
            self._failing = False
            (self.log or stderr)(f"trial {self.number}: heartbeats recorded again")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat()

    def __enter__(self) -> HeartbeatThread:
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
