"""Semantic checks of a spec that pydantic cannot see: unknown architectures, input sizes,
synthetic-data options, and candidate partitions that cannot be built or connected for some
order, connector or stone set the spec allows.

They need no torch: the atoms come from the stored table (:mod:`.atom_table`), the partitions
from :mod:`bkdsearch.core.recipe.cuts`, and the runtime's own refusals (``SyntheticConfig``,
``SteppingStones``, ``make_connector``) are repeated here on plain data, with the same
messages; ``tests/test_validate_fast.py`` holds each to its original.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..core.recipe.cuts import Atom, Cuts, Shape, cut_bounds
from ..errors import PartitionError
from .arch_names import ARCH_NAMES
from .atom_table import arch_facts, atoms, model_input_size, synthetic_defaults
from .limits import MAX_SYNTHETIC_VALUES, over
from .resolution import candidate_partition, resolve_partition
from .schema import Choice, IntRange, Spec


def _choices(value: Any) -> list[Any]:
    return list(value.choice) if isinstance(value, Choice) else [value]


def check_spec(spec: Spec) -> list[tuple[str, str]]:
    """Return ``(path, message)`` for every semantic problem pydantic cannot see: unknown
    architectures, synthetic data too large or too small for the models, candidate partitions
    that cannot be built or connected for some order, connector or stone set the spec allows,
    and (when all that is fine) enqueued configurations outside the search space."""
    from .enqueued import enqueue_problems

    return _model_problems(spec) or enqueue_problems(spec)


def _model_problems(spec: Spec) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if spec.data.dataset == "synthetic":
        refused = synthetic_problem(spec.data.synthetic) or synthetic_size_problem(spec.data.synthetic)
        if refused is not None:
            problems.append(("data.synthetic", refused))
    elif spec.data.synthetic:
        problems.append(("data.synthetic", f"only used with dataset: synthetic, not {spec.data.dataset}"))
    if problems:
        return problems
    for path, arch in (("student.arch", spec.student.arch),
                       ("teacher.arch", spec.teacher.arch if spec.teacher else None)):
        if arch is not None and arch not in ARCH_NAMES:
            problems.append((path, f"unknown model {arch!r}; known: {', '.join(sorted(ARCH_NAMES))}"))
    if problems:
        return problems
    size = model_input_size(spec.data)
    # The student is checked even without a teacher (method ce): a CIFAR model on 8x8 images
    # would fail every trial at its first step.
    for arch, path in ((spec.teacher.arch if spec.teacher else None, "teacher.arch"),
                       (spec.student.arch, "student.arch")):
        family, defined = arch_facts(arch) if arch is not None else (None, size)
        if defined[1:] != size[1:] and family == "cifar":
            problems.append((path, f"{arch} is a 32x32 CIFAR model but the data gives {size[1]}x{size[2]}"))
    if problems or spec.teacher is None or "blockkd" not in _choices(spec.method):
        return problems
    teacher, student = atoms(spec.teacher.arch, size), atoms(spec.student.arch, size)
    for name in _choices(spec.blockkd.partition):
        path = f"partitions.{name}"
        try:
            cuts = candidate_partition(spec.teacher.arch, spec.student.arch, spec.partitions[name], size)
            for order in _choices(spec.blockkd.order):
                for connector in _choices(spec.blockkd.connector):
                    for stones in _choices(spec.blockkd.stones):
                        active = None if stones == "all" else _stone_list(stones)
                        check_stones(teacher, student, cuts, order=order, connector=connector, active=active)
        except PartitionError as exc:
            problems.append((path, str(exc)))
        except (ValueError, TypeError) as exc:
            problems.append((path, f"invalid stones: {exc}"))
    return problems


def _stone_list(value: Any) -> list[int]:
    if isinstance(value, str):
        return [int(s) for s in value.split(",") if s.strip()]
    return [int(v) for v in value]


_SYNTHETIC_RULES: tuple[tuple[Callable[[Mapping[str, Any]], bool], str], ...] = (
    (lambda o: o["num_classes"] >= 2, "num_classes must be >= 2"),
    (lambda o: o["image_size"] >= 8, "image_size must be >= 8"),
    (lambda o: o["channels"] in (1, 3), "channels must be 1 or 3"),
    (lambda o: o["train_size"] >= 1 and o["test_size"] >= 1, "split sizes must be >= 1"),
    (lambda o: o["modes_per_class"] >= 1, "modes_per_class must be >= 1"),
    (lambda o: 1 <= o["group_size"] <= o["num_classes"], "group_size must be in 1..num_classes"),
    (lambda o: 0.0 <= o["sibling_gap"] <= 1.0, "sibling_gap must be in [0, 1]"),
    (lambda o: 0.0 <= o["mix"] < 1.0, "mix must be in [0, 1)"),
    (lambda o: o["class_tint"] >= 0, "class_tint must be >= 0"),
    (lambda o: 0.0 <= o["label_noise"] < 1.0, "label_noise must be in [0, 1)"),
    (lambda o: o["clutter"] >= 0 and o["pixel_noise"] >= 0, "noise levels must be >= 0"),
    (lambda o: 0.0 <= o["max_shift"] <= 0.5, "max_shift must be in [0, 0.5]"),
    (lambda o: 0.0 <= o["max_rotation"] <= 180.0, "max_rotation must be in [0, 180]"),
)
"""The ranges :class:`bkdsearch.core.recipe.data.SyntheticConfig` enforces, in its order."""


def synthetic_problem(options: Mapping[str, Any] | None) -> str | None:
    """Return what ``SyntheticConfig.from_dict(options)`` would refuse in the options of a
    validated spec (keys and types are the schema's), as its message says it; None when
    nothing."""
    merged = {**synthetic_defaults(), **(options or {})}
    for ok, message in _SYNTHETIC_RULES:
        if not ok(merged):
            return f"SyntheticConfig: {message}"
    return None


def synthetic_size_problem(options: Mapping[str, Any] | None) -> str | None:
    """Return why the synthetic dataset of ``options`` is too large to generate (its pixel
    values over :data:`~bkdsearch.spec.limits.MAX_SYNTHETIC_VALUES`), or None."""
    merged = {**synthetic_defaults(), **(options or {})}
    values = (merged["train_size"] + merged["test_size"]) * merged["channels"] * merged["image_size"] ** 2
    if values <= MAX_SYNTHETIC_VALUES:
        return None
    return (f"(train_size + test_size) x channels x image_size^2 = {values:,} pixel values, "
            f"{over(MAX_SYNTHETIC_VALUES)} (about 512 MiB of images); make the splits or the images smaller")


def check_stones(teacher: Sequence[Atom], student: Sequence[Atom], cuts: Cuts, *, order: str,
                 connector: str, active: Sequence[int] | None) -> None:
    """Check that ``SteppingStones`` can join the two networks (given by their atoms) at
    ``cuts`` for an ``order`` and ``connector`` the schema allows, with stones ``active``
    (None: all).

    Raises:
        PartitionError: what the ``SteppingStones`` constructor raises, with its message.
    """
    if len(cuts.teacher) != len(cuts.student):
        raise PartitionError(f"teacher has {len(cuts.teacher)} cuts but student {len(cuts.student)}")
    t_bounds = cut_bounds([name for name, _ in teacher], cuts.teacher, "teacher")
    s_bounds = cut_bounds([name for name, _ in student], cuts.student, "student")
    n = len(cuts.teacher) + 1
    possible = range(1, n + 1) if order == "shallow_first" else range(1, n)
    chosen = list(possible) if active is None else sorted(set(active))
    bad = [i for i in chosen if i not in possible]
    if bad:
        raise PartitionError(f"stones {bad} do not exist for {order} with {n} blocks (valid: {list(possible)})")
    # The features after each cut and after the last atom.
    t_shapes = [teacher[b - 1][1] for b in (*t_bounds, len(teacher))]
    s_shapes = [student[b - 1][1] for b in (*s_bounds, len(student))]
    cut_names = [*zip(cuts.teacher, cuts.student, strict=True), ("end", "end")]
    for i in chosen:
        src, dst = (s_shapes, t_shapes) if order == "shallow_first" else (t_shapes, s_shapes)
        refused = _connector_problem(connector, src[i - 1], dst[i - 1])
        if refused is not None:
            t_cut, s_cut = cut_names[i - 1]
            raise PartitionError(
                f"stone {i} ({order}): student cut {s_cut!r} {s_shapes[i - 1]} cannot be "
                f"connected to teacher cut {t_cut!r} {t_shapes[i - 1]}: {refused}"
            )


def _connector_problem(kind: str, src: Shape, dst: Shape) -> str | None:
    """What ``make_connector(kind, src, dst)`` refuses, or None."""
    if kind == "identity":
        return None if tuple(src) == tuple(dst) else f"identity connector needs equal shapes, got {src} -> {dst}"
    (_, hs, ws), (_, hd, wd) = src, dst
    if (hs, ws) == (hd, wd):
        return None
    if (hs % hd == 0 and ws % wd == 0 and hs // hd == ws // wd) or (
            hd % hs == 0 and wd % ws == 0 and hd // hs == wd // ws):
        return None
    return f"spatial size {hs}x{ws} cannot be resampled to {hd}x{wd} by an integer factor"


def atom_names(arch: str) -> list[str]:
    """Return the atom names of ``arch`` (for messages and `bkdsearch flops`).

    Raises:
        KeyError: ``arch`` is not a registered model.
    """
    return [name for name, _ in atoms(arch, arch_facts(arch)[1])]


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
