"""One training run as plain functions: build it (data, models, method, optimiser), train one
epoch, evaluate, and fit: a checkpoint after every epoch, resume from the last one.

``cfg`` is the run's configuration (bkdsearch's RunConfig, or an exported script's
``Config`` with the same attributes).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import (
    DataBundle,
    array_loaders,
    as_cifar_input,
    build_folder_data,
    load_cifar10,
    load_cifar100,
    load_fashion_mnist,
    load_synthetic,
)
from .distributed import SINGLE, Ranks, all_sum, data_parallel, sync_batchnorm
from .errors import CheckpointError, NonFiniteLoss
from .methods import Method, RunConfig, build_method
from .optim import Recipe, lr_at, make_optimizer
from .zoo.weights import load_weights

Builder = Callable[[int], nn.Module]
"""``builder(num_classes) -> model``: one model family's constructor (``resnet32``...)."""
CHECKPOINT_KEYS = ("epoch", "method", "optimizer", "history", "config_digest")
"""What a run checkpoint (``last.pt``) holds."""


def load_data(cfg: RunConfig, device: torch.device, ranks: Ranks = SINGLE) -> DataBundle:
    """Return the train / validation / test loaders of ``cfg.data`` on ``device`` (each rank's
    shard of every batch when several processes train).

    Raises:
        DataError: the data is missing, misplaced or corrupt (the message says how to fix it).
    """
    d = cfg.data
    if cfg.data.dataset == "imagefolder":
        return build_folder_data(d.root, val_fraction=d.val_fraction, batch_size=d.batch_size,
                                 eval_batch_size=d.eval_batch_size, seed=cfg.seed, device=device, augment=d.augment,
                                 num_workers=d.num_workers, flip=None, data_seed=d.split_seed,
                                 image_size=d.image_size or 224, train_fraction=d.train_fraction, ranks=ranks,
                                 decode=d.decode)
    if cfg.data.dataset == "cifar10":
        source = load_cifar10
    elif cfg.data.dataset == "cifar100":
        source = load_cifar100
    elif cfg.data.dataset == "fashion_mnist":
        source = load_fashion_mnist
    else:
        source = load_synthetic
    root = None if d.root is None else Path(d.root).expanduser().resolve()  # None: the source's default places
    full, test = (source(root, split, d.download, d.split_seed, d.synthetic) for split in ("train", "test"))
    flip = True
    if cfg.data.dataset == "fashion_mnist":
        # 1x28x28 garments, padded to the CIFAR zoo's 3x32x32; centred and upright, they are
        # conventionally trained without flips.
        full, test = as_cifar_input(full), as_cifar_input(test)
        flip = False
    return array_loaders(full, test, val_fraction=d.val_fraction, batch_size=d.batch_size,
                         eval_batch_size=d.eval_batch_size, seed=cfg.seed, device=device, augment=d.augment,
                         flip=flip, data_seed=d.split_seed, train_fraction=d.train_fraction, ranks=ranks)


def make_method(cfg: RunConfig, student_model: Builder, teacher_model: Builder | None, num_classes: int,
                input_size: tuple[int, int, int], teacher_weights: str | None, ranks: Ranks = SINGLE) -> Method:
    """Return the method module of ``cfg``: the student (then the teacher, then the connectors)
    initialised from torch's global generator, which the caller seeds; the teacher loaded
    from ``teacher_weights``; with ``runtime.sync_bn`` on several ``ranks``, BatchNorms that
    normalise over the global batch.

    Raises:
        ValueError: a distilling method without teacher weights.
        WeightsError: a weights file that cannot be read or does not fit.
    """
    student = student_model(num_classes)
    if cfg.student.checkpoint:
        load_weights(student, cfg.student.checkpoint)
    teacher = None
    if cfg.teacher is not None and cfg.method != "ce":
        if teacher_model is None or teacher_weights is None:
            raise ValueError("a teacher checkpoint is needed for distillation")
        # Its (overwritten) initialisation draws come after the student's, before the connectors'.
        teacher = load_weights(teacher_model(num_classes), teacher_weights)
    if cfg.runtime.sync_bn and ranks.active:
        # The student's first, before the stepping-stones take views of its blocks.
        return sync_batchnorm(build_method(cfg, sync_batchnorm(student), teacher, input_size))
    return build_method(cfg, student, teacher, input_size)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               autocast: bool = False) -> tuple[torch.Tensor, list[str]]:
    """Run one optimisation step of ``model`` (a method: ``model(x, y)`` gives the loss and
    its terms) and return ``[loss, *terms]`` as one device vector (summed over the epoch and
    read once at its end, so no step waits for the device) with the terms' names."""
    with torch.autocast(x.device.type, torch.bfloat16, enabled=autocast):
        out = model(x, y)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()
    return torch.stack([out.loss.detach().float(), *(t.float() for t in out.terms.values())]), list(out.terms)


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader: Any, recipe: Recipe, epoch: int, *,
                    autocast: bool = False, channels_last: bool = False, world_size: int = 1) -> dict[str, float]:
    """Train the 0-based ``epoch`` and return its metrics row (1-based ``epoch``, mean ``loss``
    and ``loss_<term>``, last ``lr``, ``images_per_s``, ``epoch_s``).

    Raises:
        NonFiniteLoss: the epoch's mean loss is NaN or infinite.
    """
    steps = len(loader)
    loader.set_epoch(epoch)
    total: torch.Tensor | float = 0.0
    names: list[str] = []
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(recipe, epoch, i, steps)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        losses, names = train_step(model, optimizer, x, y, autocast)
        total = total + losses
    means = (all_sum(torch.as_tensor(total).reshape(-1).clone()) / (max(steps, 1) * world_size)).tolist()
    seconds = time.perf_counter() - t0
    if not math.isfinite(means[0]):
        raise NonFiniteLoss(f"training loss is {means[0]} in epoch {epoch + 1}")
    images = steps * loader.batch_size
    return {"epoch": epoch + 1, "loss": means[0], **{f"loss_{n}": v for n, v in zip(names, means[1:], strict=False)},
            "lr": lr_at(recipe, epoch, steps - 1, steps), "images_per_s": images / max(seconds, 1e-9),
            "epoch_s": seconds}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, autocast: bool = False) -> float:
    """Return top-1 accuracy (%) of ``model`` over ``loader`` in eval mode; in a process
    group, over the shards of all ranks together (every rank returns the same figure)."""
    was = model.training
    model.eval()
    counts = torch.zeros(2, dtype=torch.long)  # correct, seen
    try:
        for x, y in loader:
            with torch.autocast(x.device.type, torch.bfloat16, enabled=autocast):
                logits = model(x)
            counts = counts.to(y.device) + torch.stack([(logits.argmax(1) == y).sum(), y.new_tensor(y.numel())])
    finally:
        model.train(was)
    correct, total = all_sum(counts).tolist()
    return 100.0 * correct / max(total, 1)


def save_file(obj: Any, path: Path) -> None:
    """``torch.save`` ``obj`` to ``path`` through ``path.tmp``, so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, method: Method, optimizer: torch.optim.Optimizer, digest: str,
                    device: torch.device) -> tuple[int, list[dict[str, float]]]:
    """Restore the run checkpoint at ``path`` into ``method`` and ``optimizer``; return
    (epochs done, metrics history), ``(0, [])`` when there is none.

    Raises:
        CheckpointError: the file is not a checkpoint of this configuration (``digest``).
    """
    if not path.exists():
        return 0, []
    state = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(state, Mapping) or any(k not in state for k in CHECKPOINT_KEYS) \
            or state["config_digest"] != digest:
        raise CheckpointError(f"{path} is not a checkpoint of this run; delete it to start from epoch 0")
    method.load_trainable_state(state["method"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"]), list(state["history"])


def fit(cfg: RunConfig, out: str | Path, student_model: Builder, teacher_model: Builder | None, *,
        teacher_weights: str | None, device: torch.device, ranks: Ranks = SINGLE, resume: bool = False,
        compile: bool = False, log: Callable[[dict[str, float]], None] = print) -> float:
    """Train ``cfg`` into the folder ``out`` and return the student's test accuracy (%).

    After every epoch rank 0 writes ``out/last.pt`` (what ``resume`` continues from) and a
    row of ``out/metrics.jsonl`` and passes the row to ``log``; at the end it writes the
    student's weights to ``out/student.pt``. On CUDA the step runs in bfloat16 autocast on
    channels-last tensors (``cfg.runtime``), and ``compile`` runs the method through
    ``torch.compile``.

    Raises:
        CheckpointError: ``resume`` from a checkpoint of another configuration.
        NonFiniteLoss: the loss diverged.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(cfg, device, ranks)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        method = make_method(cfg, student_model, teacher_model, data.num_classes, data.input_size, teacher_weights,
                             ranks).to(device)
    cuda = device.type == "cuda"
    autocast = cuda and cfg.runtime.amp in ("auto", "bf16")
    channels_last = cuda and cfg.runtime.channels_last in ("auto", "on")
    if channels_last:
        method.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    # Without SyncBN each rank's running statistics are its own; DDP gives every rank rank 0's.
    model = data_parallel(method, device, broadcast_buffers=not cfg.runtime.sync_bn)
    if compile:
        model = torch.compile(model)
    optimizer = make_optimizer(cfg.train, [p for p in method.parameters() if p.requires_grad])
    start, history = load_checkpoint(out / "last.pt", method, optimizer, cfg.digest(), device) if resume else (0, [])
    for epoch in range(start, cfg.train.epochs):
        method.train()
        method.start_epoch(epoch + 1)
        row = train_one_epoch(model, optimizer, data.train, cfg.train, epoch, autocast=autocast,
                              channels_last=channels_last, world_size=ranks.world_size)
        if data.val is not None:
            row["val_acc"] = evaluate(method.student, data.val, autocast)
        row["time"] = time.time()
        history.append(row)
        if ranks.is_main:
            save_file({"epoch": epoch + 1, "method": method.trainable_state(), "optimizer": optimizer.state_dict(),
                       "history": history, "config_digest": cfg.digest()}, out / "last.pt")
            with (out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            log(row)
    test_acc = evaluate(method.student, data.test, autocast)
    if ranks.is_main:
        save_file(method.student.state_dict(), out / "student.pt")
    return test_acc
