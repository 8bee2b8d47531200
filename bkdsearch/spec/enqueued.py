"""``search.enqueue``: the configurations a study tries first, checked against the search space
when the spec is validated (each key a searched parameter, each value inside its range or
among its choices) and resolved once, so that a bad one is refused before any trial instead
of training to NaN, being silently ignored, or failing a trial."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import PartitionError, SpecError
from .schema import Choice, Distribution, FloatRange, IntRange, Spec


def encoded(value: Any) -> Any:
    """Return a choice as Optuna stores it: a list becomes its ``"1,2"``-style string."""
    return ",".join(str(v) for v in value) if isinstance(value, list) else value


def value_problem(value: Any, dist: Distribution) -> str | None:
    """Return why ``value`` is not one ``dist`` can take (as an enqueued parameter), or None."""
    if isinstance(dist, Choice):
        choices = [encoded(c) for c in dist.choice]
        same = [c for c in choices if c == value and isinstance(c, bool) == isinstance(value, bool)]
        return None if same else f"{value!r} is not one of the choices {choices}"
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(dist, IntRange):
        low, high = dist.int_range
        if not number or value != int(value):
            return f"{value!r} is not an integer in [{low}, {high}]"
        if not low <= value <= high:
            return f"{value!r} is outside the searched range [{low}, {high}]"
        if (int(value) - low) % dist.step:
            return f"{value!r} is not on the searched grid {low}, {low + dist.step}, ... (step {dist.step})"
        return None
    assert isinstance(dist, FloatRange)
    low, high = dist.float_range
    if not number:
        return f"{value!r} is not a number in [{low:g}, {high:g}]"
    if not low <= value <= high:
        return f"{value!r} is outside the searched range [{low:g}, {high:g}]"
    return None


class _Enqueued:
    """A :class:`bkdsearch.spec.Suggest` answering with an enqueued configuration's values
    (decoded as :class:`bkdsearch.search.study.TrialSuggest` decodes them), and the default
    of any parameter it does not name."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = params

    def __call__(self, name: str, dist: Distribution) -> Any:
        if name not in self.params:
            return dist.fallback()
        value = self.params[name]
        if isinstance(dist, Choice):
            return dist.choice[[encoded(c) for c in dist.choice].index(value)]
        return int(value) if isinstance(dist, IntRange) else float(value)


def enqueue_problems(spec: Spec) -> list[tuple[str, str]]:
    """Return ``(path, message)`` for every enqueued configuration of ``spec`` that names a
    parameter the spec does not search, gives a value outside its range or choices, or
    does not resolve to a run (a partition that cannot be built for it, say)."""
    from .resolution import parameter_names, resolve, searched

    space = searched(spec)
    known = set(parameter_names(spec))
    problems: list[tuple[str, str]] = []
    for i, params in enumerate(spec.search.enqueue):
        where = f"search.enqueue[{i}]"
        found = []
        for name, value in params.items():
            if name not in space:
                why = ("is fixed by the spec, not searched" if name in known
                       else "is no parameter")
                found.append((f"{where}.{name}", f"{why}; the searched ones: {', '.join(space) or 'none'}"))
                continue
            problem = value_problem(value, space[name])
            if problem:
                found.append((f"{where}.{name}", problem))
        if not found:
            try:
                resolve(spec, _Enqueued(params))
            except (SpecError, PartitionError, ValueError, TypeError) as exc:
                found.append((where, f"does not resolve to a run: {str(exc).splitlines()[0]}"))
        problems += found
    return problems
