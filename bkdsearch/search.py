"""The Optuna study: storage, sampler/pruner, objective, workers, heartbeats and retries.

A worker pulls trials from the study and trains them; several workers (threads of one
process sharing a device, processes, machines) share one study through its storage.
``n_trials`` is a cap on the study's finished (complete or pruned) trials, across workers:
a worker stops when that many trials have finished, and while the running trials of other
workers would fill the cap it waits for them (one of them may still fail and need a
replacement) instead of starting more.

Failures:

- a trial that raises (NaN/inf loss, out of memory, an impossible configuration) ends FAIL
  with ``fail_reason`` in its user attrs; the worker goes on (until
  :data:`MAX_CONSECUTIVE_FAILURES` in a row, which stops it: something is wrong beyond one
  configuration);
- every running trial records a heartbeat; a trial whose worker died (SIGKILL, a lost
  machine) is failed by the next worker that looks, after the grace period, and queued again
  with the same parameters; the retry resumes from the last epoch checkpoint the dead trial
  saved to the artifact store and records ``resumed_from = {trial, epoch}``;
- Ctrl-C: the running trials end FAIL (``interrupted``) and are queued again, so the next
  ``bkdsearch run`` resumes them from their last epoch; nothing is left RUNNING.

Heartbeat interval and grace period come from ``BKDSEARCH_HEARTBEAT_S`` (default 10 s) and
``BKDSEARCH_GRACE_S`` (default 30 s, or three intervals when that is longer); checkpoints of
running trials go to ``--artifact-dir``, else ``BKDSEARCH_ARTIFACT_DIR``, else
``studies/<study>/artifacts`` (give every machine of a shared study the same shared path so
that a retry on another machine finds them).
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import shutil
import socket
import sys
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.exceptions import DuplicatedStudyError, ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState

from . import __version__
from .engine import NonFiniteLoss, Stopped, Trainer, pick_device
from .flops import run_flops
from .spec import Choice, Distribution, FloatRange, IntRange, RunConfig, Spec, SpecError, resolve
from .teacher import teacher_weights
from .urls import redact
from .zoo.weights import first_line, load_safely

# Heartbeats, stale-trial retry and grouped TPE are "experimental" in Optuna's terms, stable in
# practice; the warnings would repeat on every run.
warnings.filterwarnings("ignore", category=ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
optuna.logging.set_verbosity(optuna.logging.WARNING)

MAX_CONSECUTIVE_FAILURES = 5
OBJECTIVE_NAMES = {"val_acc": "val_acc", "train_gflops": "train_gflops", "student_mflops": "student_mflops"}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
HEARTBEAT_S = 10
"""Default seconds between heartbeats of a running trial (``BKDSEARCH_HEARTBEAT_S``)."""
GRACE_S = 30
"""Default seconds without a heartbeat after which a running trial counts as dead
(``BKDSEARCH_GRACE_S``); the default grows to three heartbeat intervals when those are
longer, a value given must exceed one interval."""
MAX_RETRY = 3
"""How many times a trial whose worker died is queued again."""
INTERRUPTED = "interrupted (Ctrl-C)"

# User attrs that describe how one attempt ended; a retry must not inherit them.
_ATTEMPT_ATTRS = ("fail_reason", "pruned_reason", "resumed_from", "resume_note", "test_acc",
                  "wall_time_s", "images_per_s", "worker")


class StorageError(Exception):
    """The storage URL is malformed or the database cannot be reached (bad input: exit 2)."""


class NotFound(LookupError):
    """No such study or trial in the storage (bad input: exit 2)."""


class TrialsKeepFailing(RuntimeError):
    """Several trials in a row failed: something is wrong beyond one configuration."""


class Interrupted(Stopped):
    """The worker was asked to stop (Ctrl-C) while waiting for the teacher or at an epoch's
    end; within an epoch the trainer raises the base class, :class:`bkdsearch.engine.Stopped`.
    Either ends the running trial FAIL (interrupted) and queues it again."""


# --------------------------------------------------------------------------- settings


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


# --------------------------------------------------------------------------- storage & study


def _clean(text: str, secrets: list[str]) -> str:
    """``text`` with URL passwords (and the literal ``secrets``) replaced by ``***``."""
    text = redact(text)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _creation_race(exc: BaseException) -> bool:
    """True for the errors of several processes creating Optuna's tables at once."""
    text = str(exc).lower()
    return any(s in text for s in ("already exists", "duplicate", "unique", "deadlock", "lock wait"))


def make_storage(url: str, *, create: bool = True) -> RDBStorage:
    """Return an RDB storage for ``url`` with heartbeats and retry of trials whose worker died.

    SQLite gets a busy timeout and WAL journaling so several local workers do not hit
    "database is locked"; PostgreSQL a connect timeout. ``create=False`` refuses a SQLite
    file that does not exist yet (for commands that only read, e.g. ``status``).

    Raises:
        StorageError: malformed URL, missing driver, missing SQLite file (``create=False``)
            or unreachable server; the message never contains the password.
    """
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - sqlalchemy raises ArgumentError, ValueError, ...
        raise StorageError(
            f"malformed storage URL {redact(url)!r}: expected e.g. sqlite:///studies/NAME.db, "
            "postgresql+psycopg://USER@HOST/DB or mysql+pymysql://USER@HOST/DB") from None
    secrets = _password(url)
    shown = _clean(url, secrets)
    beat, grace = heartbeat_settings()
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        db = parsed.database or ""
        if db and db != ":memory:" and not db.startswith("file:"):
            path = Path(db)
            if not create and not path.is_file():
                raise StorageError(f"no SQLite database at {path} (storage {shown})")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
                raise StorageError(f"cannot create the folder of storage {shown}: "
                                   f"{getattr(exc, 'strerror', None) or exc}") from None
        kwargs = {"connect_args": {"timeout": 60}}
    elif backend == "postgresql" and "connect_timeout" not in parsed.query:
        kwargs["connect_args"] = {"connect_timeout": 10}
    attempts = 6
    for attempt in range(attempts):
        try:
            storage = RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=beat, grace_period=grace,
                heartbeat_stale_trial_callback=_Retry(max_retry=MAX_RETRY, inherit_intermediate_values=True),
            )
            break
        except Exception as exc:  # noqa: BLE001 - sqlalchemy raises many types; all mean "this URL does not work"
            if attempt < attempts - 1 and _creation_race(exc):
                time.sleep(0.2 + random.random())
                continue
            raise StorageError(f"cannot open storage {shown}: {_clean(first_line(exc), secrets)}") from None
    if backend == "sqlite":
        with contextlib.suppress(Exception), storage.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    return storage


def _sampler(spec: Spec) -> optuna.samplers.BaseSampler:
    constraints = _constraints if spec.search.max_train_gflops is not None else None
    kind = spec.search.sampler
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=None)
    if kind == "gp":
        return optuna.samplers.GPSampler(constraints_func=constraints)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(constraints_func=constraints)
    return optuna.samplers.TPESampler(multivariate=True, group=True, constraints_func=constraints,
                                      n_startup_trials=min(10, max(2, spec.search.n_trials // 3)))


def _constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
    return list(trial.user_attrs.get("constraint", [0.0]))


def _pruner(spec: Spec) -> optuna.pruners.BasePruner:
    if spec.search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    if spec.search.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


def open_study(spec: Spec, storage_url: str, study_name: str | None = None) -> optuna.Study:
    """Create the study of ``spec`` in ``storage_url`` or load it when it exists (resume).

    The process that creates the study records the spec and enqueues the spec's
    ``search.enqueue`` configurations (e.g. the published one), once; workers that start at
    the same moment load it.

    Raises:
        StorageError: the storage cannot be opened, or the study exists with other objectives.
    """
    storage = make_storage(storage_url)
    secrets = _password(storage_url)
    name = study_name or spec.name
    directions = ["maximize"] + ["minimize"] * (len(spec.search.objectives) - 1)
    created = False
    try:
        try:
            study = optuna.create_study(storage=storage, study_name=name, directions=directions,
                                        sampler=_sampler(spec), pruner=_pruner(spec))
            created = True
        except DuplicatedStudyError:
            study = optuna.load_study(storage=storage, study_name=name, sampler=_sampler(spec),
                                      pruner=_pruner(spec))
    except Exception as exc:  # noqa: BLE001 - database errors of any driver
        raise StorageError(f"cannot create study {name!r} in {_clean(storage_url, secrets)}: "
                           f"{_clean(first_line(exc), secrets)}") from None
    if study.directions != [optuna.study.StudyDirection.MAXIMIZE if d == "maximize"
                            else optuna.study.StudyDirection.MINIMIZE for d in directions]:
        raise StorageError(f"study {name!r} exists with other objectives; use another --study name")
    if created or "spec" not in study.user_attrs:
        study.set_metric_names([OBJECTIVE_NAMES[o] for o in spec.search.objectives])
        study.set_user_attr("spec", _redacted_spec(spec))
    if created:
        for params in spec.search.enqueue:
            study.enqueue_trial(params, skip_if_exists=True)
    return study


_QUERY_SECRETS = ("password", "passwd", "pwd")


def _password(url: str) -> list[str]:
    """The secrets of a storage URL: its password, decoded, and any ``?password=`` style
    query values (what :func:`bkdsearch.urls.redact` may not see)."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:  # noqa: BLE001
        return []
    found = [parsed.password] if isinstance(parsed.password, str) else []
    for key, value in parsed.query.items():
        if key.lower() in _QUERY_SECRETS:
            found += [value] if isinstance(value, str) else list(value)
    return sorted({s for s in found if s}, key=len, reverse=True)


# --------------------------------------------------------------------------- retries


class _Retry(RetryHeartbeatStaleTrialCallback):
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


# --------------------------------------------------------------------------- suggestions


class TrialSuggest:
    """A :class:`bkdsearch.spec.Suggest` asking an Optuna trial (define-by-run)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def __call__(self, name: str, dist: Distribution) -> Any:
        if isinstance(dist, FloatRange):
            low, high = dist.float_range
            return self.trial.suggest_float(name, low, high, log=dist.log)
        if isinstance(dist, IntRange):
            low, high = dist.int_range
            return self.trial.suggest_int(name, low, high, step=dist.step, log=dist.log)
        assert isinstance(dist, Choice)
        encoded = [_encode(c) for c in dist.choice]
        picked = self.trial.suggest_categorical(name, encoded)
        if picked not in encoded:  # a fixed (enqueued or retried) value outside the choices
            raise SpecError([(name, f"value {picked!r} is not one of {encoded}", None)])
        return dist.choice[encoded.index(picked)]


def _encode(value: Any) -> Any:
    """Optuna categorical choices must be scalars: lists become ``"1,2"`` style strings."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value


# --------------------------------------------------------------------------- the worker


@dataclass
class WorkerReport:
    """What one worker did."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    trials: list[int] = field(default_factory=list)


class _Heartbeat:
    """Records a heartbeat for a running trial every ``interval`` seconds in a thread."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"heartbeat-{trial_id}")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self.storage.record_heartbeat(self.trial_id)

    def __enter__(self) -> _Heartbeat:
        with contextlib.suppress(Exception):
            self.storage.record_heartbeat(self.trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Worker:
    """Trains trials of one study on one device until the study's cap is reached.

    Args:
        spec: the spec.
        study: the study (from :func:`open_study`).
        n_trials: cap on the study's finished trials (all workers together).
        device: where trials train.
        studies_dir: home of run folders, artifacts and cached teachers.
        timeout: stop starting new trials after this many seconds.
        progress: show per-epoch progress.
        artifact_dir: where epoch checkpoints of running trials go (default
            ``BKDSEARCH_ARTIFACT_DIR``, else ``studies_dir/<study>/artifacts``).
        log: where progress lines go.
    """

    def __init__(self, spec: Spec, study: optuna.Study, *, n_trials: int, device: torch.device,
                 studies_dir: Path, timeout: float | None = None, progress: bool = True,
                 artifact_dir: Path | None = None, log: Callable[[str], None] = print) -> None:
        self.spec, self.study, self.n_trials, self.device = spec, study, n_trials, device
        self.studies_dir = Path(studies_dir)
        self.run_root = self.studies_dir / study.study_name
        env_dir = os.environ.get("BKDSEARCH_ARTIFACT_DIR")
        artifacts = Path(artifact_dir or (Path(env_dir) / study.study_name if env_dir else None)
                         or self.run_root / "artifacts")
        artifacts.mkdir(parents=True, exist_ok=True)
        self.artifacts = FileSystemArtifactStore(str(artifacts))
        self.deadline = time.monotonic() + timeout if timeout else None
        self.progress = progress
        self.log = log
        self.stop = threading.Event()
        """Set to interrupt: the running trial ends FAIL (queued again) at its next step."""
        self.drain = threading.Event()
        """Set to finish the running trial and start no other."""
        self.report = WorkerReport()
        self.finished = threading.Event()
        """Set when :meth:`run` has returned (in :func:`run_workers`)."""
        self.error: BaseException | None = None
        self.current: optuna.Trial | None = None
        self._lock = threading.Lock()
        self._interrupt_lock = threading.Lock()
        self._consecutive_failures = 0
        self.last_failure = ""
        storage = study._storage
        beat = storage.get_heartbeat_interval() if isinstance(storage, BaseHeartbeat) else None
        self._beat = float(beat or HEARTBEAT_S)
        self._poll_s = min(2.0, self._beat)

    # ---------------------------------------------------------------- cap
    def _counts(self) -> dict[TrialState, int]:
        counts: dict[TrialState, int] = {}
        for t in self.study.get_trials(deepcopy=False):
            counts[t.state] = counts.get(t.state, 0) + 1
        return counts

    def _surplus(self, trial: optuna.Trial) -> bool:
        """True when lower-numbered trials (finished, running, or queued: ``ask`` takes those
        first) already fill the cap: workers that asked at the same moment."""
        live = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)
        ahead = [t for t in self.study.get_trials(deepcopy=False)
                 if t.number < trial.number and t.state in live]
        return len(ahead) >= self.n_trials

    def _drop_surplus(self, trial: optuna.Trial) -> None:
        frozen = self.study._storage.get_trial(trial._trial_id)
        with contextlib.suppress(Exception):
            trial.set_user_attr("fail_reason", "surplus: other workers had already filled the cap")
        self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        if frozen.system_attrs.get("fixed_params") or frozen.params:
            # A queued trial (enqueued, or a retry): put it back in the queue.
            self.study.add_trial(optuna.trial.create_trial(
                state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
                user_attrs=frozen.user_attrs, system_attrs=frozen.system_attrs))

    # ---------------------------------------------------------------- loop
    def _stopping(self) -> bool:
        if self.stop.is_set() or self.drain.is_set():
            return True
        return self.deadline is not None and time.monotonic() > self.deadline

    def run(self) -> WorkerReport:
        """Pull and train trials until the cap, the timeout or a stop request.

        Raises:
            TrialsKeepFailing: :data:`MAX_CONSECUTIVE_FAILURES` trials in a row failed.
            KeyboardInterrupt: after failing (and re-queueing) the running trial.
        """
        waiting_logged = False
        while not self._stopping():
            fail_stale_trials(self.study)
            with self._lock:
                c = self._counts()
                finished = sum(c.get(s, 0) for s in FINISHED)
                if finished >= self.n_trials:
                    break
                trial = None
                if finished + c.get(TrialState.RUNNING, 0) < self.n_trials:
                    trial = self.study.ask()
                    self.current = trial
                    with contextlib.suppress(Exception):  # stale-able from its first moment
                        self.study._storage.record_heartbeat(trial._trial_id)
            if trial is None:
                if not waiting_logged:
                    self.log(f"waiting: {c.get(TrialState.RUNNING, 0)} running trial(s) may still fill the cap "
                             f"of {self.n_trials} (one may fail and need a replacement)")
                    waiting_logged = True
                self.stop.wait(self._poll_s)
                continue
            waiting_logged = False
            try:
                if self._surplus(trial):
                    self._drop_surplus(trial)
                    continue
            except KeyboardInterrupt:
                self._interrupted(trial)
                raise
            failed_before = self.report.failed
            self.run_trial(trial)
            self._consecutive_failures = (self._consecutive_failures + 1
                                          if self.report.failed > failed_before else 0)
            if self._consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                raise TrialsKeepFailing(
                    f"{self._consecutive_failures} trials in a row failed; the last: {self.last_failure}")
        return self.report

    def run_trial(self, trial: optuna.Trial) -> None:
        """Train one asked trial and tell the study how it ended (never raises, except
        :class:`KeyboardInterrupt` after telling)."""
        self.current = trial
        try:
            with _Heartbeat(self.study._storage, trial._trial_id, self._beat):
                values = self._objective(trial)
        except optuna.TrialPruned as exc:
            with contextlib.suppress(Exception):
                trial.set_user_attr("pruned_reason", str(exc) or "median pruner")
            if self._tell(trial, TrialState.PRUNED):
                self.report.pruned += 1
                self.log(f"trial {trial.number} {str(exc) or 'pruned'}")
        except KeyboardInterrupt:
            self._interrupted(trial)
            raise
        except Stopped:  # Interrupted, or the trainer's own Stopped
            self._interrupted(trial)
        except Exception as exc:  # noqa: BLE001 - a failing trial ends alone
            self._fail(trial, _reason(exc))
        else:
            if self._tell(trial, TrialState.COMPLETE, values):
                self.report.complete += 1
                with contextlib.suppress(Exception):  # a storage hiccup must not end the worker
                    self.log(self._outcome(trial, values))
        self.report.trials.append(trial.number)
        self.current = None
        with contextlib.suppress(Exception):
            self._line()

    def _outcome(self, trial: optuna.Trial, values: list[float]) -> str:
        """One line on a complete trial: its objectives, test accuracy and speed."""
        attrs = self.study._storage.get_trial(trial._trial_id).user_attrs
        parts = [f"{name} {v:.2f}%" if name.endswith("acc") else f"{name} {format_value(v)}"
                 for name, v in zip(self.spec.search.objectives, values, strict=True)]
        if attrs.get("test_acc") is not None:
            parts.append(f"test_acc {attrs['test_acc']:.2f}%")
        return (f"trial {trial.number} complete: {', '.join(parts)} in {attrs.get('wall_time_s', 0):.0f} s "
                f"({attrs.get('images_per_s', 0):.0f} img/s)")

    def _tell(self, trial: optuna.Trial, state: TrialState, values: list[float] | None = None) -> bool:
        """Tell the study; False (and a log line) when another worker had already ended the
        trial (it lost its heartbeat for longer than the grace period)."""
        if self.study._storage.get_trial(trial._trial_id).state.is_finished():
            self.log(f"trial {trial.number} had already been ended by another worker (its heartbeat "
                     "stopped for longer than the grace period); its retry carries on")
            return False
        self.study.tell(trial, values, state=state, skip_if_finished=True)
        return True

    def _fail(self, trial: optuna.Trial, reason: str) -> None:
        with contextlib.suppress(Exception):
            trial.set_user_attr("fail_reason", reason)
        self._tell(trial, TrialState.FAIL)
        self.report.failed += 1
        self.last_failure = f"trial {trial.number}: {reason}"
        self.log(f"trial {trial.number} failed: {reason}")

    def _interrupted(self, trial: optuna.Trial) -> None:
        """Fail ``trial`` as interrupted and queue it again (same parameters, its last
        checkpoint): the next ``run`` resumes it."""
        with self._interrupt_lock:  # the worker's thread and abandon() may both get here
            self._interrupt(trial)

    def _interrupt(self, trial: optuna.Trial) -> None:
        storage = self.study._storage
        frozen = storage.get_trial(trial._trial_id)
        if frozen.state.is_finished():
            return
        saved = frozen.user_attrs.get("checkpoint") or {}
        with contextlib.suppress(Exception):
            trial.set_user_attr("fail_reason", f"{INTERRUPTED}; queued again, the next run resumes it "
                                               f"after epoch {saved.get('epoch', 0)}")
        self.current = None
        if not self._tell(trial, TrialState.FAIL):
            return  # another worker had failed it (and queued its retry)
        self.report.failed += 1
        with contextlib.suppress(Exception):
            _Retry(max_retry=None, inherit_intermediate_values=True)(
                self.study, copy.deepcopy(storage.get_trial(trial._trial_id)))
        self.log(f"trial {trial.number} {INTERRUPTED}; queued again to resume")

    def abandon(self) -> None:
        """From another thread, when this worker cannot stop in time: fail its running trial
        as interrupted (and queue it again)."""
        trial = self.current
        if trial is not None:
            with contextlib.suppress(Exception):
                self._interrupted(trial)

    def _line(self) -> None:
        c = self._counts()
        best = "-"
        with contextlib.suppress(Exception):
            if len(self.study.directions) == 1 and c.get(TrialState.COMPLETE):
                best = f"{self.study.best_value:.2f}% (trial {self.study.best_trial.number})"
        self.log(f"study {self.study.study_name}: {c.get(TrialState.COMPLETE, 0)} done, "
                 f"{c.get(TrialState.PRUNED, 0)} pruned, {c.get(TrialState.FAIL, 0)} failed, "
                 f"{c.get(TrialState.RUNNING, 0)} running / cap {self.n_trials}; best val acc {best}")

    # ---------------------------------------------------------------- objective
    def _objective(self, trial: optuna.Trial) -> list[float]:
        cfg = resolve(self.spec, TrialSuggest(trial))
        if self.device.type == "cpu":
            cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"device": "cpu"})})
        trial.set_user_attr("run_config", cfg.model_dump(mode="json"))
        trial.set_user_attr("versions", {"bkdsearch": __version__, "torch": torch.__version__,
                                         "optuna": optuna.__version__})
        trial.set_user_attr("device", _device_name(self.device))
        trial.set_user_attr("worker", f"{socket.gethostname()} pid {os.getpid()} {self.device}")
        params = ", ".join(f"{k}={format_value(v)}" for k, v in trial.params.items())
        self.log(f"trial {trial.number} started on {self.device}: {params or 'no searched parameters'}")
        report = run_flops(cfg)
        trial.set_user_attr("flops", report.as_dict())
        train_gflops = report.train_step / 1e9
        if self.spec.search.max_train_gflops is not None:
            trial.set_user_attr("constraint", [train_gflops - self.spec.search.max_train_gflops])
        run_dir = self.run_root / f"trial-{trial.number}"
        _clear_run_dir(run_dir)  # leftovers of an older study of the same name never resume
        saved = self._resume_from_failed(trial, run_dir, cfg)
        weights = self._teacher(cfg)
        last_artifact = [saved]

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            last_artifact[0] = self._save_artifact(trial, run_dir, epoch, last_artifact[0])
            if self.stop.is_set():
                raise Interrupted()
            value = row.get("val_acc")
            if value is None:
                return
            if len(self.study.directions) > 1:
                return  # Optuna prunes (and records intermediate values for) single-objective only
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} with val acc {value:.2f}%")

        # should_stop: Ctrl-C stops the trial within one step, not one epoch.
        trainer = Trainer(cfg, run_dir, teacher_weights=weights, device=self.device,
                          on_epoch=on_epoch, progress=self.progress, should_stop=self.stop.is_set)
        result = trainer.fit(resume=True)
        if result.val_acc is None:
            raise ValueError("no validation split: set data.val_fraction > 0 for a search")
        trial.set_user_attr("test_acc", result.test_acc)
        trial.set_user_attr("wall_time_s", result.wall_time_s)
        trial.set_user_attr("images_per_s", result.images_per_s)
        objectives = {"val_acc": result.val_acc, "train_gflops": train_gflops,
                      "student_mflops": report.student / 1e6}
        return [objectives[o] for o in self.spec.search.objectives]

    def _teacher(self, cfg: RunConfig) -> str | None:
        """The teacher's weights; one worker of this machine trains a missing teacher while
        the others wait for it (they would write the same cache files)."""
        from filelock import FileLock, Timeout

        cache = self.studies_dir / "teachers"
        cache.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(cache / ".train.lock"))
        while True:
            try:
                lock.acquire(timeout=1)
                break
            except Timeout:
                if self.stop.is_set():
                    raise Interrupted() from None
        try:
            return teacher_weights(cfg, cache, progress=self.progress, log=self.log)
        finally:
            lock.release()

    def _save_artifact(self, trial: optuna.Trial, run_dir: Path, epoch: int, previous: str | None) -> str:
        """Store the checkpoint of ``epoch`` in the artifact store, record it in the trial's
        ``checkpoint`` user attr, remove the previous one; return its artifact id."""
        artifact_id = uuid.uuid4().hex
        with (run_dir / "last.pt").open("rb") as f:
            self.artifacts.write(artifact_id, f)
        trial.set_user_attr("checkpoint", {"artifact_id": artifact_id, "epoch": epoch})
        if previous:
            with contextlib.suppress(Exception):
                self.artifacts.remove(previous)
        return artifact_id

    def _resume_from_failed(self, trial: optuna.Trial, run_dir: Path, cfg: RunConfig) -> str | None:
        """For the retry of a trial whose worker died (or was interrupted), fetch the last
        checkpoint that trial saved into ``run_dir``; record ``resumed_from`` and return the
        checkpoint's artifact id (None when not a retry).

        The retry inherits the dead trial's user attrs, so ``checkpoint`` names the newest
        checkpoint of the whole retry chain. A checkpoint that cannot be fetched (another
        machine's local artifact folder) or belongs to another configuration (another runtime
        does not count: see :meth:`RunConfig.digest`) means starting from epoch 0, with
        ``resume_note`` saying why.
        """
        frozen = self.study._storage.get_trial(trial._trial_id)
        history = RetryHeartbeatStaleTrialCallback.retry_history(frozen)
        if not history:
            return None
        source = history[-1]
        saved = frozen.user_attrs.get("checkpoint")
        epoch, note = 0, None
        if saved:
            run_dir.mkdir(parents=True, exist_ok=True)
            tmp = run_dir / "last.pt.download"
            try:
                with self.artifacts.open_reader(saved["artifact_id"]) as src, tmp.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                state = load_safely(tmp)
                if state.get("config_digest") != cfg.digest():
                    note = "the saved checkpoint belongs to another configuration; started from epoch 0"
                else:
                    os.replace(tmp, run_dir / "last.pt")
                    epoch = int(saved["epoch"])
            except Exception as exc:  # noqa: BLE001 - any failure means: start over
                note = (f"checkpoint {saved.get('artifact_id')} not available ({first_line(exc)}); "
                        "started from epoch 0")
            finally:
                tmp.unlink(missing_ok=True)
        trial.set_user_attr("resumed_from", {"trial": source, "epoch": epoch})
        if note:
            trial.set_user_attr("resume_note", note)
            self.log(f"trial {trial.number} retries trial {source}: {note}")
            return None
        self.log(f"trial {trial.number} retries trial {source}, resuming after epoch {epoch}")
        return saved["artifact_id"] if saved else None


def format_value(value: Any) -> str:
    """Return ``value`` as shown in logs and tables: floats with 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _clear_run_dir(run_dir: Path) -> None:
    for name in ("last.pt", "metrics.jsonl", "student.pt"):
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()


def _redacted_spec(spec: Spec) -> dict[str, Any]:
    data = spec.model_dump(mode="json", by_alias=True)
    if data.get("storage"):
        data["storage"] = _clean(data["storage"], _password(data["storage"]))
    return data


def _reason(exc: BaseException) -> str:
    """Why a trial failed, in one line, for its ``fail_reason`` (URL passwords redacted)."""
    return redact(_describe(exc))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, NonFiniteLoss):
        return f"non-finite loss: {exc}"
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "CUDA out of memory"
    if isinstance(exc, SpecError):
        return f"invalid configuration: {exc}".replace("\n", "; ")
    last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" at {Path(last.filename).name}:{last.lineno}" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def devices_for(option: str) -> list[torch.device]:
    """Return the devices of ``--devices``: ``auto`` (every GPU, else the CPU), ``cpu`` or
    ``0,1,...``.

    Raises:
        ValueError: a GPU index that does not exist.
    """
    if option == "auto":
        n = torch.cuda.device_count()
        return [torch.device(f"cuda:{i}") for i in range(n)] or [torch.device("cpu")]
    if option == "cpu":
        return [torch.device("cpu")]
    out = []
    for part in option.split(","):
        if not part.strip().isdigit() or int(part) >= torch.cuda.device_count():
            raise ValueError(f"--devices {option}: no GPU {part.strip()!r} "
                             f"({torch.cuda.device_count()} visible)")
        out.append(pick_device(part.strip()))
    return out


@contextlib.contextmanager
def _stream(device: torch.device) -> Iterator[None]:
    if device.type == "cuda":
        with torch.cuda.device(device), torch.cuda.stream(torch.cuda.Stream(device)):
            yield
    else:
        yield


def run_workers(spec: Spec, study: optuna.Study, *, n_trials: int, devices: list[torch.device],
                trials_per_device: int, studies_dir: Path, timeout: float | None,
                progress: bool, log: Callable[[str], None] = print,
                artifact_dir: Path | None = None) -> WorkerReport:
    """Run ``trials_per_device`` concurrent trial loops per device in this process (threads,
    each on its own CUDA stream) and return the combined report.

    Ctrl-C stops every loop within one training step: the running trials end FAIL
    (``interrupted``) and are queued again, then ``KeyboardInterrupt`` is re-raised. A second
    Ctrl-C does not wait (for a teacher being trained, say): it fails the running trials
    from here and ends the process at once (exit status 130).

    Raises:
        TrialsKeepFailing: a loop saw too many failures in a row (the others finish their
            running trial first).
        KeyboardInterrupt: after Ctrl-C, with nothing left RUNNING.
    """
    workers = [Worker(spec, study, n_trials=n_trials, device=d, studies_dir=studies_dir,
                      timeout=timeout, progress=progress and len(devices) * trials_per_device == 1,
                      artifact_dir=artifact_dir, log=log)
               for d in devices for _ in range(trials_per_device)]
    shared = threading.Lock()
    for w in workers:
        w._lock = shared
    threads = [threading.Thread(target=_run_in_stream, args=(w, workers), daemon=True, name=f"worker-{i}")
               for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    try:
        _wait(workers)
    except KeyboardInterrupt:
        log("interrupted: stopping; the running trials end as failed and are queued to resume "
            "(Ctrl-C again to stop at once)")
        for w in workers:
            w.stop.set()
        try:
            _wait(workers)
        except KeyboardInterrupt:
            for w in workers:
                w.abandon()
            log("stopped at once; the running trials are marked failed and queued to resume")
            # Training threads are still inside torch: interpreter shutdown around them would
            # abort the process, so leave without it (the database is already consistent).
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(130)
        raise KeyboardInterrupt from None
    errors = [w.error for w in workers if w.error is not None]
    if errors:
        raise errors[0]
    total = WorkerReport()
    for w in workers:
        total.complete += w.report.complete
        total.pruned += w.report.pruned
        total.failed += w.report.failed
        total.trials += w.report.trials
    return total


def _wait(workers: list[Worker]) -> None:
    # Not Thread.join: a KeyboardInterrupt inside join() leaves the thread looking finished
    # while it still runs (CPython < 3.13).
    while not all(w.finished.is_set() for w in workers):
        for w in workers:
            w.finished.wait(timeout=0.2)


def _run_in_stream(worker: Worker, siblings: list[Worker]) -> None:
    try:
        with _stream(worker.device):
            worker.run()
    except BaseException as exc:  # noqa: BLE001 - handed to the main thread
        worker.error = exc
        for w in siblings:
            w.drain.set()
    finally:
        worker.finished.set()


def trial_config(study: optuna.Study, number: int | str) -> tuple[optuna.trial.FrozenTrial, RunConfig]:
    """Return (trial, its RunConfig) for ``number`` or ``"best"`` (highest val acc among
    complete trials; for multi-objective, the Pareto trial with the highest val acc).

    Raises:
        NotFound: no such trial, or no complete trial for ``best``.
    """
    if number == "best":
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        if not complete:
            raise NotFound(f"study {study.study_name!r} has no complete trial yet")
        pool = study.best_trials if len(study.directions) > 1 else complete
        trial = max(pool, key=lambda t: t.values[0])
    else:
        trials = study.get_trials(deepcopy=False)
        matches = [t for t in trials if t.number == int(number)]
        if not matches:
            raise NotFound(f"study {study.study_name!r} has no trial {number}")
        trial = matches[0]
    if "run_config" not in trial.user_attrs:
        raise NotFound(f"trial {trial.number} has no recorded RunConfig")
    return trial, RunConfig.model_validate(trial.user_attrs["run_config"])
