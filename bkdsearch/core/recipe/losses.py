"""Losses as pure functions of tensors: KD, DKD and the Block-KD objective (docs/design.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

LogitLoss = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``loss(student_logits, teacher_logits, target) -> scalar``: a logit-matching loss."""


def kd_loss(student: Tensor, teacher: Tensor, tau: float) -> Tensor:
    """Return ``tau^2 * KL(softmax(teacher/tau) || softmax(student/tau))``, batch mean.

    The ``tau^2`` factor keeps gradient magnitudes comparable across temperatures
    (Hinton et al. 2015). Computed in float32 whatever the autocast dtype.
    """
    log_p_student = F.log_softmax(student.float() / tau, dim=1)
    log_p_teacher = F.log_softmax(teacher.float() / tau, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * tau**2


def dkd_loss(
    student: Tensor, teacher: Tensor, target: Tensor, tau: float, alpha: float, beta: float
) -> Tensor:
    """Return Decoupled KD (Zhao et al., CVPR 2022): ``alpha * TCKD + beta * NCKD``.

    TCKD is the binary KL between (target, non-target) probability masses; NCKD the KL
    between the distributions over non-target classes only. Both carry ``tau^2`` and are
    averaged over the batch.
    """
    s = student.float() / tau
    t = teacher.float() / tau
    gt = F.one_hot(target, s.shape[1]).bool()
    # Binary (target vs rest) masses in log space: a mass that underflows in float32 (a target
    # 30 logits below the rest) keeps its exact log and gradient, where clamping the mass
    # would zero the gradient.
    log_b_s = _log_binary_masses(s, target, gt)
    log_b_t = _log_binary_masses(t, target, gt)
    tckd = (log_b_t.exp() * (log_b_t - log_b_s)).sum(1).mean()
    # Masking the target logit out (-inf would give nan*0) renormalises over the others.
    masked_s = s.masked_fill(gt, -1e9)
    masked_t = t.masked_fill(gt, -1e9)
    nckd = F.kl_div(
        F.log_softmax(masked_s, dim=1), F.log_softmax(masked_t, dim=1),
        reduction="batchmean", log_target=True,
    )
    return (alpha * tckd + beta * nckd) * tau**2


def _log_binary_masses(logits: Tensor, target: Tensor, gt: Tensor) -> Tensor:
    """Return ``log [p(target), p(rest)]`` per row of ``softmax(logits)``, shape (N, 2)."""
    log_z = torch.logsumexp(logits, dim=1, keepdim=True)
    log_target = logits.gather(1, target[:, None])
    log_rest = torch.logsumexp(logits.masked_fill(gt, float("-inf")), dim=1, keepdim=True)
    return torch.cat([log_target, log_rest], dim=1) - log_z


def dkd_warmup_factor(epoch: int, warmup: int) -> float:
    """Return DKD's linear warm-up factor ``min(epoch / warmup, 1)`` for the 1-based ``epoch``;
    1 when ``warmup`` is 0 (no warm-up).

    Zhao et al. (CVPR 2022) ramp the DKD loss in over the first 20 of 240 CIFAR epochs: its
    NCKD term (beta 8) is large next to CE while the student is still random.

    Raises:
        ValueError: ``epoch`` < 1 (a 0-based epoch would zero the first epoch's DKD terms)
            or ``warmup`` < 0.
    """
    if epoch < 1 or warmup < 0:
        raise ValueError(f"need a 1-based epoch and warmup >= 0, got epoch {epoch}, warmup {warmup}")
    return min(epoch / warmup, 1.0) if warmup else 1.0


def stone_weights(order: str, stone_indices: Sequence[int], num_blocks: int, decay: float) -> list[float]:
    """Return ``w_i = decay ** (number of teacher blocks in stone i)`` for 1-based stones.

    ``shallow_first`` stone i holds the teacher's blocks i+1..n (n-i of them);
    ``deep_first`` stone i holds teacher blocks 1..i.
    """
    if order == "shallow_first":
        return [decay ** (num_blocks - i) for i in stone_indices]
    if order == "deep_first":
        return [decay**i for i in stone_indices]
    raise ValueError(f"unknown order {order!r}")


class BlockKDLoss(NamedTuple):
    """The Block-KD objective and its three terms (before their alpha/beta/gamma weights),
    plus the unweighted CE and logit loss of the student and of each stone (detached)."""

    total: Tensor
    ce: Tensor
    kd: Tensor
    ensemble: Tensor
    student_ce: Tensor | None = None
    student_kd: Tensor | None = None
    stones_ce: tuple[Tensor, ...] = ()
    stones_kd: tuple[Tensor, ...] = ()


def blockkd_loss(
    student: Tensor,
    teacher: Tensor,
    stones: Sequence[Tensor],
    weights: Sequence[float],
    target: Tensor,
    *,
    alpha: float,
    beta: float,
    gamma: float,
    tau: float,
    logit_loss: LogitLoss,
    logit_scale: Tensor | float = 1.0,
) -> BlockKDLoss:
    """Return the Block-KD objective::

        L = alpha * [CE(y_S,t) + sum_i w_i CE(y_i,t)]
          + beta  * [LL(y_S,y_T) + sum_i w_i LL(y_i,y_T)]
          + gamma * [KD(y_S,e) + sum_i KD(y_i,e)],   e = mean_i y_i (detached)

    ``LL`` is ``logit_loss`` (KD or DKD); the ensemble term always uses KD at ``tau``.
    With no stones the ensemble term is zero. ``logit_scale`` multiplies the beta term in
    ``total`` (DKD's warm-up factor, see :func:`dkd_warmup_factor`); a 0-dim tensor keeps it
    readable by a captured CUDA graph. The returned ``kd`` term is unscaled.
    """
    student_ce = F.cross_entropy(student.float(), target)
    student_kd = logit_loss(student, teacher, target)
    stones_ce = [F.cross_entropy(y.float(), target) for y in stones]
    stones_kd = [logit_loss(y, teacher, target) for y in stones]
    ce, kd = student_ce, student_kd
    for w, y_ce, y_kd in zip(weights, stones_ce, stones_kd, strict=True):
        ce = ce + w * y_ce
        kd = kd + w * y_kd
    ensemble = student.new_zeros((), dtype=torch.float32)
    if stones and gamma != 0.0:
        e = torch.stack([y.float() for y in stones]).mean(0).detach()
        ensemble = kd_loss(student, e, tau) + sum(kd_loss(y, e, tau) for y in stones)
    total = alpha * ce + beta * kd * logit_scale + gamma * ensemble
    return BlockKDLoss(total, ce.detach(), kd.detach(), ensemble.detach(), student_ce.detach(),
                       student_kd.detach(), tuple(t.detach() for t in stones_ce),
                       tuple(t.detach() for t in stones_kd))
