"""FLOP accounting with fvcore.

Convention (fvcore's): one fused multiply-add counts as ONE flop; element-wise ops
(ReLU, additions, pooling, BN folded at inference) are free. Training-step estimates assume
backward costs 2x forward for layers that learn (input and weight gradients) and 1x for
frozen layers that gradients only pass through.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

with warnings.catch_warnings():
    # fvcore scripts a focal loss at import time, which newer torch flags as deprecated.
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis

from .core.engine.data import input_size_of
from .core.engine.models import create_model
from .core.recipe.partitions import Partition
from .core.recipe.stones import SteppingStones
from .core.recipe.zoo import atom_shapes, decompose

COUNTER = "fvcore FlopCountAnalysis (1 multiply-add = 1 flop)"

# fvcore logs each op it has no handle for; those we hit (relu, add, pooling, cat) are free.
logging.getLogger("fvcore.nn.jit_handles").setLevel(logging.ERROR)
logging.getLogger("fvcore.nn.jit_analysis").setLevel(logging.ERROR)


def count_flops(module: nn.Module, input_shape: Sequence[int]) -> int:
    """Return fvcore's flop count of ``module`` on one input of shape ``input_shape`` (C,H,W)."""
    was = module.training
    module.eval()
    try:
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        x = torch.zeros(1, *input_shape, device=device)
        analysis = FlopCountAnalysis(module, (x,))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        return int(analysis.total())
    finally:
        module.train(was)


def count_params(module: nn.Module) -> int:
    """Return the number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


@functools.lru_cache(maxsize=64)
def model_flops(arch: str, input_size: tuple[int, int, int], num_classes: int = 100) -> int:
    """Return the inference flops of ``arch`` per image (cached)."""
    return count_flops(create_model(arch, num_classes=num_classes), input_size)


@functools.lru_cache(maxsize=64)
def atom_flops(arch: str, input_size: tuple[int, int, int], num_classes: int = 100) -> tuple[tuple[str, int], ...]:
    """Return ``(atom, flops)`` per atom of ``arch`` and ``("head", flops)`` last (cached)."""
    model = create_model(arch, num_classes=num_classes).eval()
    dec = decompose(model)
    shapes = atom_shapes(model, input_size)
    inputs = [tuple(input_size)] + [s for _, s in shapes]
    rows = [(name, count_flops(m, inputs[i])) for i, (name, m) in enumerate(dec.atoms)]
    rows.append(("head", count_flops(dec.head, inputs[-1])))
    return tuple(rows)


@dataclass
class FlopReport:
    """Per-image flops of a run's pieces, in fvcore's convention (see :data:`COUNTER`)."""

    counter: str
    student: int
    teacher: int | None
    student_params: int
    teacher_params: int | None
    stones: dict[str, int] = field(default_factory=dict)
    connectors: dict[str, int] = field(default_factory=dict)
    train_step: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


def run_flops(cfg: Any, num_classes: int | None = None) -> FlopReport:
    """Return the :class:`FlopReport` of a RunConfig: student inference, teacher, each
    stone's forward and the training step per image (teacher forward + student and active
    stones, forward and backward)."""
    size = input_size_of(cfg.data)
    classes = num_classes or 100
    student = create_model(cfg.student.arch, num_classes=classes)
    s_flops = model_flops(cfg.student.arch, size, classes)
    report = FlopReport(COUNTER, s_flops, None, count_params(student), None)
    step = 3 * s_flops
    if cfg.teacher is not None and cfg.method != "ce":
        teacher = create_model(cfg.teacher.arch, num_classes=classes)
        t_flops = model_flops(cfg.teacher.arch, size, classes)
        report.teacher, report.teacher_params = t_flops, count_params(teacher)
        step += t_flops
        if cfg.method == "blockkd" and cfg.blockkd is not None:
            b = cfg.blockkd
            part = Partition(tuple(b.partition.teacher), tuple(b.partition.student))
            stones = SteppingStones(teacher, student, part, order=b.order, connector=b.connector,
                                    active=b.stones, input_size=size)
            t_atoms = dict(atom_flops(cfg.teacher.arch, size, classes))
            s_atoms = dict(atom_flops(cfg.student.arch, size, classes))
            shapes = {"teacher": _block_inputs(teacher, part.teacher, size),
                      "student": _block_inputs(student, part.student, size)}
            for i in stones.active:
                conn = stones.connectors[str(i)]
                src = shapes["student" if b.order == "shallow_first" else "teacher"][i]
                c_flops = count_flops(conn, src)
                if b.order == "shallow_first":
                    rest = _suffix_flops(teacher, part.teacher, i, t_atoms)
                    step += 3 * c_flops + 2 * rest  # frozen teacher suffix: forward + input grads
                else:
                    rest = _suffix_flops(student, part.student, i, s_atoms)
                    step += 3 * (c_flops + rest)
                report.connectors[str(i)] = c_flops
                report.stones[str(i)] = c_flops + rest
    report.train_step = step
    return report


def _block_inputs(model: nn.Module, cuts: Sequence[str], size: tuple[int, int, int]) -> dict[int, tuple[int, ...]]:
    shapes = dict(atom_shapes(model, size))
    last = decompose(model).names[-1]
    return {i + 1: shapes[c] for i, c in enumerate((*cuts, last))}


def _suffix_flops(model: nn.Module, cuts: Sequence[str], i: int, per_atom: dict[str, int]) -> int:
    """Flops of blocks i+1..n plus the head (the part of a stone after connector i)."""
    names = decompose(model).names
    start = names.index(cuts[i - 1]) + 1 if i - 1 < len(cuts) else len(names)
    return sum(per_atom[n] for n in names[start:]) + per_atom["head"]


def render_flops_table(report: FlopReport, console: Any) -> None:
    """Print ``report`` as a rich table."""
    from rich.table import Table

    table = Table(title=f"FLOPs per image — {report.counter}")
    table.add_column("part")
    table.add_column("MFLOPs", justify="right")
    table.add_column("params", justify="right")
    if report.teacher is not None:
        table.add_row("teacher (inference)", f"{report.teacher / 1e6:.2f}", f"{report.teacher_params:,}")
    table.add_row("student (inference)", f"{report.student / 1e6:.2f}", f"{report.student_params:,}")
    for i, f in report.stones.items():
        table.add_row(f"stone {i} (connector {report.connectors[i] / 1e6:.2f})", f"{f / 1e6:.2f}", "")
    table.add_row("train step (fwd+bwd)", f"{report.train_step / 1e6:.2f}", "")
    console.print(table)
