"""One run on several processes (DDP), started the way torchrun starts them.

A rank learns who it is from torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): :func:`ranks_from_env`. bkdsearch's own
launcher sets the same variables, so a rank cannot tell the two apart. The process group is
NCCL on CUDA and gloo on the CPU, with a timeout on every collective.

Every global batch is cut into one contiguous shard per rank (:meth:`Ranks.shard`), so the
ranks together see exactly the batch one process would, and SyncBN (:func:`sync_batchnorm`)
makes their forward pass the single process's.
"""

from __future__ import annotations

import datetime
import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the processes of one run.

    Attributes:
        rank: this process's index, 0 .. world_size - 1 (rank 0 writes files and reports).
        world_size: processes training the run together.
        local_rank: index among the run's processes on this machine (picks the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True for rank 0, the one that writes checkpoints and reports."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when the run has more than one process."""
        return self.world_size > 1

    def shard(self, n: int) -> slice:
        """Return this rank's contiguous part of ``n`` items: the first ``n % world_size``
        ranks take one item more, so every item belongs to exactly one rank (the rule of
        ``torch.tensor_split``)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))


SINGLE = Ranks()
"""The one process of a run that is not distributed."""


def ranks_from_env(env: Mapping[str, str] | None = None) -> Ranks:
    """Return the :class:`Ranks` torchrun's variables describe (:data:`SINGLE` when
    ``WORLD_SIZE`` is unset).

    Raises:
        ValueError: the variables are not whole numbers, or ``RANK`` is outside the world.
    """
    env = os.environ if env is None else env
    if not env.get("WORLD_SIZE"):
        return SINGLE
    try:
        world, rank = int(env["WORLD_SIZE"]), int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"RANK={rank} does not fit WORLD_SIZE={world}")
    return Ranks(rank, world, local)


def rank_device(ranks: Ranks, device: str) -> torch.device:
    """Return the device of this rank: the ``local_rank``-th GPU when ``device`` is ``auto``
    or ``cuda`` with CUDA present (torchrun's convention), else ``device`` itself."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", ranks.local_rank)
    if device == "auto":
        return torch.device("cpu")
    return torch.device(f"cuda:{device}" if device.isdigit() else device)


def start_group(ranks: Ranks, device: torch.device, timeout_s: float = 300.0) -> None:
    """Join the run's process group (NCCL on CUDA, gloo on the CPU) at ``MASTER_ADDR:MASTER_PORT``,
    each collective waiting at most ``timeout_s`` (a rank that dies never leaves the others
    waiting for ever); a no-op for one process or when already joined.

    Raises:
        RuntimeError (torch's DistStoreError): the other ranks did not join within the timeout.
    """
    if not ranks.active or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://",
                            rank=ranks.rank, world_size=ranks.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))


def end_group() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Return ``t`` summed over all ranks (``t`` itself, summed in place; unchanged alone)."""
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


# ---------------------------------------------------------------------------- SyncBN
class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced gradient: each rank's input feeds
    every rank's output."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:  # noqa: D102 - autograd protocol
        return all_sum(t.clone())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102 - autograd protocol
        return all_sum(grad.clone())


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of all ranks, for the CPU (torch's ``SyncBatchNorm``
    takes GPU tensors only): per channel, the sum and then the squared deviations are summed
    over the ranks through a differentiable all-reduce, so both the forward pass and the
    gradients are those of one process seeing the whole batch."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - nn.Module protocol
        batch_stats = self.training or self.running_mean is None
        if not batch_stats or not dist.is_initialized():
            return super().forward(x)
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = all_sum(torch.tensor([x.numel() // x.size(1)], dtype=x.dtype, device=x.device))
        mean = _SumOverRanks.apply(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = _SumOverRanks.apply((centred * centred).sum(dims)) / count
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (count / (count - 1).clamp(min=1))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Return ``module`` with every plain BatchNorm that learns (or keeps running statistics
    while not frozen) replaced by its synchronised form: ``nn.SyncBatchNorm`` for CUDA and
    :class:`GlobalBatchNorm` otherwise; parameters and buffers are the same tensors, so state
    dicts keep their keys. Frozen BatchNorms (a teacher's) stay as they are."""
    plain = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    if type(module) in plain and any(p.requires_grad for p in module.parameters(recurse=False)):
        on_cuda = module.running_mean is not None and module.running_mean.is_cuda
        sync = (nn.SyncBatchNorm if on_cuda else GlobalBatchNorm)(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        sync.training = module.training
        for name in ("weight", "bias"):
            setattr(sync, name, getattr(module, name))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            sync.register_buffer(name, getattr(module, name))
        return sync
    for name, child in module.named_children():
        setattr(module, name, sync_batchnorm(child))
    return module


def data_parallel(module: nn.Module, device: torch.device, *, broadcast_buffers: bool) -> nn.Module:
    """Return ``module`` wrapped in ``DistributedDataParallel`` (gradients averaged over the
    ranks during backward) when a process group is joined, else ``module`` itself."""
    if not dist.is_initialized():
        return module
    ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # torch 2.14 renamed the flag (both sync buffers once at the start, as wanted here).
    renamed = "forward_sync_buffers" in inspect.signature(ddp).parameters
    flag = "forward_sync_buffers" if renamed else "broadcast_buffers"
    return ddp(module, device_ids=ids, **{flag: broadcast_buffers})
