"""The engine's side of one run on several processes: the collective timeout a user sets
(``BKDSEARCH_COLLECTIVE_TIMEOUT_S``), joining the group with it, and the agreement of all
ranks on stopping."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ..recipe import distributed
from ..recipe.distributed import Ranks

COLLECTIVE_TIMEOUT_S = 300.0
"""Default of ``BKDSEARCH_COLLECTIVE_TIMEOUT_S``: how long a rank waits in one collective."""


def collective_timeout() -> float:
    """Return ``BKDSEARCH_COLLECTIVE_TIMEOUT_S`` (seconds, > 0), else :data:`COLLECTIVE_TIMEOUT_S`.

    Raises:
        ValueError: not a positive number.
    """
    raw = os.environ.get("BKDSEARCH_COLLECTIVE_TIMEOUT_S", "").strip()
    if not raw:
        return COLLECTIVE_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e7:
        raise ValueError(f"BKDSEARCH_COLLECTIVE_TIMEOUT_S={raw!r}: expected a positive number of seconds")
    return value


def start_group(ranks: Ranks, device: torch.device) -> None:
    """Join the run's process group (:func:`bkdsearch.core.recipe.distributed.start_group`)
    with :func:`collective_timeout`; returns when every rank has joined.

    Raises:
        ValueError: a bad ``BKDSEARCH_COLLECTIVE_TIMEOUT_S``.
        RuntimeError (torch's DistStoreError): the other ranks did not join within the timeout.
    """
    distributed.start_group(ranks, device, collective_timeout())


def any_rank(flag: bool, device: torch.device) -> bool:
    """Return True on every rank when ``flag`` is True on any rank."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
