"""Partitions as plain data: cut validation and the generators of candidate partitions
(``stage_aligned``, ``per_stage``, ``uniform``) over a network's atoms given as ``(name, output
shape)`` pairs, so that a spec can be checked without building a model or importing torch.

:mod:`bkdsearch.core.recipe.partitions` applies these generators to models; the spec checks apply
them to the zoo's stored atom table (:mod:`bkdsearch.spec.atom_table`). A partition names n-1
cut atoms on each side; block k runs the atoms after cut k-1 up to and including cut k
(docs/design.md, "Atoms and partitions").
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from .errors import PartitionError

Shape = tuple[int, ...]

Atom = tuple[str, Shape]
"""One atom: its name and the shape of its output without the batch, (C, H, W)."""


class Cuts(NamedTuple):
    """Cut atoms on each side; both tuples have n-1 names for n blocks."""

    teacher: tuple[str, ...]
    student: tuple[str, ...]


def cut_bounds(names: Sequence[str], cuts: Sequence[str], side: str = "model") -> list[int]:
    """Return, for each cut, the position in ``names`` right after it (where its block ends).

    Raises:
        PartitionError: unknown atom, cuts out of order or repeated, or a cut after the
            last atom (the last block would be empty).
    """
    bounds = []
    for cut in cuts:
        if cut not in names:
            raise PartitionError(f"{side} has no atom {cut!r}; its atoms are {', '.join(names)}")
        bounds.append(names.index(cut) + 1)
    if any(b <= a for a, b in itertools.pairwise(bounds)):
        raise PartitionError(f"{side} cuts must be distinct and in network order: {list(cuts)}")
    if bounds and bounds[-1] >= len(names):
        raise PartitionError(f"{side} cut {cuts[-1]!r} is the last atom: the last block would be empty")
    return bounds


def resolution_changes_of(atoms: Sequence[Atom]) -> list[tuple[str, int]]:
    """Return ``(atom, spatial size)`` for each atom after which the resolution changes."""
    return [
        (name, shape[-1])
        for (name, shape), (_, nxt) in itertools.pairwise(atoms)
        if nxt[-2:] != shape[-2:]
    ]


def stage_aligned_cuts(teacher: Sequence[Atom], student: Sequence[Atom]) -> Cuts:
    """Return the cuts where both networks leave the same resolution (heterogeneous pairs are
    cut at the resolutions both share); none when they share no resolution change."""
    t_ends = dict((size, name) for name, size in reversed(resolution_changes_of(teacher)))
    s_ends = dict((size, name) for name, size in reversed(resolution_changes_of(student)))
    common = sorted((size for size in t_ends if size in s_ends), reverse=True)
    return Cuts(tuple(t_ends[s] for s in common), tuple(s_ends[s] for s in common))


def _spread(names: Sequence[str], start: int, stop: int, pieces: int) -> list[str]:
    """Return pieces-1 cut names splitting names[start:stop] into near-equal runs."""
    length = stop - start
    return [names[start + round(j * length / pieces) - 1] for j in range(1, pieces)]


def per_stage_cuts(teacher: Sequence[Atom], student: Sequence[Atom], k: int) -> Cuts:
    """Return the stage-aligned cuts with each stage further cut into ``k`` near-equal runs of
    atoms (n = stages * k blocks).

    Raises:
        PartitionError: a stage has fewer than k atoms on one side.
    """
    base = stage_aligned_cuts(teacher, student)
    out = []
    for atoms, cuts in ((teacher, base.teacher), (student, base.student)):
        names = [name for name, _ in atoms]
        edges = [0, *(names.index(c) + 1 for c in cuts), len(names)]
        result: list[str] = []
        for a, b in itertools.pairwise(edges):
            if b - a < k:
                raise PartitionError(f"a stage of {b - a} atoms cannot be cut into {k} blocks")
            result += _spread(names, a, b, k)
            if b < len(names):
                result.append(names[b - 1])
        out.append(tuple(result))
    return Cuts(*out)


def uniform_cuts(teacher: Sequence[str], student: Sequence[str], n: int) -> Cuts:
    """Return the cuts splitting both atom name lists at the same fractions into ``n`` blocks.

    Raises:
        PartitionError: a network has fewer than n atoms.
    """
    out = []
    for names in (teacher, student):
        if len(names) < n:
            raise PartitionError(f"{len(names)} atoms cannot form {n} blocks")
        out.append(tuple(_spread(names, 0, len(names), n)))
    return Cuts(*out)


def build_cuts(teacher: Sequence[Atom], student: Sequence[Atom], candidate: str | Mapping[str, Any]) -> Cuts:
    """Return the cuts of ``candidate`` for a teacher/student pair given by their atoms:
    ``"stage_aligned"``, ``{"teacher": [...], "student": [...]}`` (explicit cut atoms, returned
    unchecked: :func:`cut_bounds` checks them), ``{"per_stage": k}`` or ``{"uniform": n}``.

    Raises:
        PartitionError: the generator cannot produce it for this pair, or an unknown form.
    """
    if candidate == "stage_aligned":
        cuts = stage_aligned_cuts(teacher, student)
        if not cuts.teacher:
            raise PartitionError("the two networks share no resolution change to cut at")
        return cuts
    if not isinstance(candidate, Mapping):
        raise PartitionError(f"unknown partition {candidate!r}")
    if candidate.get("teacher") is not None:
        return Cuts(tuple(candidate["teacher"]), tuple(candidate["student"]))
    if candidate.get("per_stage") is not None:
        return per_stage_cuts(teacher, student, int(candidate["per_stage"]))
    if candidate.get("uniform") is not None:
        return uniform_cuts([name for name, _ in teacher], [name for name, _ in student], int(candidate["uniform"]))
    raise PartitionError(f"unknown partition {dict(candidate)!r}")
