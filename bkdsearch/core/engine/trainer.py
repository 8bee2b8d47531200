"""One training run: data, models, method, loop, evaluation, checkpoints and resume.

Everything a run needs lives in its own objects and is passed in (device, run folder,
callbacks): several runs may train at once in one process without sharing state. A run may
also be one of several processes (:mod:`bkdsearch.core.recipe.distributed`): each trains its shard
of every global batch, and rank 0 alone writes files and reports.

``cfg`` is a :class:`bkdsearch.spec.RunConfig` or anything with the same attributes (an
exported script's ``Config``): this module reads it and never imports the spec side.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ..recipe.data import DataBundle
from ..recipe.distributed import SINGLE, Ranks, all_sum, data_parallel, rank_device
from ..recipe.errors import CheckpointError, DiskFull, NonFiniteLoss, WeightsError
from ..recipe.loop import CHECKPOINT_KEYS, evaluate, make_method, train_step
from ..recipe.methods import Method, RunConfig
from ..recipe.optim import lr_at
from .cuda_graph import GraphedStep, make_optimizer
from .data import build_data
from .models import model_entry
from .processes import any_rank
from .weights import check_fits, load_safely, read_state_dict

__all__ = ["EpochCallback", "Progress", "RunResult", "Stopped", "Trainer", "build_method_for", "evaluate",
           "pick_device", "seeded"]

EpochCallback = Callable[[int, dict[str, float]], None]
"""``callback(epoch, metrics)`` after each epoch (1-based); may raise to stop the run."""


class Progress(Protocol):
    """What a run tells a progress display (bkdsearch's rich bar, log lines); each call
    returns nothing and must be cheap: :meth:`step` comes after every training step."""

    def begin(self, epochs: int, start_epoch: int, steps_per_epoch: int) -> None:
        """The run trains epochs ``start_epoch + 1 .. epochs`` of ``steps_per_epoch`` steps."""

    def step(self) -> None:
        """One training step was launched."""

    def end_epoch(self, row: Mapping[str, float]) -> None:
        """An epoch ended with the metrics ``row`` (epoch, loss, val_acc, images_per_s...)."""

    def finish(self) -> None:
        """The run ended (finished, stopped or failed)."""


# Model initialisation draws from torch's global generator: one run at a time seeds it.
_INIT_LOCK = threading.Lock()


class Stopped(Exception):
    """The run's ``should_stop`` hook asked it to stop; the last epoch checkpoint stays."""


@dataclass
class RunResult:
    """What a finished run reports."""

    val_acc: float | None
    test_acc: float | None
    epochs: int
    history: list[dict[str, float]] = field(default_factory=list)
    images_per_s: float = 0.0
    wall_time_s: float = 0.0
    resumed_from_epoch: int = 0
    student_path: str | None = None


def pick_device(name: str = "auto") -> torch.device:
    """Return the device for ``name``: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``
    or a bare GPU index."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.isdigit():
        return torch.device(f"cuda:{name}")
    return torch.device(name)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Draw from torch's global generator seeded with ``seed``, restoring it afterwards; one
    run at a time, so concurrent runs in one process stay reproducible."""
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_method_for(cfg: RunConfig, num_classes: int, input_size: tuple[int, int, int],
                     teacher_weights: str | None, ranks: Ranks = SINGLE) -> Method:
    """Return the method module of ``cfg`` (:func:`bkdsearch.core.recipe.loop.make_method`
    with the registry's builders), student and connectors initialised from ``cfg.seed``.

    Raises:
        ValueError: a distilling method without teacher weights.
        WeightsError: a weights file that cannot be read or does not fit.
    """
    distils = cfg.teacher is not None and cfg.method != "ce"
    teacher = model_entry(cfg.teacher.arch).builder if distils else None
    # The engine's wording for a bad weights file (what the unpickler refused, which keys do
    # not fit) before the recipe loads it; shapes are checked on the meta device, for free.
    files = [(cfg.student.arch, cfg.student.checkpoint), (cfg.teacher.arch if distils else "", teacher_weights)]
    for arch, path in files:
        if arch and path:
            state = read_state_dict(path)
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                check_fits(model_entry(arch).builder(num_classes), state)
    with seeded(cfg.seed):
        return make_method(cfg, model_entry(cfg.student.arch).builder, teacher, num_classes, input_size,
                           teacher_weights, ranks)


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` through ``path.tmp`` (a crash never leaves half a file).

    Raises:
        DiskFull: the write failed (no space left, or the OS error it names); the temporary
            file is removed and ``path`` is left as it was.
    """

    def tensors(value: Any) -> Iterator[torch.Tensor]:  # what the file's size is mostly made of
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, Mapping | list | tuple):
            for item in value.values() if isinstance(value, Mapping) else value:
                yield from tensors(item)

    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        # torch's writer hides the errno: "file write failed", "unexpected pos" (a full disk).
        if isinstance(exc, RuntimeError) and not any(
                s in str(exc) for s in ("file write failed", "unexpected pos", "PytorchStreamWriter failed")):
            raise
        raise DiskFull.writing(path, exc, sum(t.numel() * t.element_size() for t in tensors(obj))) from None


def _append_row(path: Path, row: Mapping[str, Any]) -> None:
    """Append ``row`` to the JSON-lines file ``path``.

    Raises:
        DiskFull: it could not be written.
    """
    line = json.dumps(dict(row)) + "\n"
    try:
        with path.open("a") as f:
            f.write(line)
    except OSError as exc:
        raise DiskFull.writing(path, exc, len(line)) from None


class Trainer:
    """Trains one :class:`RunConfig` on one device, checkpointing each epoch into ``run_dir``.

    Args:
        cfg: the run.
        run_dir: folder for ``last.pt``, ``metrics.jsonl`` and ``student.pt``.
        teacher_weights: path of the teacher's checkpoint (for distillation methods).
        device: where to train.
        data: pre-built data (else built from ``cfg.data`` on ``device``).
        on_epoch: called after every epoch with the epoch's metrics.
        progress: told of every step and epoch (see :class:`Progress`); None: silent.
        should_stop: asked before every training step (and so between epochs); when it
            returns True, :meth:`fit` raises :class:`Stopped`.
        ranks: this process's place among the run's processes (their process group joined
            already, :func:`~bkdsearch.core.recipe.distributed.start_group`); callbacks, progress and
            files are rank 0's alone, and every rank stops when one is asked to.
    """

    def __init__(self, cfg: RunConfig, run_dir: str | Path, *, teacher_weights: str | None = None,
                 device: torch.device | str | None = None, data: DataBundle | None = None,
                 on_epoch: EpochCallback | None = None, progress: Progress | None = None,
                 should_stop: Callable[[], bool] | None = None, ranks: Ranks = SINGLE) -> None:
        if cfg.data.batch_size % ranks.world_size:
            raise ValueError(f"batch size {cfg.data.batch_size} cannot be shared by {ranks.world_size} "
                             "processes: make it a multiple of the process count")
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ranks = ranks
        if device is not None:
            self.device = torch.device(device)
        else:
            self.device = rank_device(ranks, cfg.runtime.device) if ranks.active else pick_device(cfg.runtime.device)
        self.on_epoch = on_epoch if ranks.is_main else None
        self.should_stop = should_stop
        self.progress = progress if ranks.is_main else None
        self.data = data or build_data(
            cfg.data.dataset, root=cfg.data.root, download=cfg.data.download,
            val_fraction=cfg.data.val_fraction, batch_size=cfg.data.batch_size,
            eval_batch_size=cfg.data.eval_batch_size, seed=cfg.seed, device=self.device,
            augment=cfg.data.augment, num_workers=cfg.data.num_workers,
            synthetic=cfg.data.synthetic, data_seed=cfg.data.split_seed,
            train_fraction=cfg.data.train_fraction, ranks=ranks,
            image_size=cfg.data.image_size or 224, decode=cfg.data.decode,
        )
        self.method: Method = build_method_for(cfg, self.data.num_classes, self.data.input_size,
                                               teacher_weights, ranks).to(self.device)
        cuda = self.device.type == "cuda"
        self.autocast = cuda and cfg.runtime.amp in ("auto", "bf16")
        if cuda and cfg.runtime.channels_last in ("auto", "on"):
            self.method.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        params = [p for p in self.method.parameters() if p.requires_grad]
        # DDP's gradient hooks run outside a captured graph: several ranks train eagerly.
        self.use_graph = (cuda and cfg.runtime.cuda_graph in ("auto", "on") and not cfg.runtime.compile
                          and not ranks.active)
        # Without SyncBN each rank's running statistics are its own; DDP gives every rank rank 0's.
        self.model = data_parallel(self.method, self.device, broadcast_buffers=not cfg.runtime.sync_bn)
        self.optimizer = make_optimizer(cfg.train, params, capturable=self.use_graph)
        self.channels_last = cuda and cfg.runtime.channels_last in ("auto", "on")
        self._graph: GraphedStep | None = None
        self.step_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = self._eager_step
        self.term_names: list[str] = []
        if cfg.runtime.compile:
            self.step_fn = torch.compile(self._eager_step)

    # ------------------------------------------------------------------ steps
    def _eager_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # The recipe's step. Autocast's weight-cast cache cannot live across CUDA graph
        # replays: the recipe's autocast inherits this one's cache setting.
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast,
                            cache_enabled=not self.use_graph):
            losses, self.term_names = train_step(self.model, self.optimizer, x, y, self.autocast)
        return losses

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)  # a device tensor: captured graphs read it each replay
            else:
                group["lr"] = lr

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Run one optimisation step on the batch and return ``[loss, *terms]`` (a device vector;
        the terms are named by ``term_names``).

        On CUDA the first call captures the whole step (forward, backward, optimizer) into
        a CUDA graph that later calls replay; batches are copied into its static buffers.
        """
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.use_graph:
            return self.step_fn(x, y)
        if self._graph is None:
            self._graph = GraphedStep(self._eager_step, self.method, self.optimizer, x, y)
        return self._graph(x, y)

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        """Return the path of the last epoch's checkpoint."""
        return self.run_dir / "last.pt"

    def save_checkpoint(self, epoch: int, history: list[dict[str, float]]) -> None:
        """Write the state after ``epoch`` atomically (a crash never leaves half a file).

        Raises:
            DiskFull: it could not be written (no ``last.pt.tmp`` is left behind).
        """
        _atomic_save({"epoch": epoch, "method": self.method.trainable_state(),
                      "optimizer": self.optimizer.state_dict(), "history": history,
                      "config_digest": self.cfg.digest()}, self.checkpoint_path)

    def load_checkpoint(self) -> tuple[int, list[dict[str, float]]]:
        """Restore the last checkpoint if there is one; return (epochs done, history).

        The checkpoint may come from another runtime (CUDA graphs or not, another device).

        Raises:
            CheckpointError: the file cannot be read, is not a run checkpoint, or belongs to
                another run configuration.
        """
        path = self.checkpoint_path
        if not path.exists():
            return 0, []
        fix = "delete it, or pass --no-resume to `bkdsearch train`, to start from epoch 0"
        try:
            state = load_safely(path, map_location=self.device)
        except WeightsError as exc:
            raise CheckpointError(f"cannot resume: {exc}; {fix}") from None
        if not isinstance(state, Mapping) or any(k not in state for k in CHECKPOINT_KEYS):
            raise CheckpointError(f"cannot resume from {path}: not a bkdsearch run checkpoint; {fix}")
        if state["config_digest"] != self.cfg.digest():
            raise CheckpointError(f"cannot resume from {path}: it belongs to a different run configuration; {fix}")
        self.method.load_trainable_state(state["method"])
        self.optimizer.load_state_dict(self._fit_optimizer_state(state["optimizer"]))
        if self.use_graph:  # keep the learning rate a device tensor the graph can read
            for group in self.optimizer.param_groups:
                group["lr"] = torch.tensor(group["lr"], dtype=torch.float32, device=self.device)
        return int(state["epoch"]), list(state["history"])

    def _fit_optimizer_state(self, saved: dict[str, Any]) -> dict[str, Any]:
        """Return the optimizer state dict ``saved`` (maybe written under another runtime)
        made to fit this run's optimizer: a plain-number learning rate (a graphed run saves a
        device tensor, which eager SGD cannot use), this run's AdamW ``capturable`` flag
        (load_state_dict would otherwise restore the saver's), and, when not capturable,
        AdamW's step counts on the CPU where eager AdamW keeps them."""
        groups = [{**g, "lr": float(g["lr"])} for g in saved["param_groups"]]
        for group in groups:
            if "capturable" in group:
                group["capturable"] = self.use_graph
        state = saved["state"]
        if not self.use_graph:
            state = {k: {n: v.cpu() if n == "step" and isinstance(v, torch.Tensor) else v
                         for n, v in st.items()} for k, st in state.items()}
        return {**saved, "param_groups": groups, "state": state}

    # ------------------------------------------------------------------ loop
    def _check_stop(self) -> None:
        asked = self.should_stop is not None and self.should_stop()
        if self.ranks.active:
            asked = any_rank(asked, self.device)
        if asked:
            raise Stopped(f"{self.cfg.name}: asked to stop")

    def _end_epoch(self, epoch: int, row: dict[str, float], history: list[dict[str, float]],
                   metrics_file: Path) -> None:
        """Rank 0 records the epoch (metrics row, checkpoint, progress, ``on_epoch``); every
        rank then raises what rank 0 raised (its exception there, :class:`Stopped` elsewhere),
        so that all stop at the same epoch."""
        failure: BaseException | None = None
        if self.ranks.is_main:
            try:
                self.save_checkpoint(epoch, history)  # first: the checkpoint's history is the record
                _append_row(metrics_file, row)
                if self.progress is not None:
                    self.progress.end_epoch(row)
                if self.on_epoch is not None:
                    self.on_epoch(epoch, row)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after telling the ranks
                failure = exc
        if self.ranks.active and any_rank(failure is not None, self.device) and failure is None:
            raise Stopped(f"{self.cfg.name}: rank 0 stopped the run after epoch {epoch}")
        if failure is not None:
            raise failure

    def fit(self, resume: bool = True, stop_after: int | None = None) -> RunResult:
        """Train (resuming from the last checkpoint when ``resume``), evaluating validation
        accuracy every epoch and test accuracy at the end. ``stop_after`` ends early after
        that many epochs in total (as an interruption would).

        Raises:
            NonFiniteLoss: the loss became NaN/inf.
            Stopped: ``should_stop`` returned True (the last finished epoch is checkpointed).
            CheckpointError: ``resume`` and an unreadable ``last.pt``, or one of another run
                configuration.
            Whatever ``on_epoch`` raises (e.g. a pruning signal).
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        start, history = self.load_checkpoint() if resume else (0, [])
        recipe = self.cfg.train
        train_loader = self.data.train
        steps = len(train_loader)
        metrics_file = self.run_dir / "metrics.jsonl"
        t_start = time.perf_counter()
        images = 0
        train_time = 0.0
        last_epoch = recipe.epochs if stop_after is None else min(stop_after, recipe.epochs)
        if self.progress is not None:
            self.progress.begin(last_epoch, start, steps)
        try:
            for epoch in range(start, last_epoch):
                self._check_stop()
                self.method.train()
                self.method.start_epoch(epoch + 1)
                train_loader.set_epoch(epoch)
                loss_sum: torch.Tensor | float = 0.0
                t0 = time.perf_counter()
                for i, (x, y) in enumerate(train_loader):
                    self._check_stop()
                    self._set_lr(lr_at(recipe, epoch, i, steps))
                    loss_sum = loss_sum + self.train_step(x, y)
                    if self.progress is not None:
                        self.progress.step()
                # .item() waits for this run's stream, which holds all its steps: no
                # device-wide synchronize, which would also wait on (and, during a capture,
                # break) the work of other runs in this process.
                sums = all_sum(torch.as_tensor(loss_sum, device=self.device).reshape(-1).clone())
                means = (sums / (max(steps, 1) * self.ranks.world_size)).tolist()
                epoch_loss = means[0]
                dt = time.perf_counter() - t0
                train_time += dt
                images += steps * self.cfg.data.batch_size
                if not math.isfinite(epoch_loss):
                    raise NonFiniteLoss(f"training loss is {epoch_loss} in epoch {epoch + 1}")
                row = {"epoch": epoch + 1, "loss": epoch_loss,
                       **{f"loss_{name}": v for name, v in zip(self.term_names, means[1:], strict=False)},
                       "lr": lr_at(recipe, epoch, steps - 1, steps),
                       "images_per_s": steps * self.cfg.data.batch_size / max(dt, 1e-9),
                       "epoch_s": dt}
                if self.data.val is not None:
                    row["val_acc"] = evaluate(self.method.student, self.data.val, self.autocast)
                row["time"] = time.time()
                history.append(row)
                self._end_epoch(epoch + 1, row, history, metrics_file)
        finally:
            if self.progress is not None:
                self.progress.finish()
        done = last_epoch
        result = RunResult(val_acc=history[-1].get("val_acc") if history else None, test_acc=None,
                           epochs=done, history=history, resumed_from_epoch=start,
                           images_per_s=images / train_time if train_time else 0.0,
                           wall_time_s=time.perf_counter() - t_start)
        if done == recipe.epochs:
            result.test_acc = evaluate(self.method.student, self.data.test, self.autocast)
            student_path = self.run_dir / "student.pt"
            result.student_path = str(student_path)
            if not self.ranks.is_main:
                return result
            _atomic_save(self.method.student.state_dict(), student_path)
            _append_row(metrics_file, {"final": True, "val_acc": result.val_acc, "test_acc": result.test_acc})
        return result
