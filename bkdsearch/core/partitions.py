"""Partitions: cut points, splitting a network into blocks, and the generators of candidate
partitions (``stage_aligned``, ``per_stage``, ``uniform``).

A partition names n-1 cut atoms on each side; block k runs the atoms after cut k-1 up to
and including cut k (DESIGN.md, "Atoms and partitions").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from .errors import PartitionError
from .zoo.atoms import Chain, Decomposition, atom_shapes, decompose

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Partition:
    """Cut atoms on each side; both lists have n-1 names for n blocks."""

    teacher: tuple[str, ...]
    student: tuple[str, ...]

    @property
    def num_blocks(self) -> int:
        """Return n, the number of blocks on each side."""
        return len(self.teacher) + 1


def split_blocks(dec: Decomposition, cuts: Sequence[str], side: str = "model") -> list[Chain]:
    """Return the n blocks of ``dec`` cut after each atom in ``cuts`` (in order).

    Raises:
        PartitionError: unknown atom, cuts out of order or repeated, or a cut after the
            last atom (the last block would be empty).
    """
    names = dec.names
    bounds = []
    for cut in cuts:
        if cut not in names:
            raise PartitionError(f"{side} has no atom {cut!r}; its atoms are {', '.join(names)}")
        bounds.append(names.index(cut) + 1)
    if any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)):
        raise PartitionError(f"{side} cuts must be distinct and in network order: {list(cuts)}")
    if bounds and bounds[-1] >= len(names):
        raise PartitionError(f"{side} cut {cuts[-1]!r} is the last atom: the last block would be empty")
    edges = [0, *bounds, len(names)]
    return [Chain(*(m for _, m in dec.atoms[a:b])) for a, b in zip(edges, edges[1:], strict=False)]


def cut_shapes(model: nn.Module, cuts: Sequence[str], input_size: Shape) -> list[Shape]:
    """Return the feature shape after each cut and after the last atom (n shapes)."""
    shapes = dict(atom_shapes(model, input_size))
    last = decompose(model).names[-1]
    return [shapes[c] for c in (*cuts, last)]


def resolution_changes(model: nn.Module, input_size: Shape) -> list[tuple[str, int]]:
    """Return ``(atom, spatial size)`` for each atom after which the resolution changes."""
    shapes = atom_shapes(model, input_size)
    return [
        (name, shape[-1])
        for (name, shape), (_, nxt) in zip(shapes, shapes[1:], strict=False)
        if nxt[-2:] != shape[-2:]
    ]


def stage_aligned(teacher: nn.Module, student: nn.Module, input_size: Shape) -> Partition:
    """Return the partition cutting both networks where they leave the same resolution.

    For resnet110 -> resnet32 at 32x32 this is ``[layer1.17, layer2.17]`` /
    ``[layer1.4, layer2.4]``. Heterogeneous pairs are cut at the resolutions both share.
    """
    t_ends = dict((size, name) for name, size in reversed(resolution_changes(teacher, input_size)))
    s_ends = dict((size, name) for name, size in reversed(resolution_changes(student, input_size)))
    common = [size for size in t_ends if size in s_ends]
    common.sort(reverse=True)
    return Partition(tuple(t_ends[s] for s in common), tuple(s_ends[s] for s in common))


def _spread(names: Sequence[str], start: int, stop: int, pieces: int) -> list[str]:
    """Return pieces-1 cut names splitting names[start:stop] into near-equal runs."""
    length = stop - start
    return [names[start + round(j * length / pieces) - 1] for j in range(1, pieces)]


def per_stage(teacher: nn.Module, student: nn.Module, input_size: Shape, k: int) -> Partition:
    """Return the stage-aligned partition with each stage further cut into ``k`` near-equal
    runs of atoms (n = stages * k blocks).

    Raises:
        PartitionError: a stage has fewer than k atoms on one side.
    """
    base = stage_aligned(teacher, student, input_size)
    out = []
    for model, cuts in ((teacher, base.teacher), (student, base.student)):
        names = decompose(model).names
        edges = [0, *(names.index(c) + 1 for c in cuts), len(names)]
        result: list[str] = []
        for a, b in zip(edges, edges[1:], strict=False):
            if b - a < k:
                raise PartitionError(f"a stage of {b - a} atoms cannot be cut into {k} blocks")
            result += _spread(names, a, b, k)
            if b < len(names):
                result.append(names[b - 1])
        out.append(tuple(result))
    return Partition(*out)


def uniform(teacher: nn.Module, student: nn.Module, n: int) -> Partition:
    """Return the partition cutting both networks at the same fractions of their atom lists
    into ``n`` blocks.

    Raises:
        PartitionError: a network has fewer than n atoms.
    """
    cuts = []
    for model in (teacher, student):
        names = decompose(model).names
        if len(names) < n:
            raise PartitionError(f"{len(names)} atoms cannot form {n} blocks")
        cuts.append(tuple(_spread(names, 0, len(names), n)))
    return Partition(*cuts)


def build_partition(teacher: nn.Module, student: nn.Module, candidate: str | Mapping[str, Any],
                    input_size: Shape) -> Partition:
    """Return the concrete partition of ``candidate`` for a teacher/student pair:
    ``"stage_aligned"``, ``{"teacher": [...], "student": [...]}`` (explicit cut atoms),
    ``{"per_stage": k}`` or ``{"uniform": n}``.

    Raises:
        PartitionError: the generator cannot produce it for this pair, or an unknown form.
    """
    if candidate == "stage_aligned":
        part = stage_aligned(teacher, student, input_size)
        if not part.teacher:
            raise PartitionError("the two networks share no resolution change to cut at")
        return part
    if not isinstance(candidate, Mapping):
        raise PartitionError(f"unknown partition {candidate!r}")
    if candidate.get("teacher") is not None:
        return Partition(tuple(candidate["teacher"]), tuple(candidate["student"]))
    if candidate.get("per_stage") is not None:
        return per_stage(teacher, student, input_size, int(candidate["per_stage"]))
    if candidate.get("uniform") is not None:
        return uniform(teacher, student, int(candidate["uniform"]))
    raise PartitionError(f"unknown partition {dict(candidate)!r}")
