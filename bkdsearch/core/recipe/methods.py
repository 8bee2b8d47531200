"""Distillation methods, one small module each (mdistiller style).

A method wraps the student (and a frozen teacher) and maps a batch to its training loss;
the training loop knows nothing of any particular method.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .losses import LogitLoss, blockkd_loss, dkd_loss, dkd_warmup_factor, kd_loss, stone_weights
from .partitions import Partition
from .stones import DeepFirstStones, ShallowFirstStones, Stones

RunConfig = Any
"""A resolved run configuration (:class:`bkdsearch.spec.RunConfig` or the same attributes)."""

class StepOut(NamedTuple):
    """Result of one training forward: the loss to minimise, the student's logits and the
    loss's terms by name (detached 0-dim tensors, unweighted: ``ce``, ``kd`` or ``dkd``,
    ``ensemble``, ``stone<i>_ce``...), which the trainer averages per epoch."""

    loss: Tensor
    logits: Tensor
    terms: dict[str, Tensor]


class Method(nn.Module):
    """Base: holds ``student`` and optionally a frozen ``teacher`` kept in eval mode."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher.requires_grad_(False).eval() if teacher is not None else None

    def train(self, mode: bool = True) -> Method:
        """Train mode for what learns; the teacher's BN always stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def start_epoch(self, epoch: int) -> None:
        """Prepare for the 1-based ``epoch``: the training loop calls this before
        each epoch's first step, including the first epoch of a resumed run, so per-epoch
        state must follow from ``epoch`` alone. The base method has none; returns nothing."""

    def trainable_state(self) -> dict[str, Tensor]:
        """Return the state dict of everything that learns (student, connectors), not the
        frozen teacher: what a checkpoint must hold."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`trainable_state` returned."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise KeyError(f"checkpoint mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def _teacher_logits(self, x: Tensor) -> Tensor:
        assert self.teacher is not None
        with torch.no_grad():
            return self.teacher(x)


class CE(Method):
    """Plain cross-entropy training of the student (the no-distillation baseline)."""

    @classmethod
    def from_config(cls, cfg: RunConfig, student: nn.Module, teacher: nn.Module | None,
                    input_size: tuple[int, int, int]) -> CE:
        """Return CE training of ``student`` (the teacher is not used)."""
        return cls(student)

    def forward(self, x: Tensor, y: Tensor) -> StepOut:
        logits = self.student(x)
        ce = F.cross_entropy(logits.float(), y)
        return StepOut(ce, logits, {"ce": ce.detach()})


class KD(Method):
    """Hinton KD: ``alpha * CE + beta * KD(tau)``."""

    @classmethod
    def from_config(cls, cfg: RunConfig, student: nn.Module, teacher: nn.Module | None,
                    input_size: tuple[int, int, int]) -> KD:
        """Return KD of ``student`` from ``teacher`` with ``cfg.loss``'s tau, alpha and beta."""
        loss = cfg.loss
        return cls(student, _needs(teacher, "kd"), loss.tau, loss.alpha, loss.beta)

    def __init__(self, student: nn.Module, teacher: nn.Module, tau: float, alpha: float, beta: float) -> None:
        super().__init__(student, teacher)
        self.tau, self.alpha, self.beta = tau, alpha, beta

    def forward(self, x: Tensor, y: Tensor) -> StepOut:
        logits = self.student(x)
        t = self._teacher_logits(x)
        ce, kd = F.cross_entropy(logits.float(), y), kd_loss(logits, t, self.tau)
        return StepOut(self.alpha * ce + self.beta * kd, logits, {"ce": ce.detach(), "kd": kd.detach()})


class DKDWarmup(nn.Module):
    """DKD's linear warm-up: :meth:`start_epoch` sets ``scale`` to ``min(epoch / epochs, 1)``
    (1 when ``epochs`` is 0); the methods using the DKD loss multiply its terms by ``scale``.

    ``scale`` is a 0-dim buffer filled in place, like the learning rate: a CUDA graph
    captured once reads its current value at each replay, where a Python float would stay
    frozen at its capture-time value. It is not persistent (not in checkpoints): it follows
    from the epoch, which a resumed run passes to :meth:`start_epoch` as well.
    """

    scale: Tensor

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.register_buffer("scale", torch.ones(()), persistent=False)

    def start_epoch(self, epoch: int) -> None:
        """Set ``scale`` to the warm-up factor of the 1-based ``epoch``; returns nothing.

        Raises:
            ValueError: ``epoch`` < 1.
        """
        self.scale.fill_(dkd_warmup_factor(epoch, self.epochs))


class DKD(Method):
    """Decoupled KD: ``alpha * CE + beta * DKD(tau, dkd_alpha, dkd_beta)``, the DKD term ramped
    in by :class:`DKDWarmup`."""

    @classmethod
    def from_config(cls, cfg: RunConfig, student: nn.Module, teacher: nn.Module | None,
                    input_size: tuple[int, int, int]) -> DKD:
        """Return DKD of ``student`` from ``teacher`` with ``cfg.loss``'s weights and warm-up."""
        loss = cfg.loss
        return cls(student, _needs(teacher, "dkd"), loss.tau, loss.alpha, loss.beta, loss.dkd_alpha,
                   loss.dkd_beta, loss.dkd_warmup)

    def __init__(self, student: nn.Module, teacher: nn.Module, tau: float, alpha: float, beta: float,
                 dkd_alpha: float, dkd_beta: float, dkd_warmup: int = 0) -> None:
        super().__init__(student, teacher)
        self.warmup = DKDWarmup(dkd_warmup)
        self.tau, self.alpha, self.beta = tau, alpha, beta
        self.dkd_alpha, self.dkd_beta = dkd_alpha, dkd_beta

    def start_epoch(self, epoch: int) -> None:
        """Ramp the DKD term for the 1-based ``epoch`` (:class:`DKDWarmup`); returns nothing."""
        self.warmup.start_epoch(epoch)

    def forward(self, x: Tensor, y: Tensor) -> StepOut:
        logits = self.student(x)
        t = self._teacher_logits(x)
        ce = F.cross_entropy(logits.float(), y)
        dkd = dkd_loss(logits, t, y, self.tau, self.dkd_alpha, self.dkd_beta)
        loss = self.alpha * ce + self.beta * dkd * self.warmup.scale
        return StepOut(loss, logits, {"ce": ce.detach(), "dkd": dkd.detach()})


class BlockKD(Method):
    """Block-wise logit distillation through stepping-stones; with the ``dkd``
    logit loss, its logit-loss terms are ramped in over ``cfg.loss.dkd_warmup`` epochs."""

    def __init__(self, stones: Stones, cfg: RunConfig) -> None:
        super().__init__(stones.student, stones.teacher)
        self.warmup = None
        if cfg.loss.logit_loss == "dkd":  # the warm-up belongs to the DKD terms: a KL loss is never ramped
            self.warmup = DKDWarmup(cfg.loss.dkd_warmup)
        self.connectors = stones.connectors
        self._stones = (stones,)  # not a submodule: its modules are registered above
        loss = cfg.loss
        self.weights = stone_weights(stones.order, stones.active, stones.num_blocks, loss.decay)
        self.logit_loss = logit_loss_of(cfg)
        self.logit_loss_kind = loss.logit_loss
        self.alpha, self.beta, self.gamma, self.tau = loss.alpha, loss.beta, loss.gamma, loss.tau

    @classmethod
    def from_config(cls, cfg: RunConfig, student: nn.Module, teacher: nn.Module | None,
                    input_size: tuple[int, int, int]) -> BlockKD:
        """Return Block-KD of ``student`` from ``teacher`` through the stepping-stones of
        ``cfg.blockkd``.

        Raises:
            ValueError: no ``blockkd`` section. PartitionError: an impossible partition.
        """
        b = cfg.blockkd
        if b is None:
            raise ValueError("method 'blockkd' needs a blockkd section (partition)")
        if cfg.blockkd.order == "shallow_first":
            kind: type[Stones] = ShallowFirstStones
        else:
            kind = DeepFirstStones
        stones = kind(_needs(teacher, "blockkd"), student,
                                Partition(tuple(b.partition.teacher), tuple(b.partition.student)),
                                order=b.order, connector=b.connector, active=b.stones, input_size=input_size)
        return cls(stones, cfg)

    def start_epoch(self, epoch: int) -> None:
        """Ramp the DKD logit-loss terms for the 1-based ``epoch``; returns nothing."""
        if self.warmup is not None:
            self.warmup.start_epoch(epoch)

    def forward(self, x: Tensor, y: Tensor) -> StepOut:
        out = self._stones[0](x)
        parts = blockkd_loss(out.student, out.teacher, out.stones, self.weights, y,
                             alpha=self.alpha, beta=self.beta, gamma=self.gamma, tau=self.tau,
                             logit_loss=self.logit_loss,
                             logit_scale=1.0 if self.warmup is None else self.warmup.scale)
        logit = "dkd" if self.logit_loss_kind == "dkd" else "kd"
        terms = {"ce": parts.student_ce, logit: parts.student_kd, "ensemble": parts.ensemble}
        for i, y_ce, y_kd in zip(self._stones[0].active, parts.stones_ce, parts.stones_kd, strict=True):
            terms[f"stone{i}_ce"], terms[f"stone{i}_{logit}"] = y_ce, y_kd
        return StepOut(parts.total, out.student, terms)


def logit_loss_of(cfg: RunConfig) -> LogitLoss:
    """Return the logit-matching loss ``cfg.loss.logit_loss`` (``kl`` or ``dkd``) as
    ``f(student, teacher, target)``, with ``cfg.loss``'s temperature and DKD weights."""
    loss = cfg.loss
    if cfg.loss.logit_loss == "dkd":
        return lambda s, t, target: dkd_loss(s, t, target, loss.tau, loss.dkd_alpha, loss.dkd_beta)
    return lambda s, t, target: kd_loss(s, t, loss.tau)


def _needs(teacher: nn.Module | None, method: str) -> nn.Module:
    if teacher is None:
        raise ValueError(f"method {method!r} needs a teacher")
    return teacher


def build_method(cfg: RunConfig, student: nn.Module, teacher: nn.Module | None,
                 input_size: tuple[int, int, int]) -> Method:
    """Return the method module of ``cfg.method`` around ``student`` (and ``teacher``).

    Raises:
        ValueError: unknown method or a distillation method without teacher.
        PartitionError: an impossible partition.
    """
    if cfg.method == "ce":
        return CE.from_config(cfg, student, teacher, input_size)
    elif cfg.method == "kd":
        return KD.from_config(cfg, student, teacher, input_size)
    elif cfg.method == "dkd":
        return DKD.from_config(cfg, student, teacher, input_size)
    elif cfg.method == "blockkd":
        return BlockKD.from_config(cfg, student, teacher, input_size)
    else:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of blockkd, ce, dkd, kd")
