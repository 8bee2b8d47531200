"""Workers: pull trials from the study and train them until its cap, across processes and
machines sharing the storage; threads of one process share a device (one CUDA stream each).

``n_trials`` is a cap on the study's finished (complete or pruned) trials, across workers: a
worker stops when that many trials have finished, and while the running trials of other
workers would fill the cap it waits for them (one of them may still fail and need a
replacement) instead of starting more.

Failures:

- a trial that raises (NaN/inf loss, out of memory, an impossible configuration) ends FAIL
  with ``fail_reason`` in its user attrs; the worker goes on (until
  :data:`MAX_CONSECUTIVE_FAILURES` in a row, which stops it: something is wrong beyond one
  configuration);
- a trial whose worker died (its heartbeat stopped, or it never recorded one) is queued
  again and then failed by the next worker that looks (:mod:`bkdsearch.search.heartbeat`),
  up to ``BKDSEARCH_MAX_RETRY`` times; the retry resumes from its last epoch checkpoint;
- Ctrl-C: the running trials are queued again and end FAIL (``interrupted``), so the next
  ``bkdsearch run`` resumes them from their last epoch; nothing is left RUNNING;
- a full disk: a checkpoint or artifact that cannot be written fails the trial with
  ``no space left on DIR (needed ~X MB)`` (:class:`bkdsearch.core.recipe.errors.DiskFull`);
- a trial on several processes (``--gpus-per-trial``) whose rank was killed ends FAIL
  (``rank 1 of 2 was killed by SIGKILL``) and is queued again, like a trial whose worker died,
  to resume from its last epoch checkpoint; a rank that raised fails it like any error.

Every queueing again is keyed to the trial it replaces and happens before that trial is
failed: a crash in between loses no trial and a trial is never queued twice.

Checkpoints of running trials go to ``--artifact-dir``, else ``BKDSEARCH_ARTIFACT_DIR``,
else ``studies/<study>/artifacts`` (give every machine of a shared study the same shared
path so that a retry on another machine finds them). Those of finished trials are removed,
but the last one of the ``BKDSEARCH_KEEP_CHECKPOINTS`` (default 3) best complete trials.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState

from ..core.engine.trainer import Progress, Stopped
from ..errors import BadInput, Terminated, TrialsKeepFailing, interrupt_exit_code
from ..progress import clock, make_progress
from ..ranks import RankLost
from ..spec import Spec
from .carry_on import carry_on
from .heartbeat import HEARTBEAT_S, HeartbeatThread, duplicate_of, fail_stale_trials, max_retry, queue_again
from .objective import TrialObjective, _reason, keep_checkpoints, prune_checkpoints
from .optuna_seam import heartbeat_interval, storage_of, stored_trial, trial_id_of
from .study import FINISHED, format_value

MAX_CONSECUTIVE_FAILURES = 5


INTERRUPTED = "interrupted (Ctrl-C)"

ABANDON_WAIT_S = 5.0
"""How long a second Ctrl-C waits for a worker's ask under way (longer only in an outage:
then the stale-trial check ends that trial later)."""


@dataclass
class WorkerReport:
    """What one worker did."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    interrupted: int = 0
    """Trials stopped by Ctrl-C or SIGTERM and queued again: not failures of their configuration."""
    trials: list[int] = field(default_factory=list)


class Worker:
    """Trains trials of one study on one device until the study's cap is reached.

    Args:
        spec: the spec.
        study: the study (from :func:`open_study`).
        n_trials: cap on the study's finished trials (all workers together).
        device: where trials train.
        studies_dir: home of run folders, artifacts and cached teachers.
        slot: the devices of one trial when it runs on several processes (one each; CPU
            processes when they are all the CPU); default ``[device]``, one process.
        timeout: stop starting new trials after this many seconds.
        progress: show per-epoch progress.
        terminal: progress as a moving bar (True) or log lines (False); default: a bar when
            stdout is a terminal.
        artifact_dir: where epoch checkpoints of running trials go (default
            ``BKDSEARCH_ARTIFACT_DIR``, else ``studies_dir/<study>/artifacts``).
        log: where progress lines go.
    """

    def __init__(self, spec: Spec, study: optuna.Study, *, n_trials: int, device: torch.device,
                 studies_dir: Path, slot: list[torch.device] | None = None, timeout: float | None = None,
                 progress: bool = True, terminal: bool | None = None, artifact_dir: Path | None = None,
                 log: Callable[[str], None] = print) -> None:
        self.spec, self.study, self.n_trials, self.device = spec, study, n_trials, device
        artifacts = Path(artifact_dir) if artifact_dir else artifact_folder(study.study_name, None, studies_dir)[1]
        artifacts.mkdir(parents=True, exist_ok=True)
        self.max_retry = max_retry()
        self.keep_checkpoints = keep_checkpoints()
        self.stop = threading.Event()
        """Set to interrupt: the running trial ends FAIL (queued again) at its next step."""

        def displays(label: str) -> Progress:
            return make_progress(label, log, terminal=terminal)

        self._interrupt_lock = threading.Lock()
        self.objective = TrialObjective(spec, study, device=device, studies_dir=Path(studies_dir),
                                        artifacts=FileSystemArtifactStore(str(artifacts)), stop=self.stop,
                                        progress=displays if progress else None, log=log,
                                        slot=slot or [device], checkpoint_lock=self._interrupt_lock)
        self.deadline = time.monotonic() + timeout if timeout else None
        self.log = log
        self.drain = threading.Event()
        """Set to finish the running trial and start no other."""
        self.report = WorkerReport()
        self.finished = threading.Event()
        """Set when :meth:`run` has returned (in :func:`run_workers`)."""
        self.error: BaseException | None = None
        self.current: optuna.Trial | None = None
        self._lock = threading.Lock()
        self._consecutive_failures = 0
        self.last_failure = ""
        self._beat = float(heartbeat_interval(storage_of(study)) or HEARTBEAT_S)
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

    def _drop_surplus(self, trial: optuna.Trial, reason: str = "surplus: other workers had already filled the cap",
                      requeue: bool = True) -> None:
        """Fail ``trial`` before it trained; a queued one (enqueued, or a retry) is put back in
        the queue first (keyed to it: a crash in between loses nothing, doubles nothing)."""
        frozen = stored_trial(self.study, trial)
        if requeue and (frozen.system_attrs.get("fixed_params") or frozen.params):
            queue_again(self.study, frozen, retry=False)
        with carry_on("recording its fail_reason", trial.number, self.log):
            trial.set_user_attr("fail_reason", reason)
        self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)

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
            fail_stale_trials(self.study, limit=self.max_retry)
            with self._lock:
                c = self._counts()
                finished = sum(c.get(s, 0) for s in FINISHED)
                if finished >= self.n_trials:
                    break
                trial = None
                if finished + c.get(TrialState.RUNNING, 0) < self.n_trials:
                    trial = self.study.ask()
                    self.current = trial
                    # Stale-able from its first moment; the heartbeat thread beats again soon.
                    with carry_on("its first heartbeat", trial.number, self.log):
                        storage_of(self.study).record_heartbeat(trial_id_of(trial))
            if trial is None:
                if not waiting_logged:
                    self.log(f"waiting: {c.get(TrialState.RUNNING, 0)} running trial(s) may still fill the cap "
                             f"of {self.n_trials} (one may fail and need a replacement)")
                    waiting_logged = True
                self.stop.wait(self._poll_s)
                continue
            waiting_logged = False
            try:
                kept = duplicate_of(self.study, trial_id_of(trial))
                if kept is not None:  # two workers queued the same retry at once: trial `kept` trains it
                    self._drop_surplus(trial, f"surplus: a duplicate of trial {kept}, the same retry", requeue=False)
                    continue
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
            with HeartbeatThread(storage_of(self.study), trial_id_of(trial), self._beat, number=trial.number,
                                 log=self.log):
                values = self.objective(trial)
        except optuna.TrialPruned as exc:
            with carry_on("recording its pruned_reason", trial.number, self.log):
                trial.set_user_attr("pruned_reason", str(exc) or "median pruner")
            if self._tell(trial, TrialState.PRUNED):
                self.report.pruned += 1
                self.log(f"trial {trial.number} {str(exc) or 'pruned'}")
        except KeyboardInterrupt:
            self._interrupted(trial)
            raise
        except Stopped:  # Interrupted, or the trainer's own Stopped
            self._interrupted(trial)
        except RankLost as exc:
            self._retry_lost(trial, _reason(exc))
        except Exception as exc:  # noqa: BLE001 - a failing trial ends alone
            self._fail(trial, _reason(exc))
        else:
            if self._tell(trial, TrialState.COMPLETE, values):
                self.report.complete += 1
                with carry_on("the line on its outcome", trial.number, self.log):  # it is complete all the same
                    self.log(self._outcome(trial, values))
        self.report.trials.append(trial.number)
        self.current = None
        # A storage hiccup here must not end the worker: the next trial prunes and reports again.
        with carry_on("removing the checkpoints of finished trials", trial.number, self.log):
            prune_checkpoints(self.study, self.objective.artifacts, self.keep_checkpoints)
        with carry_on("the study's progress line", trial.number, self.log):
            self._line()

    def _outcome(self, trial: optuna.Trial, values: list[float]) -> str:
        """One line on a complete trial: its objectives, test accuracy and speed."""
        attrs = stored_trial(self.study, trial).user_attrs
        parts = [f"{name} {v:.2f}%" if name.endswith("acc") else f"{name} {format_value(v)}"
                 for name, v in zip(self.spec.search.objectives, values, strict=True)]
        if attrs.get("test_acc") is not None:
            parts.append(f"test_acc {attrs['test_acc']:.2f}%")
        return (f"trial {trial.number} complete: {', '.join(parts)} in {attrs.get('wall_time_s', 0):.0f} s "
                f"({attrs.get('images_per_s', 0):.0f} img/s)")

    def _tell(self, trial: optuna.Trial, state: TrialState, values: list[float] | None = None) -> bool:
        """Tell the study; False (and a log line) when another worker had already ended the
        trial (it lost its heartbeat for longer than the grace period)."""
        if stored_trial(self.study, trial).state.is_finished():
            self.log(f"trial {trial.number} had already been ended by another worker (its heartbeat "
                     "stopped for longer than the grace period); its retry carries on")
            return False
        self.study.tell(trial, values, state=state, skip_if_finished=True)
        return True

    def _fail(self, trial: optuna.Trial, reason: str) -> None:
        with carry_on("recording its fail_reason", trial.number, self.log):
            trial.set_user_attr("fail_reason", reason)
        self._tell(trial, TrialState.FAIL)
        self.report.failed += 1
        self.last_failure = f"trial {trial.number}: {reason}"
        self.log(f"trial {trial.number} failed: {reason}")

    def _retry_lost(self, trial: optuna.Trial, reason: str) -> None:
        """Fail ``trial`` (a rank of it died) after queueing it again to resume from its last
        checkpoint; like a lost worker, it counts toward ``BKDSEARCH_MAX_RETRY``."""
        frozen = copy.deepcopy(stored_trial(self.study, trial))
        if queue_again(self.study, frozen, lost=True, limit=self.max_retry):
            saved = frozen.user_attrs.get("checkpoint") or {}
            reason += f"; queued again to resume after epoch {saved.get('epoch', 0)}"
        else:
            reason += f"; retried {self.max_retry} times; giving up"
        self._fail(trial, reason)

    def _interrupted(self, trial: optuna.Trial) -> None:
        """Fail ``trial`` as interrupted and queue it again (same parameters, its last
        checkpoint): the next ``run`` resumes it."""
        with self._interrupt_lock:  # the worker's thread and abandon() may both get here
            self._interrupt(trial)

    def _interrupt(self, trial: optuna.Trial) -> None:
        frozen = copy.deepcopy(stored_trial(self.study, trial))
        if frozen.state.is_finished():
            return
        # Queued first (keyed to the trial, never twice), then failed: a crash in between
        # leaves a running trial whose retry exists, which the next worker only fails.
        with carry_on("queueing it again", trial.number, self.log):
            queue_again(self.study, frozen)  # an interruption does not count toward the retry limit
        saved = frozen.user_attrs.get("checkpoint") or {}
        with carry_on("recording its fail_reason", trial.number, self.log):
            trial.set_user_attr("fail_reason", f"{INTERRUPTED}; queued again, the next run resumes it "
                                               f"after epoch {saved.get('epoch', 0)}")
        self.current = None
        if not self._tell(trial, TrialState.FAIL):
            return  # another worker had failed it (its retry is queued once all the same)
        self.report.interrupted += 1
        self.log(f"trial {trial.number} {INTERRUPTED}; queued again to resume")

    def abandon(self) -> None:
        """From another thread, when this worker cannot stop in time: fail its running trial
        as interrupted (and queue it again).

        Waits for an interrupt this worker's thread has under way (it clears ``current``
        before it tells the study), and briefly for an ask under way (``current`` is set just
        after the trial exists): reading ``current`` in between would leave that trial
        RUNNING when the process ends."""
        asking = self._lock.acquire(timeout=ABANDON_WAIT_S)
        try:
            with self._interrupt_lock:
                trial = self.current
                if trial is not None:
                    with carry_on("ending it as interrupted", trial.number, self.log):
                        self._interrupt(trial)
        finally:
            if asking:
                self._lock.release()

    def _line(self) -> None:
        self.log(study_line(self.study, self.n_trials))


def artifact_folder(study_name: str, artifact_dir: str | Path | None = None,
                    studies_dir: str | Path = "studies") -> tuple[str, Path]:
    """Return (where the choice came from, folder) of the checkpoints of ``study_name``:
    ``artifact_dir/<study>`` (``--artifact-dir``), else ``$BKDSEARCH_ARTIFACT_DIR/<study>``,
    else ``studies_dir/<study>/artifacts``. Workers, preflight and the dashboard all use it."""
    if artifact_dir:
        return "--artifact-dir", Path(artifact_dir) / study_name
    env = os.environ.get("BKDSEARCH_ARTIFACT_DIR")
    if env:
        return "BKDSEARCH_ARTIFACT_DIR", Path(env) / study_name
    return "artifact folder", Path(studies_dir) / study_name / "artifacts"


def study_line(study: optuna.Study, cap: int) -> str:
    """Return the study's progress in one line of at most ~80 columns: finished of the cap,
    running, failed, the best validation accuracy so far and an ETA from finished trials'
    times (their mean, shared by the trials running at once)."""
    trials = study.get_trials(deepcopy=False)
    count = {state: sum(1 for t in trials if t.state == state) for state in TrialState}
    done = count[TrialState.COMPLETE] + count[TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    best = max(complete, key=lambda t: t.values[0], default=None)
    best_text = "-" if best is None else f"{best.values[0]:.2f}% (#{best.number})"
    times = [t.user_attrs["wall_time_s"] for t in trials if t.state in FINISHED and t.user_attrs.get("wall_time_s")]
    left = max(cap - done, 0)
    eta = "-" if not times or not left else clock(
        sum(times) / len(times) * left / max(count[TrialState.RUNNING], 1))
    # A trial stopped by Ctrl-C and queued again is no failure of its configuration.
    stopped = sum(1 for t in trials if t.state == TrialState.FAIL
                  and str(t.user_attrs.get("fail_reason", "")).startswith("interrupted"))
    return (f"study {study.study_name}: {done}/{cap} done ({count[TrialState.PRUNED]} pruned), "
            f"{count[TrialState.RUNNING]} running, {count[TrialState.FAIL] - stopped} failed"
            + (f", {stopped} interrupted" if stopped else "") + f"; best {best_text}; ETA {eta}")


@contextlib.contextmanager
def _stream(device: torch.device) -> Iterator[None]:
    if device.type == "cuda":
        with torch.cuda.device(device), torch.cuda.stream(torch.cuda.Stream(device)):
            yield
    else:
        yield


def device_slots(devices: list[torch.device], per_trial: int, batch_size: int) -> list[list[torch.device]]:
    """Return the device groups of ``--gpus-per-trial per_trial``: consecutive groups of
    ``per_trial`` GPUs, or ``per_trial`` CPU processes when ``devices`` is the CPU.

    Raises:
        BadInput: the GPUs do not split into such groups, or ``batch_size`` (the global
            batch) does not split evenly over the processes.
    """
    if per_trial == 1:
        return [[d] for d in devices]
    if batch_size % per_trial:
        raise BadInput(f"--gpus-per-trial {per_trial}: data.batch_size {batch_size} must be a multiple of it "
                       "(the global batch is shared evenly by the processes)")
    if all(d.type == "cpu" for d in devices):
        return [[torch.device("cpu")] * per_trial]
    if len(devices) % per_trial:
        raise BadInput(f"--gpus-per-trial {per_trial} does not divide the {len(devices)} devices of --devices "
                       f"({', '.join(str(d) for d in devices)})")
    return [devices[i:i + per_trial] for i in range(0, len(devices), per_trial)]


def run_workers(spec: Spec, study: optuna.Study, *, n_trials: int, slots: list[list[torch.device]],
                trials_per_device: int, studies_dir: Path, timeout: float | None,
                progress: bool, log: Callable[[str], None] = print,
                artifact_dir: Path | None = None) -> WorkerReport:
    """Run ``trials_per_device`` concurrent trial loops per slot (a device, or the devices of
    one trial on several processes: :func:`device_slots`) in this process (threads, each on
    its own CUDA stream) and return the combined report.

    Ctrl-C stops every loop within one training step: the running trials end FAIL
    (``interrupted``) and are queued again, then ``KeyboardInterrupt`` is re-raised. A second
    Ctrl-C does not wait (for a teacher being trained, say): it fails the running trials
    from here and ends the process at once (exit status 130).

    Raises:
        TrialsKeepFailing: a loop saw too many failures in a row (the others finish their
            running trial first).
        KeyboardInterrupt: after Ctrl-C, with nothing left RUNNING.
    """
    workers = [Worker(spec, study, n_trials=n_trials, device=slot[0], slot=slot, studies_dir=studies_dir,
                      timeout=timeout, progress=progress,
                      terminal=sys.stdout.isatty() and len(slots) * trials_per_device == 1,
                      artifact_dir=artifact_dir, log=log)
               for slot in slots for _ in range(trials_per_device)]
    shared = threading.Lock()
    for w in workers:
        w._lock = shared
    threads = [threading.Thread(target=_run_in_stream, args=(w, workers), daemon=True, name=f"worker-{i}")
               for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    try:
        _wait(workers)
    except KeyboardInterrupt as first:
        what = "terminated (SIGTERM)" if isinstance(first, Terminated) else "interrupted"
        log(f"{what}: stopping; the running trials end as failed and are queued to resume "
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
                with contextlib.suppress(OSError, ValueError):  # a closed or broken pipe: nothing to flush
                    stream.flush()
            os._exit(interrupt_exit_code(first))
        raise first from None
    errors = [w.error for w in workers if w.error is not None]
    if errors:
        raise errors[0]
    total = WorkerReport()
    for w in workers:
        total.complete += w.report.complete
        total.pruned += w.report.pruned
        total.failed += w.report.failed
        total.interrupted += w.report.interrupted
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
