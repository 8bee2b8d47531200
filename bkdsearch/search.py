"""The Optuna study: storage, sampler/pruner, objective, workers, heartbeats and retries.

A worker pulls trials from the study and trains them; several workers (threads of one
process sharing a device, processes, machines) share one study through its storage.
``n_trials`` is a cap on the study's finished (complete or pruned) trials, across workers.
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.storages import RDBStorage, RetryFailedTrialCallback
from optuna.trial import TrialState

from . import __version__
from .engine import NonFiniteLoss, Trainer, pick_device
from .flops import run_flops
from .spec import Choice, Distribution, FloatRange, IntRange, RunConfig, Spec, resolve
from .teacher import teacher_weights
from .urls import redact

OBJECTIVE_NAMES = {"val_acc": "val_acc", "train_gflops": "train_gflops", "student_mflops": "student_mflops"}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
HEARTBEAT_S = 10
GRACE_S = 30
MAX_RETRY = 3


class StorageError(Exception):
    """The storage URL is malformed or the database cannot be reached (bad input: exit 2)."""


class NotFound(LookupError):
    """No such study or trial in the storage (bad input: exit 2)."""


class Interrupted(Exception):
    """The worker was asked to stop (Ctrl-C): the running trial ends as FAIL."""


# --------------------------------------------------------------------------- storage & study


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """Return an RDB storage for ``url`` with heartbeats and retry of failed trials.

    SQLite gets a busy timeout and WAL journaling so several local workers do not hit
    "database is locked".

    Raises:
        StorageError: malformed URL, missing driver or unreachable server (password redacted).
    """
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"timeout": 60}}
    try:
        storage = RDBStorage(
            url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
            failed_trial_callback=RetryFailedTrialCallback(max_retry=MAX_RETRY),
        )
    except Exception as exc:  # sqlalchemy raises many types; all mean "this URL does not work"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageError(f"cannot open storage {redact(url)}: {redact(first)}") from None
    if url.startswith("sqlite"):
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

    The spec's ``search.enqueue`` configurations (e.g. the published one) are enqueued once,
    when the study is created.

    Raises:
        StorageError: the storage cannot be opened.
    """
    storage = make_storage(storage_url)
    name = study_name or spec.name
    directions = ["maximize"] + ["minimize"] * (len(spec.search.objectives) - 1)
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=directions,
                                    sampler=_sampler(spec), pruner=_pruner(spec), load_if_exists=True)
    except Exception as exc:
        raise StorageError(f"cannot create study {name!r} in {redact(storage_url)}: "
                           f"{redact(str(exc).splitlines()[0])}") from None
    if study.directions != [optuna.study.StudyDirection.MAXIMIZE if d == "maximize"
                            else optuna.study.StudyDirection.MINIMIZE for d in directions]:
        raise StorageError(f"study {name!r} exists with other objectives; use another --study name")
    if "bkdsearch:spec" not in study.system_attrs:
        study.set_metric_names([OBJECTIVE_NAMES[o] for o in spec.search.objectives])
        study.set_user_attr("spec", spec.model_dump(mode="json", by_alias=True))
        study._storage.set_study_system_attr(study._study_id, "bkdsearch:spec", spec.name)
        for params in spec.search.enqueue:
            study.enqueue_trial(params, skip_if_exists=True)
    return study


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
    """Records a heartbeat for a running trial every HEARTBEAT_S seconds in a thread."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):
                self.storage.record_heartbeat(self.trial_id)

    def __enter__(self) -> _Heartbeat:
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
    """

    def __init__(self, spec: Spec, study: optuna.Study, *, n_trials: int, device: torch.device,
                 studies_dir: Path, timeout: float | None = None, progress: bool = True,
                 artifact_dir: Path | None = None, log: Callable[[str], None] = print) -> None:
        self.spec, self.study, self.n_trials, self.device = spec, study, n_trials, device
        self.studies_dir = Path(studies_dir)
        self.run_root = self.studies_dir / study.study_name
        self.artifacts = FileSystemArtifactStore(str(artifact_dir or self.run_root / "artifacts"))
        (artifact_dir or self.run_root / "artifacts").mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + timeout if timeout else None
        self.progress = progress
        self.log = log
        self.stop = threading.Event()
        self.report = WorkerReport()
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- cap
    def _counts(self) -> dict[TrialState, int]:
        trials = self.study.get_trials(deepcopy=False)
        counts: dict[TrialState, int] = {}
        for t in trials:
            counts[t.state] = counts.get(t.state, 0) + 1
        return counts

    def _cap_reached(self) -> bool:
        c = self._counts()
        taken = sum(c.get(s, 0) for s in (*FINISHED, TrialState.RUNNING))
        return taken >= self.n_trials

    def _surplus(self, trial: optuna.Trial) -> bool:
        """True when lower-numbered live or finished trials already fill the cap (a race
        between workers asking at the same moment)."""
        ahead = [t for t in self.study.get_trials(deepcopy=False)
                 if t.number < trial.number and t.state in (*FINISHED, TrialState.RUNNING)]
        return len(ahead) >= self.n_trials

    # ---------------------------------------------------------------- loop
    def run(self) -> WorkerReport:
        """Pull and train trials until the cap, the timeout or a stop request."""
        while not self.stop.is_set():
            if self.deadline is not None and time.monotonic() > self.deadline:
                break
            optuna.storages.fail_stale_trials(self.study)
            with self._lock:
                if self._cap_reached():
                    break
                trial = self.study.ask()
            if self._surplus(trial):
                self.study.tell(trial, state=TrialState.FAIL)
                break
            self.run_trial(trial)
        return self.report

    def run_trial(self, trial: optuna.Trial) -> None:
        """Train one asked trial and tell the study how it ended (never raises, except
        :class:`KeyboardInterrupt` after telling)."""
        storage = self.study._storage
        try:
            with _Heartbeat(storage, trial._trial_id):
                values = self._objective(trial)
        except optuna.TrialPruned as exc:
            trial.set_user_attr("pruned_reason", str(exc) or "median pruner")
            self.study.tell(trial, state=TrialState.PRUNED)
            self.report.pruned += 1
        except KeyboardInterrupt:
            self._fail(trial, "interrupted (Ctrl-C)")
            raise
        except Interrupted:
            self._fail(trial, "interrupted (worker stopped)")
        except Exception as exc:  # noqa: BLE001 - a failing trial ends alone
            self._fail(trial, _reason(exc))
        else:
            self.study.tell(trial, values)
            self.report.complete += 1
        self.report.trials.append(trial.number)
        self._line()

    def _fail(self, trial: optuna.Trial, reason: str) -> None:
        with contextlib.suppress(Exception):
            trial.set_user_attr("fail_reason", reason)
        self.study.tell(trial, state=TrialState.FAIL)
        self.report.failed += 1
        self.log(f"trial {trial.number} failed: {reason}")

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
        report = run_flops(cfg)
        trial.set_user_attr("flops", report.as_dict())
        train_gflops = report.train_step / 1e9
        if self.spec.search.max_train_gflops is not None:
            trial.set_user_attr("constraint", [train_gflops - self.spec.search.max_train_gflops])
        run_dir = self.run_root / f"trial-{trial.number}"
        self._resume_from_failed(trial, run_dir)
        weights = teacher_weights(cfg, self.studies_dir / "teachers", progress=self.progress)

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            self._save_artifact(trial, run_dir, epoch)
            if self.stop.is_set():
                raise Interrupted()
            value = row.get("val_acc")
            if value is None:
                return
            trial.report(value, epoch)
            if len(self.study.directions) == 1 and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} with val acc {value:.2f}%")

        trainer = Trainer(cfg, run_dir, teacher_weights=weights, device=self.device,
                          on_epoch=on_epoch, progress=self.progress)
        result = trainer.fit(resume=True)
        if result.val_acc is None:
            raise ValueError("no validation split: set data.val_fraction > 0 for a search")
        trial.set_user_attr("test_acc", result.test_acc)
        trial.set_user_attr("wall_time_s", result.wall_time_s)
        trial.set_user_attr("images_per_s", result.images_per_s)
        objectives = {"val_acc": result.val_acc, "train_gflops": train_gflops,
                      "student_mflops": report.student / 1e6}
        return [objectives[o] for o in self.spec.search.objectives]

    def _save_artifact(self, trial: optuna.Trial, run_dir: Path, epoch: int) -> None:
        ckpt = run_dir / "last.pt"
        artifact_id = upload_artifact(artifact_store=self.artifacts, file_path=str(ckpt),
                                      study_or_trial=trial)
        trial.set_user_attr("checkpoint", {"artifact_id": artifact_id, "epoch": epoch})

    def _resume_from_failed(self, trial: optuna.Trial, run_dir: Path) -> None:
        """For a retry of a failed trial, fetch that trial's last checkpoint into run_dir."""
        original = RetryFailedTrialCallback.retried_trial_number(trial)
        if original is None:
            return
        # The latest checkpoint may sit on any trial of the retry chain.
        chain = RetryFailedTrialCallback.retry_history(trial)
        best: dict[str, Any] | None = None
        source = original
        for number in chain:
            attrs = self.study.trials[number].user_attrs.get("checkpoint")
            if attrs and (best is None or attrs["epoch"] > best["epoch"]):
                best, source = attrs, number
        if best is None:
            trial.set_user_attr("resumed_from", {"trial": original, "epoch": 0})
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        download_artifact(artifact_store=self.artifacts, file_path=str(run_dir / "last.pt"),
                          artifact_id=best["artifact_id"])
        trial.set_user_attr("resumed_from", {"trial": source, "epoch": best["epoch"]})
        self.log(f"trial {trial.number} retries trial {source}, resuming after epoch {best['epoch']}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, NonFiniteLoss):
        return f"non-finite loss: {exc}"
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "CUDA out of memory"
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
                progress: bool, log: Callable[[str], None] = print) -> WorkerReport:
    """Run ``trials_per_device`` concurrent trial loops per device in this process (each on
    its own CUDA stream) and return the combined report. Ctrl-C fails the running trials
    cleanly and re-raises ``KeyboardInterrupt``."""
    workers = [Worker(spec, study, n_trials=n_trials, device=d, studies_dir=studies_dir,
                      timeout=timeout, progress=progress and len(devices) * trials_per_device == 1, log=log)
               for d in devices for _ in range(trials_per_device)]
    shared = threading.Lock()
    for w in workers:
        w._lock = shared
    if len(workers) == 1:
        return workers[0].run()
    threads = [threading.Thread(target=_run_in_stream, args=(w,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=0.2)
    except KeyboardInterrupt:
        for w in workers:
            w.stop.set()
        for t in threads:
            t.join()
        raise
    total = WorkerReport()
    for w in workers:
        total.complete += w.report.complete
        total.pruned += w.report.pruned
        total.failed += w.report.failed
        total.trials += w.report.trials
    return total


def _run_in_stream(worker: Worker) -> None:
    with _stream(worker.device):
        worker.run()


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

