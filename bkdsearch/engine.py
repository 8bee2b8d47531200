"""One training run: data, models, method, loop, evaluation, checkpoints and resume.

Everything a run needs lives in its own objects and is passed in (device, run folder,
callbacks): several runs may train at once in one process without sharing state.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import DataBundle, build_data
from .methods import Method, build_method
from .partitions import input_size_of
from .spec import Recipe, RunConfig
from .zoo import create_model, load_weights

EpochCallback = Callable[[int, dict[str, float]], None]
"""``callback(epoch, metrics)`` after each epoch (1-based); may raise to stop the run."""

# Model initialisation draws from torch's global generator: one run at a time seeds it.
_INIT_LOCK = threading.Lock()


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


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


def build_models(cfg: RunConfig, num_classes: int, teacher_weights: str | None) -> tuple[nn.Module, nn.Module | None]:
    """Return (student, teacher) for ``cfg``: the student initialised from ``cfg.seed``, the
    teacher loaded from ``teacher_weights`` (weights-only). Raises WeightsError on a bad file."""
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        student = create_model(cfg.student.arch, num_classes=num_classes)
        teacher = None
        if cfg.teacher is not None and cfg.method != "ce":
            teacher = create_model(cfg.teacher.arch, num_classes=num_classes)
    if cfg.student.checkpoint:
        load_weights(student, cfg.student.checkpoint)
    if teacher is not None:
        if teacher_weights is None:
            raise ValueError("a teacher checkpoint is needed for distillation")
        load_weights(teacher, teacher_weights)
    return student, teacher


def lr_at(recipe: Recipe, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Return the learning rate at 0-based ``epoch`` and ``step`` within it: linear warmup over
    ``warmup_epochs``, then multistep (x lr_decay at each milestone), cosine or constant."""
    progress = epoch + step / steps_per_epoch
    if recipe.warmup_epochs and progress < recipe.warmup_epochs:
        return recipe.lr * (progress + 1 / steps_per_epoch) / recipe.warmup_epochs
    if recipe.schedule == "multistep":
        passed = sum(1 for m in recipe.resolved_milestones() if epoch >= m)
        return recipe.lr * recipe.lr_decay**passed
    if recipe.schedule == "cosine":
        span = max(recipe.epochs - recipe.warmup_epochs, 1e-9)
        t = min(max(progress - recipe.warmup_epochs, 0.0) / span, 1.0)
        return recipe.lr * 0.5 * (1 + math.cos(math.pi * t))
    return recipe.lr


def make_optimizer(recipe: Recipe, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """Return SGD (momentum, optional Nesterov) or AdamW over ``params``."""
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                               nesterov=recipe.nesterov and recipe.momentum > 0,
                               weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, autocast: bool = False) -> float:
    """Return top-1 accuracy (%) of ``model`` over ``loader`` in eval mode."""
    was = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long)
    total = 0
    try:
        for x, y in loader:
            with torch.autocast(x.device.type, torch.bfloat16, enabled=autocast):
                logits = model(x)
            correct = correct.to(y.device) + (logits.argmax(1) == y).sum()
            total += y.numel()
    finally:
        model.train(was)
    return 100.0 * correct.item() / max(total, 1)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Trainer:
    """Trains one :class:`RunConfig` on one device, checkpointing each epoch into ``run_dir``.

    Args:
        cfg: the run.
        run_dir: folder for ``last.pt``, ``metrics.jsonl`` and ``student.pt``.
        teacher_weights: path of the teacher's checkpoint (for distillation methods).
        device: where to train.
        data: pre-built data (else built from ``cfg.data`` on ``device``).
        on_epoch: called after every epoch with the epoch's metrics.
        progress: show a rich progress bar.
    """

    def __init__(self, cfg: RunConfig, run_dir: str | Path, *, teacher_weights: str | None = None,
                 device: torch.device | str | None = None, data: DataBundle | None = None,
                 on_epoch: EpochCallback | None = None, progress: bool = True) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = pick_device(cfg.runtime.device) if device is None else torch.device(device)
        self.on_epoch = on_epoch
        self.progress = progress
        self.data = data or build_data(
            cfg.data.dataset, root=cfg.data.root, download=cfg.data.download,
            val_fraction=cfg.data.val_fraction, batch_size=cfg.data.batch_size,
            eval_batch_size=cfg.data.eval_batch_size, seed=cfg.seed, device=self.device,
            augment=cfg.data.augment, num_workers=cfg.data.num_workers,
            synthetic=_synthetic(cfg), input_size=input_size_of(cfg.data),
        )
        student, teacher = build_models(cfg, self.data.num_classes, teacher_weights)
        self.method: Method = build_method(cfg, student, teacher, self.data.input_size).to(self.device)
        cuda = self.device.type == "cuda"
        self.autocast = cuda and cfg.runtime.amp in ("auto", "bf16")
        if cuda and cfg.runtime.channels_last in ("auto", "on"):
            self.method.to(memory_format=torch.channels_last)
        params = [p for p in self.method.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(cfg.train, params)
        self.step_fn = self._eager_step
        if cfg.runtime.compile:
            self.step_fn = torch.compile(self._eager_step)

    # ------------------------------------------------------------------ steps
    def _eager_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
            out = self.method(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        return out.loss.detach()

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        """Return the path of the last epoch's checkpoint."""
        return self.run_dir / "last.pt"

    def save_checkpoint(self, epoch: int, history: list[dict[str, float]]) -> None:
        """Write the state after ``epoch`` atomically (a crash never leaves half a file)."""
        _atomic_save({"epoch": epoch, "method": self.method.trainable_state(),
                      "optimizer": self.optimizer.state_dict(), "history": history,
                      "config_digest": self.cfg.digest()}, self.checkpoint_path)

    def load_checkpoint(self) -> tuple[int, list[dict[str, float]]]:
        """Restore the last checkpoint if there is one; return (epochs done, history)."""
        if not self.checkpoint_path.exists():
            return 0, []
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        if state.get("config_digest") != self.cfg.digest():
            raise ValueError(f"{self.checkpoint_path} belongs to a different run configuration")
        self.method.load_trainable_state(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        return int(state["epoch"]), list(state["history"])

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = True, stop_after: int | None = None) -> RunResult:
        """Train (resuming from the last checkpoint when ``resume``), evaluating validation
        accuracy every epoch and test accuracy at the end. ``stop_after`` ends early after
        that many epochs in total (as an interruption would).

        Raises:
            NonFiniteLoss: the loss became NaN/inf.
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
        bar = _Progress(self.progress, f"{self.cfg.name} {self.cfg.method}", last_epoch - start)
        with bar:
            for epoch in range(start, last_epoch):
                self.method.train()
                train_loader.set_epoch(epoch)
                loss_sum = torch.zeros((), device=self.device)
                t0 = time.perf_counter()
                for i, (x, y) in enumerate(train_loader):
                    self._set_lr(lr_at(recipe, epoch, i, steps))
                    if self.device.type == "cuda" and self.method.training:
                        x = x.contiguous(memory_format=torch.channels_last) if self.autocast else x
                    loss_sum += self.step_fn(x, y)
                epoch_loss = (loss_sum / max(steps, 1)).item()
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                dt = time.perf_counter() - t0
                train_time += dt
                images += steps * self.cfg.data.batch_size
                if not math.isfinite(epoch_loss):
                    raise NonFiniteLoss(f"training loss is {epoch_loss} in epoch {epoch + 1}")
                row = {"epoch": epoch + 1, "loss": epoch_loss,
                       "lr": lr_at(recipe, epoch, steps - 1, steps),
                       "images_per_s": steps * self.cfg.data.batch_size / max(dt, 1e-9)}
                if self.data.val is not None:
                    row["val_acc"] = evaluate(self.method.student, self.data.val, self.autocast)
                history.append(row)
                with metrics_file.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                self.save_checkpoint(epoch + 1, history)
                bar.update(row)
                if self.on_epoch is not None:
                    self.on_epoch(epoch + 1, row)
        done = last_epoch
        result = RunResult(val_acc=history[-1].get("val_acc") if history else None, test_acc=None,
                           epochs=done, history=history, resumed_from_epoch=start,
                           images_per_s=images / train_time if train_time else 0.0,
                           wall_time_s=time.perf_counter() - t_start)
        if done == recipe.epochs:
            result.test_acc = evaluate(self.method.student, self.data.test, self.autocast)
            student_path = self.run_dir / "student.pt"
            _atomic_save(self.method.student.state_dict(), student_path)
            result.student_path = str(student_path)
            with metrics_file.open("a") as f:
                f.write(json.dumps({"final": True, "val_acc": result.val_acc,
                                    "test_acc": result.test_acc}) + "\n")
        return result


def _synthetic(cfg: RunConfig) -> Any:
    if cfg.data.dataset != "synthetic":
        return None
    from .data import SyntheticConfig

    return SyntheticConfig(**(cfg.data.synthetic or {}))


class _Progress:
    """A rich progress bar over epochs (silent when disabled)."""

    def __init__(self, enabled: bool, label: str, total: int) -> None:
        self.enabled = enabled
        self.label = label
        self.total = total
        self._progress = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
            self._progress.__enter__()
            self._task = self._progress.add_task(self.label, total=self.total, info="")
        return self

    def update(self, row: dict[str, float]) -> None:
        if self._progress is None:
            return
        info = f"epoch {int(row['epoch'])} loss {row['loss']:.3f}"
        if "val_acc" in row:
            info += f" val {row['val_acc']:.2f}%"
        info += f" {row['images_per_s']:.0f} img/s"
        self._progress.update(self._task, advance=1, info=info)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
