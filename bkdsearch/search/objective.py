"""One trial: resolve its RunConfig, count its FLOPs, get the teacher, train, return the
objectives; epoch checkpoints go to the artifact store, and the retry of a dead trial
resumes from the last one."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from .. import __version__
from ..core.engine.trainer import Progress, Stopped, Trainer
from ..core.engine.weights import first_line, load_safely
from ..core.recipe.errors import DiskFull
from ..errors import BadInput, NonFiniteLoss, SpecError
from ..flops import run_flops
from ..ranks import RankFailed, RankLost, train_on_ranks
from ..spec import RunConfig, Spec, resolve
from ..spec.fixed import config_digest, fixed_configuration
from ..teacher import needs_training, teacher_test_accuracy, teacher_weights
from ..urls import redact
from .carry_on import carry_on
from .optuna_seam import artifact_file, stored_trial
from .study import TrialSuggest, format_value

TRAIN_GFLOPS_CONSTRAINT = "train_gflops"
"""The trial's constraint (``Trial.set_constraint``) under ``search.max_train_gflops``: its
training GFLOPs per step minus that cap."""


class Interrupted(Stopped):
    """The worker was asked to stop (Ctrl-C) while waiting for the teacher or at an epoch's
    end; within an epoch the trainer raises the base class, :class:`bkdsearch.engine.Stopped`.
    Either ends the running trial FAIL (interrupted) and queues it again."""


class TrialObjective:
    """Trains the trials of one worker: ``objective(trial)`` returns the trial's objectives.

    Args:
        spec: the spec. study: its study. device: where trials train.
        studies_dir: home of run folders and cached teachers.
        artifacts: where epoch checkpoints go (what a retry resumes from).
        stop: set to interrupt the running trial at its next step.
        progress: makes a progress display for a trial (None: silent).
        log: where progress lines go.
        slot: the devices of one trial: one process each (:func:`bkdsearch.ranks.train_on_ranks`)
            when more than one; default ``[device]``, trained in this process.
        checkpoint_lock: held while an epoch's checkpoint replaces the previous one; whoever
            ends the trial from outside (an interrupt) holds it too, so the checkpoint its
            retry is queued with is never replaced or deleted afterwards.
    """

    def __init__(self, spec: Spec, study: optuna.Study, *, device: torch.device, studies_dir: Path,
                 artifacts: FileSystemArtifactStore, stop: threading.Event,
                 progress: Callable[[str], Progress] | None, log: Callable[[str], None],
                 slot: list[torch.device] | None = None, checkpoint_lock: threading.Lock | None = None) -> None:
        self.spec, self.study, self.device = spec, study, device
        self.checkpoint_lock = checkpoint_lock or threading.Lock()
        self.slot = slot or [device]
        self.studies_dir = Path(studies_dir)
        self.run_root = self.studies_dir / study.study_name
        self.artifacts, self.stop, self.progress, self.log = artifacts, stop, progress, log
        self.config_digest = config_digest(fixed_configuration(spec))

    def __call__(self, trial: optuna.Trial) -> list[float]:
        """Train ``trial``'s configuration and return its objective values.

        Raises:
            optuna.TrialPruned: the pruner stopped it. Interrupted, Stopped: asked to stop.
            Whatever the run raises (it fails the trial alone).
        """
        confirm_of = trial.user_attrs.get("confirm_of")
        if confirm_of is None:  # a search trial: the search's fidelity, the spec's seed
            cfg = resolve(self.spec, TrialSuggest(trial), fidelity=True)
        else:  # a confirmation: the full recipe with its own fresh seed
            seed = {"seed": int(trial.user_attrs["seed"])}
            cfg = resolve(self.spec, TrialSuggest(trial), overrides=seed)
        trial.set_user_attr("seed", cfg.seed)
        if self.device.type == "cpu" or len(self.slot) > 1:
            # Ranks find their GPU by local rank among the slot's (CUDA_VISIBLE_DEVICES).
            where = "cpu" if self.device.type == "cpu" else "cuda"
            cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"device": where})})
        trial.set_user_attr("run_config", cfg.model_dump(mode="json"))
        trial.set_user_attr("config_digest", self.config_digest)  # which configuration of a mixed study
        trial.set_user_attr("versions", {"bkdsearch": __version__, "torch": torch.__version__,
                                         "optuna": optuna.__version__})
        trial.set_user_attr("device", _device_name(self.device))
        trial.set_user_attr("worker", f"{socket.gethostname()} pid {os.getpid()} {self._where()}")
        params = ", ".join(f"{k}={format_value(v)}" for k, v in trial.params.items())
        self.log(f"trial {trial.number} started on {self._where()}: {params or 'no searched parameters'}")
        report = run_flops(cfg)
        trial.set_user_attr("flops", report.as_dict())
        train_gflops = report.train_step / 1e9
        # Flat numbers the dashboard's trial table can sort on.
        trial.set_user_attr("student_mflops", report.student / 1e6)
        trial.set_user_attr("train_gflops", train_gflops)
        trial.set_user_attr("params_m", report.student_params / 1e6)
        if self.spec.search.max_train_gflops is not None:  # feasible when <= 0; the samplers read it
            trial.set_constraint(TRAIN_GFLOPS_CONSTRAINT, train_gflops - self.spec.search.max_train_gflops)
        run_dir = self.run_root / f"trial-{trial.number}"
        _clear_run_dir(run_dir)  # leftovers of an older study of the same name never resume
        saved = self._resume_from_failed(trial, run_dir, cfg)
        started = time.monotonic()
        # The teacher of the full recipe's data: a search trial at a lower fidelity distils
        # from the same teacher as the confirmations of its configuration.
        weights = self._teacher(cfg.model_copy(update={"data": cfg.data.model_copy(
            update={"train_fraction": self.spec.data.train_fraction})}))
        # Training (or waiting for) the teacher is not the trial's own time; set on every trial,
        # so a retry does not keep the value it inherits from the trial it resumes.
        trial.set_user_attr("teacher_s", round(time.monotonic() - started, 1))
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
            if confirm_of is not None:
                return  # confirmations run to the end, and their curves must not feed the pruner
            trial.report(value, epoch)
            # Pruning after the last epoch would only throw a finished result away.
            if epoch < cfg.train.epochs and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} with val acc {value:.2f}%")

        # should_stop: Ctrl-C stops the trial within one step, not one epoch.
        display = self.progress(f"trial {trial.number}") if self.progress else None
        if len(self.slot) > 1:
            gpus = [d.index for d in self.slot] if self.device.type == "cuda" else None
            trial.set_user_attr("processes", len(self.slot))
            result = train_on_ranks(cfg, run_dir, world_size=len(self.slot), teacher_weights=weights, gpus=gpus,
                                    on_epoch=on_epoch, should_stop=self.stop.is_set, progress=display)
        else:
            result = Trainer(cfg, run_dir, teacher_weights=weights, device=self.device, on_epoch=on_epoch,
                             should_stop=self.stop.is_set, progress=display).fit(resume=True)
        if result.val_acc is None:
            raise ValueError("no validation split: set data.val_fraction > 0 for a search")
        trial.set_user_attr("test_acc", result.test_acc)
        trial.set_user_attr("loss_terms", loss_terms(result.history))
        trial.set_user_attr("wall_time_s", result.wall_time_s)
        trial.set_user_attr("images_per_s", result.images_per_s)
        objectives = {"val_acc": result.val_acc, "train_gflops": train_gflops,
                      "student_mflops": report.student / 1e6}
        return [objectives[o] for o in self.spec.search.objectives]

    def _where(self) -> str:
        if len(self.slot) == 1:
            return str(self.device)
        if self.device.type == "cpu":
            return f"{len(self.slot)} CPU processes"
        return f"{len(self.slot)} GPUs ({', '.join(str(d.index) for d in self.slot)})"

    def _teacher(self, cfg: RunConfig) -> str | None:
        """The teacher's weights. Only training a missing teacher takes the machine's teacher
        lock (one worker trains it while the others wait, they would write the same cache
        files); a given checkpoint or a cached teacher never waits on it."""
        cache = self.studies_dir / "teachers"
        try:
            if not needs_training(cfg, cache):
                path = teacher_weights(cfg, cache, train_if_missing=False)
            else:
                with self._teacher_lock(cache):
                    path = teacher_weights(cfg, cache, progress=self.progress is not None, log=self.log,
                                           should_stop=self.stop.is_set)
        except Stopped:
            # Ctrl-C during the teacher's training: the trial is queued again; the teacher's
            # last.pt stays, and the next run resumes its training.
            raise Interrupted() from None
        if path is not None and "teacher_test_acc" not in self.study.user_attrs:
            self._record_teacher_accuracy(cfg, path)
        return path

    @contextlib.contextmanager
    def _teacher_lock(self, cache: Path) -> Iterator[None]:
        """Hold the teacher-training lock of ``cache``, waiting in 1 s slices so that Ctrl-C
        still stops the trial while another process trains the teacher."""
        from filelock import FileLock, Timeout

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
            yield
        finally:
            lock.release()

    def _record_teacher_accuracy(self, cfg: RunConfig, path: str) -> None:
        """Store the teacher's test accuracy in the study (once): what the student is measured
        against in status, report and the run summary. A number to show, never a reason to
        fail the trial: a failure is logged and the trial goes on."""
        try:
            accuracy = teacher_test_accuracy(cfg, path, str(self.device))
        except Exception as exc:  # any failure only costs the displayed figure
            self.log(f"teacher accuracy not recorded: {type(exc).__name__}: {exc}")
            return
        self.study.set_user_attr("teacher_test_acc", accuracy)

    def _save_artifact(self, trial: optuna.Trial, run_dir: Path, epoch: int, previous: str | None) -> str:
        """Store the checkpoint of ``epoch`` in the artifact store, record it in the trial's
        ``checkpoint`` user attr, remove the previous one; return its artifact id.

        Raises:
            DiskFull: the artifact could not be written (its partial file is removed).
            Interrupted: the trial was already ended from outside (an interrupt queued its
                retry with the previous checkpoint, which therefore stays as it is).
        """
        with self.checkpoint_lock:
            if stored_trial(self.study, trial).state.is_finished():
                raise Interrupted()
            return self._replace_artifact(trial, run_dir, epoch, previous)

    def _replace_artifact(self, trial: optuna.Trial, run_dir: Path, epoch: int, previous: str | None) -> str:
        artifact_id = uuid.uuid4().hex
        source = run_dir / "last.pt"
        try:
            with source.open("rb") as f:
                self.artifacts.write(artifact_id, f)
        except OSError as exc:
            with contextlib.suppress(ArtifactNotFound, OSError):  # the partial file: never written, or gone
                self.artifacts.remove(artifact_id)
            size = None
            with contextlib.suppress(OSError):
                size = source.stat().st_size
            raise DiskFull.writing(artifact_file(self.artifacts, artifact_id), exc,
                                   size) from None
        trial.set_user_attr("checkpoint", {"artifact_id": artifact_id, "epoch": epoch})
        if previous:  # a leftover costs disk space only: the trial goes on
            with carry_on(f"removing the checkpoint {previous} of the previous epoch", trial.number, self.log):
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
        frozen = stored_trial(self.study, trial)
        chain = RetryHeartbeatStaleTrialCallback.retry_history(frozen)
        if not chain:
            return None
        source = chain[-1]
        saved = frozen.user_attrs.get("checkpoint")
        epoch, note, history = 0, None, []
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
                    history = list(state.get("history") or [])
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
        self._copy_curve(trial, history, epoch)
        self.log(f"trial {trial.number} retries trial {source}, resuming after epoch {epoch}")
        return saved["artifact_id"] if saved else None

    def _copy_curve(self, trial: optuna.Trial, history: list[dict[str, float]], epoch: int) -> None:
        """Report the epochs up to ``epoch`` of the checkpoint a retry resumes (its
        ``history``) as the retry's intermediate values: its learning curve is whole, and the
        pruner sees it. A retry that starts over has none but its own."""
        if len(self.study.directions) > 1:
            return  # Optuna records intermediate values of single-objective studies only
        if trial.user_attrs.get("confirm_of") is not None:
            return  # confirmations never feed the pruner
        for row in history:
            if row.get("val_acc") is not None and 1 <= int(row.get("epoch", 0)) <= epoch:
                trial.report(float(row["val_acc"]), int(row["epoch"]))


KEEP_CHECKPOINTS = 3
"""Default of how many complete trials keep their last checkpoint in the artifact store
(``BKDSEARCH_KEEP_CHECKPOINTS``): the best ones by the first objective."""


def keep_checkpoints() -> int:
    """``BKDSEARCH_KEEP_CHECKPOINTS`` (0 to 10000), else :data:`KEEP_CHECKPOINTS`.

    Raises:
        BadInput: not a whole number in that range.
    """
    raw = os.environ.get("BKDSEARCH_KEEP_CHECKPOINTS", "").strip()
    if not raw:
        return KEEP_CHECKPOINTS
    if not (raw.isascii() and raw.isdigit()) or int(raw) > 10000:  # "²".isdigit() is true
        raise BadInput(f"BKDSEARCH_KEEP_CHECKPOINTS={raw!r}: expected a whole number from 0 to 10000")
    return int(raw)


def prune_checkpoints(study: optuna.Study, artifacts: FileSystemArtifactStore, keep: int) -> list[str]:
    """Remove the checkpoints of finished trials from the artifact store, but the last one
    of the ``keep`` best complete trials (by the first objective, maximised) and any that a
    running or queued trial (a retry) still resumes from; return the artifact ids removed.

    A finished trial is never queued again after it finished (a retry is queued before its
    trial fails), so once no live trial names a checkpoint none ever will.
    """
    trials = study.get_trials(deepcopy=False)
    live = (TrialState.RUNNING, TrialState.WAITING)

    def artifact(t: optuna.trial.FrozenTrial) -> str | None:
        saved = t.user_attrs.get("checkpoint")
        return saved.get("artifact_id") if isinstance(saved, dict) else None

    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.values),
                      key=lambda t: t.values[0], reverse=True)
    kept = {artifact(t) for t in complete[:keep]} | {artifact(t) for t in trials if t.state in live}
    removed = []
    for t in trials:
        name = artifact(t)
        if t.state.is_finished() and name and name not in kept and name not in removed:
            with contextlib.suppress(ArtifactNotFound):  # removed before (by another worker)
                artifacts.remove(name)
                removed.append(name)
    return removed


def loss_terms(history: list[dict[str, float]]) -> dict[str, list[float]]:
    """Return the per-epoch means of each loss term in a run's metric rows (``loss_<term>``)."""
    terms: dict[str, list[float]] = {}
    for row in history:
        for key, value in row.items():
            if key.startswith("loss_"):
                terms.setdefault(key.removeprefix("loss_"), []).append(value)
    return terms


def _clear_run_dir(run_dir: Path) -> None:
    for name in ("last.pt", "metrics.jsonl", "student.pt"):
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()


def _reason(exc: BaseException) -> str:
    """Why a trial failed, in one line, for its ``fail_reason`` (URL passwords redacted)."""
    return redact(_describe(exc))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DiskFull | RankLost | RankFailed):  # they name their cause and rank
        return str(exc)
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
