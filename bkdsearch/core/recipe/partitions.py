"""Partitions: cut points, splitting a network into blocks, and the generators of candidate
partitions (``stage_aligned``, ``per_stage``, ``uniform``) applied to models.

A partition names n-1 cut atoms on each side; block k runs the atoms after cut k-1 up to
and including cut k (docs/design.md, "Atoms and partitions"). The generators themselves work on
plain atom lists in :mod:`bkdsearch.core.recipe.cuts` (no torch), which the spec checks share.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from .cuts import build_cuts, cut_bounds, per_stage_cuts, resolution_changes_of, stage_aligned_cuts, uniform_cuts
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
    edges = [0, *cut_bounds(dec.names, cuts, side), len(dec.names)]
    return [Chain(*(m for _, m in dec.atoms[a:b])) for a, b in itertools.pairwise(edges)]


def cut_shapes(model: nn.Module, cuts: Sequence[str], input_size: Shape) -> list[Shape]:
    """Return the feature shape after each cut and after the last atom (n shapes)."""
    shapes = dict(atom_shapes(model, input_size))
    last = decompose(model).names[-1]
    return [shapes[c] for c in (*cuts, last)]


def resolution_changes(model: nn.Module, input_size: Shape) -> list[tuple[str, int]]:
    """Return ``(atom, spatial size)`` for each atom after which the resolution changes."""
    return resolution_changes_of(atom_shapes(model, input_size))


def stage_aligned(teacher: nn.Module, student: nn.Module, input_size: Shape) -> Partition:
    """Return the partition cutting both networks where they leave the same resolution.

    For resnet110 -> resnet32 at 32x32 this is ``[layer1.17, layer2.17]`` /
    ``[layer1.4, layer2.4]``. Heterogeneous pairs are cut at the resolutions both share.
    """
    return Partition(*stage_aligned_cuts(atom_shapes(teacher, input_size), atom_shapes(student, input_size)))


def per_stage(teacher: nn.Module, student: nn.Module, input_size: Shape, k: int) -> Partition:
    """Return the stage-aligned partition with each stage further cut into ``k`` near-equal
    runs of atoms (n = stages * k blocks).

    Raises:
        PartitionError: a stage has fewer than k atoms on one side.
    """
    return Partition(*per_stage_cuts(atom_shapes(teacher, input_size), atom_shapes(student, input_size), k))


def uniform(teacher: nn.Module, student: nn.Module, n: int) -> Partition:
    """Return the partition cutting both networks at the same fractions of their atom lists
    into ``n`` blocks.

    Raises:
        PartitionError: a network has fewer than n atoms.
    """
    return Partition(*uniform_cuts(decompose(teacher).names, decompose(student).names, n))


def build_partition(teacher: nn.Module, student: nn.Module, candidate: str | Mapping[str, Any],
                    input_size: Shape) -> Partition:
    """Return the concrete partition of ``candidate`` for a teacher/student pair:
    ``"stage_aligned"``, ``{"teacher": [...], "student": [...]}`` (explicit cut atoms),
    ``{"per_stage": k}`` or ``{"uniform": n}``.

    Raises:
        PartitionError: the generator cannot produce it for this pair, or an unknown form.
    """
    return Partition(*build_cuts(atom_shapes(teacher, input_size), atom_shapes(student, input_size), candidate))
