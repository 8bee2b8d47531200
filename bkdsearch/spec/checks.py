"""Semantic checks of a spec that pydantic cannot see: unknown architectures, input sizes,
synthetic-data options, and candidate partitions that cannot be built or connected for some
order, connector or stone set the spec allows."""

from __future__ import annotations

from typing import Any

from ..core.data import SyntheticConfig, input_size_of
from ..core.stones import SteppingStones
from ..core.zoo import decompose, list_models, model_entry
from ..errors import PartitionError
from .resolve import candidate_partition, probe_model, resolve_partition
from .schema import Choice, IntRange, Spec


def _choices(value: Any) -> list[Any]:
    return list(value.choice) if isinstance(value, Choice) else [value]


def check_spec(spec: Spec) -> list[tuple[str, str]]:
    """Return ``(path, message)`` for every semantic problem pydantic cannot see: unknown
    architectures, and candidate partitions that cannot be built or connected for some order,
    connector or stone set the spec allows."""
    problems: list[tuple[str, str]] = []
    if spec.data.dataset == "synthetic":
        try:
            SyntheticConfig.from_dict(spec.data.synthetic)
        except (TypeError, ValueError) as exc:
            problems.append(("data.synthetic", str(exc)))
    elif spec.data.synthetic:
        problems.append(("data.synthetic", f"only used with dataset: synthetic, not {spec.data.dataset}"))
    if problems:
        return problems
    known = set(list_models())
    for path, arch in (("student.arch", spec.student.arch),
                       ("teacher.arch", spec.teacher.arch if spec.teacher else None)):
        if arch is not None and arch not in known:
            problems.append((path, f"unknown model {arch!r}; known: {', '.join(sorted(known))}"))
    if problems or spec.teacher is None:
        return problems
    size = input_size_of(spec.data)
    for arch, path in ((spec.teacher.arch, "teacher.arch"), (spec.student.arch, "student.arch")):
        if model_entry(arch).input_size[1:] != size[1:] and model_entry(arch).family == "cifar":
            problems.append((path, f"{arch} is a 32x32 CIFAR model but the data gives {size[1]}x{size[2]}"))
    if problems or "blockkd" not in _choices(spec.method):
        return problems
    used = _choices(spec.blockkd.partition)
    for name in used:
        path = f"partitions.{name}"
        try:
            part = candidate_partition(spec.teacher.arch, spec.student.arch, spec.partitions[name], size)
            for order in _choices(spec.blockkd.order):
                for connector in _choices(spec.blockkd.connector):
                    for stones in _choices(spec.blockkd.stones):
                        active = None if stones == "all" else _stone_list(stones)
                        SteppingStones(probe_model(spec.teacher.arch), probe_model(spec.student.arch), part,
                                       order=order, connector=connector, active=active,
                                       input_size=size)
        except PartitionError as exc:
            problems.append((path, str(exc)))
        except (ValueError, TypeError) as exc:
            problems.append((path, f"invalid stones: {exc}"))
    return problems


def _stone_list(value: Any) -> list[int]:
    if isinstance(value, str):
        return [int(s) for s in value.split(",") if s.strip()]
    return [int(v) for v in value]


def atom_names(arch: str) -> list[str]:
    """Return the atom names of ``arch`` (for messages and `bkdsearch flops`)."""
    return decompose(probe_model(arch)).names


def describe_partition(spec: Spec, name: str) -> str:
    """Return one line on candidate partition ``name``: its number of blocks and cut atoms."""
    if spec.teacher is None:
        return "unused (no teacher)"
    part = resolve_partition(spec, name)
    return f"n={len(part.teacher) + 1} teacher {part.teacher} / student {part.student}"


def space_size(space: dict[str, Any]) -> str:
    """Return how many configurations the searched ``space`` holds, or ``continuous``."""
    size = 1
    for dist in space.values():
        if isinstance(dist, Choice):
            size *= len(dist.choice)
        elif isinstance(dist, IntRange):
            low, high = dist.int_range
            size *= (high - low) // dist.step + 1
        else:
            return "continuous"
    return str(size)
