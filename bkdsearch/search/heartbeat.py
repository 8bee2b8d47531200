"""Heartbeats of running trials, and the retry of trials whose worker died.

Every running trial records a heartbeat every ``BKDSEARCH_HEARTBEAT_S`` seconds (default
10); one silent for ``BKDSEARCH_GRACE_S`` seconds (default 30, or three intervals when that
is longer) belongs to a dead worker: the next worker that looks fails it and queues it again
with the same parameters (up to :data:`MAX_RETRY` times).
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState

from ..errors import StorageError

HEARTBEAT_S = 10
"""Default seconds between heartbeats of a running trial (``BKDSEARCH_HEARTBEAT_S``)."""


GRACE_S = 30
"""Default seconds without a heartbeat after which a running trial counts as dead
(``BKDSEARCH_GRACE_S``); the default grows to three heartbeat intervals when those are
longer, a value given must exceed one interval."""


MAX_RETRY = 3
"""How many times a trial whose worker died is queued again."""


_ATTEMPT_ATTRS = ("fail_reason", "pruned_reason", "resumed_from", "resume_note", "test_acc",
                  "wall_time_s", "images_per_s", "worker")


def _env_seconds(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(float(raw))
    except ValueError:
        raise StorageError(f"{name}={raw!r}: expected a whole number of seconds") from None
    if value < 1:
        raise StorageError(f"{name}={raw!r}: must be at least 1 second")
    return value


def heartbeat_settings() -> tuple[int, int]:
    """Return (heartbeat interval, grace period) in seconds from the environment
    (``BKDSEARCH_HEARTBEAT_S``, ``BKDSEARCH_GRACE_S``) or the defaults.

    Raises:
        StorageError: a value that is not a positive whole number, or a grace period not
            longer than the interval (a live trial would look dead).
    """
    beat = _env_seconds("BKDSEARCH_HEARTBEAT_S", HEARTBEAT_S)
    grace = _env_seconds("BKDSEARCH_GRACE_S", max(GRACE_S, 3 * beat))
    if grace <= beat:
        raise StorageError(f"BKDSEARCH_GRACE_S ({grace}) must be longer than BKDSEARCH_HEARTBEAT_S ({beat})")
    return beat, grace


class RetryDeadTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a trial whose worker died (same parameters, its user attrs so the
    ``checkpoint`` of the dead trial travels), minus the attrs describing how that attempt
    ended."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trial = copy.copy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in _ATTEMPT_ATTRS}
        super().__call__(study, trial)


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Fail the running trials whose heartbeat stopped more than the grace period ago
    (``fail_reason``: worker lost) and queue their retries; return their numbers.

    Like :func:`optuna.storages.fail_stale_trials`, and safe when several workers call it at
    once (each stale trial is failed, and retried, by one of them).
    """
    storage = study._storage
    if not isinstance(storage, BaseHeartbeat) or storage.get_heartbeat_interval() is None:
        return []
    backend = getattr(storage, "_backend", storage)  # optuna wraps RDBStorage in a cache
    grace = getattr(backend, "grace_period", None) or 2 * storage.get_heartbeat_interval()
    failed = []
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        with contextlib.suppress(Exception):
            storage.set_trial_user_attr(
                trial_id, "fail_reason",
                f"worker lost: no heartbeat for over {grace} s (killed, or its machine went away); "
                "queued again with the same parameters")
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(trial_id)
        except UpdateFinishedTrialError:
            continue  # another worker failed it first
    callback = storage.get_heartbeat_stale_trial_callback()
    numbers = []
    for trial_id in failed:
        frozen = copy.deepcopy(storage.get_trial(trial_id))
        numbers.append(frozen.number)
        if callback is not None:
            callback(study, frozen)
    return numbers


class HeartbeatThread:
    """Records a heartbeat for a running trial every ``interval`` seconds in a thread."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"heartbeat-{trial_id}")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self.storage.record_heartbeat(self.trial_id)

    def __enter__(self) -> HeartbeatThread:
        with contextlib.suppress(Exception):
            self.storage.record_heartbeat(self.trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
