"""Partitions and stepping-stones for traced models: the candidate generators on traced cuts
and :class:`TracedStones`, the Block-KD forward of :class:`bkdsearch.core.recipe.stones.SteppingStones`
over blocks cut by tracing and joined by layout-aware connectors.

Stage-aligned cuts pair the stage ends (:attr:`TracedNet.stage_ends`) both networks have at
the same feature grid; where one side has several stage ends at a grid (an isotropic ViT has
one per block) they are paired at the same fractions of that run. ``per_stage: k`` cuts each
stage-aligned stage into k near-equal runs of cuts; ``uniform: n`` cuts both cut lists at the
same fractions (:func:`bkdsearch.core.recipe.cuts.uniform_cuts`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from .chained import ChainedNet
from .cuts import Cuts, uniform_cuts
from .errors import PartitionError
from .layouts import make_layout_connector
from .partitions import Partition
from .stones import ORDERS, SteppingStones, _View
from .traced import TracedNet, trace
from .zoo.atoms import decompose

__all__ = ["CutNet", "TracedStones", "stones_for", "traced_partition"]

CutNet = TracedNet | ChainedNet
"""A model with found cuts: traced, or given as a ``blocks:`` chain of its modules."""


def _runs_by_grid(net: CutNet) -> dict[tuple[int, int], list[str]]:
    """The stage ends before the body's end, grouped by their feature grid, in network order."""
    grids = {c.name: c.layout.grid for c in net.cuts}
    runs: dict[tuple[int, int], list[str]] = {}
    for name in net.stage_ends[:-1]:
        runs.setdefault(grids[name], []).append(name)
    return runs


def _pick(names: Sequence[str], m: int) -> list[str]:
    """m of ``names`` at equal fractions of the run, its last always among them."""
    return [names[math.ceil((j + 1) * len(names) / m) - 1] for j in range(m)]


def stage_aligned_traced(teacher: CutNet, student: CutNet) -> Cuts:
    """Return cuts at the stage ends both networks have at the same feature grid.

    Raises:
        PartitionError: the two networks share no stage end at a common grid.
    """
    t_runs, s_runs = _runs_by_grid(teacher), _runs_by_grid(student)
    t_cuts: list[str] = []
    s_cuts: list[str] = []
    for grid, t_names in t_runs.items():
        if (s_names := s_runs.get(grid)) is not None:
            m = min(len(t_names), len(s_names))
            t_cuts += _pick(t_names, m)
            s_cuts += _pick(s_names, m)
    order_t = [c.name for c in teacher.cuts]
    order_s = [c.name for c in student.cuts]
    pairs = sorted(zip(t_cuts, s_cuts, strict=True), key=lambda p: order_t.index(p[0]))
    if not pairs or [order_s.index(s) for _, s in pairs] != sorted(order_s.index(s) for _, s in pairs):
        t_grids = {c.layout.grid for c in teacher.cuts if c.name in teacher.stage_ends}
        s_grids = {c.layout.grid for c in student.cuts if c.name in student.stage_ends}
        raise PartitionError(f"{teacher.label} and {student.label} share no stage end at a common feature grid "
                             f"(teacher grids {sorted(t_grids)}, student grids {sorted(s_grids)}); "
                             "use uniform: n or explicit cuts")
    return Cuts(tuple(t for t, _ in pairs), tuple(s for _, s in pairs))


def _split_runs(names: Sequence[str], cuts: Sequence[str], k: int) -> list[str]:
    edges = [0, *(names.index(c) + 1 for c in cuts), len(names)]
    out: list[str] = []
    for a, b in zip(edges, edges[1:], strict=False):
        if b - a < k:
            raise PartitionError(f"a stage of {b - a} cuts cannot be cut into {k} blocks")
        out += [names[a + round(j * (b - a) / k) - 1] for j in range(1, k)]
        if b < len(names):
            out.append(names[b - 1])
    return out


def traced_partition(teacher: CutNet, student: CutNet, candidate: str | Mapping[str, Any]) -> Partition:
    """Return the concrete partition of ``candidate`` for two traced networks:
    ``"stage_aligned"``, ``{"per_stage": k}``, ``{"uniform": n}`` or explicit
    ``{"teacher": [...], "student": [...]}`` (each cut checked legal; aliases accepted).

    Raises:
        PartitionError: the generator cannot produce it for this pair, an illegal cut (the
            message lists the legal ones near it), or an unknown form.
    """
    t_names, s_names = [c.name for c in teacher.cuts], [c.name for c in student.cuts]
    if candidate == "stage_aligned":
        cuts = stage_aligned_traced(teacher, student)
    elif not isinstance(candidate, Mapping):
        raise PartitionError(f"unknown partition {candidate!r}")
    elif candidate.get("teacher") is not None:
        cuts = Cuts(tuple(teacher.cut(c).name for c in candidate["teacher"]),
                    tuple(student.cut(c).name for c in candidate.get("student") or ()))
    elif candidate.get("per_stage") is not None:
        base, k = stage_aligned_traced(teacher, student), int(candidate["per_stage"])
        cuts = Cuts(tuple(_split_runs(t_names, base.teacher, k)), tuple(_split_runs(s_names, base.student, k)))
    elif candidate.get("uniform") is not None:
        cuts = uniform_cuts(t_names, s_names, int(candidate["uniform"]))
    else:
        raise PartitionError(f"unknown partition {dict(candidate)!r}")
    return Partition(cuts.teacher, cuts.student)


class TracedStones(SteppingStones):
    """Teacher, student and the connectors of the active stepping-stones for traced models:
    ``forward(x)`` is :meth:`SteppingStones.forward` (student and teacher once each, the
    teacher under ``no_grad`` and in eval mode, each active stone on the cached features).

    The blocks come from :meth:`TracedNet.split` (recomposition checked), the connectors
    from :func:`make_layout_connector`, so the two sides may be laid out differently
    (NCHW, NHWC, tokens).

    Raises (constructor):
        PartitionError: unequal cut counts, an illegal cut, cuts that do not recompose, a
            pair of layouts that cannot be connected, a stone outside the order's range.
    """

    def __init__(self, teacher: CutNet, student: CutNet, partition: Partition, *,
                 order: str = "shallow_first", connector: str = "conv1x1",
                 active: Sequence[int] | None = None) -> None:
        # SteppingStones' constructor reads zoo atom tables; this one sets the same state from
        # traced blocks, so the forward, train() and the BN handling are SteppingStones' own.
        nn.Module.__init__(self)
        if order not in ORDERS:
            raise PartitionError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
        if len(partition.teacher) != len(partition.student):
            raise PartitionError(f"teacher has {len(partition.teacher)} cuts but student {len(partition.student)}")
        self.order, self.num_blocks = order, partition.num_blocks
        self.teacher = teacher.model.requires_grad_(False).eval()
        self.student = student.model
        t_blocks, t_head = teacher.split(partition.teacher)
        s_blocks, s_head = student.split(partition.student)
        # Plain attributes, not submodules: blocks and heads are views over teacher/student.
        self._t_blocks, self._s_blocks = t_blocks, s_blocks
        self._t_head, self._s_head = _View(t_head), _View(s_head)
        n = self.num_blocks
        possible = range(1, n + 1) if order == "shallow_first" else range(1, n)
        self.active = list(possible) if active is None else sorted(set(active))
        if bad := [i for i in self.active if i not in possible]:
            raise PartitionError(f"stones {bad} do not exist for {order} with {n} blocks (valid: {list(possible)})")
        self._s_norms = {i: [m for block in s_blocks[i:] for m in block.modules()
                             if isinstance(m, nn.modules.batchnorm._BatchNorm)] for i in self.active}
        t_cuts = [teacher.cut(c) for c in (*partition.teacher, teacher.body_end)]
        s_cuts = [student.cut(c) for c in (*partition.student, student.body_end)]
        src, dst = (s_cuts, t_cuts) if order == "shallow_first" else (t_cuts, s_cuts)
        self.connectors = nn.ModuleDict()
        for i in self.active:
            try:
                self.connectors[str(i)] = make_layout_connector(connector, src[i - 1].layout, dst[i - 1].layout)
            except PartitionError as exc:
                raise PartitionError(f"stone {i} ({order}): cut {src[i - 1].name!r} {src[i - 1].shape} cannot be "
                                     f"connected to cut {dst[i - 1].name!r} {dst[i - 1].shape}: {exc}") from None


def stones_for(teacher: nn.Module, student: nn.Module, partition: Partition, *, order: str = "shallow_first",
               connector: str = "conv1x1", active: Sequence[int] | None = None,
               input_size: tuple[int, int, int] = (3, 32, 32)) -> SteppingStones:
    """Return the stepping-stones of a pair: the zoo's :class:`SteppingStones` when both models
    have atom tables, else :class:`TracedStones` over both models traced for ``input_size``
    (a zoo model beside an outside one is traced too; its cuts are its atoms' module paths,
    the zoo's ``stem`` being the stem's last module, e.g. ``relu``).

    Raises:
        TraceFailure: a model that cannot be traced. PartitionError: as the stones' constructors.
    """
    try:
        decompose(teacher), decompose(student)
    except TypeError:  # a model without an atom table: cut both by tracing
        return TracedStones(trace(teacher, input_size, "teacher"), trace(student, input_size, "student"), partition,
                            order=order, connector=connector, active=active)
    return SteppingStones(teacher, student, partition, order=order, connector=connector, active=active,
                          input_size=input_size)
