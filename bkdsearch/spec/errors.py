"""Pydantic validation errors -> :class:`bkdsearch.errors.SpecError`: one line per bad field,
with its path and YAML line, and only the errors of the form the user evidently meant."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from ..errors import SpecError


def validation_error(exc: ValidationError, lines: Mapping[str, int] | None = None,
                     data: Any = None) -> SpecError:
    """Return the :class:`SpecError` of a pydantic error, each location mapped to its YAML line.

    Where a value may take several forms (a number or a distribution, say), only the
    errors of the form the user evidently meant are kept (``{float: ...}`` means a
    float range); a value that fits no form gets one message listing the forms.
    """
    plain: list[tuple[tuple[Any, ...], str, str]] = []
    unions: dict[tuple[Any, ...], dict[str, list[tuple[tuple[Any, ...], str, str]]]] = {}
    for err in exc.errors():
        loc = tuple(err["loc"])
        cut = next((i for i, item in enumerate(loc) if _is_tag(item)), None)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling)"
        if cut is None:
            plain.append((loc, msg, err["type"]))
        else:
            # After the member's tag come its own field names ("float" of {float: [...]}).
            rest = tuple(i for i in loc[cut + 1:] if not _is_generated_tag(i))
            unions.setdefault(loc[:cut], {}).setdefault(_member_name(loc[cut]), []).append(
                (loc[:cut] + rest, msg, err["type"]))
    for where, members in unions.items():
        value = _value_at(data, where)
        meant = _meant_member(value, members)
        if meant is not None:
            plain += members[meant]
        elif isinstance(value, float) and not math.isfinite(value):
            plain.append((where, f"invalid value {value!r}: must be a finite number", "finite_number"))
        else:
            forms = " | ".join(_FORM_NAMES.get(m, m) for m in members)
            plain.append((where, f"invalid value {value!r}: expected {forms}", "union"))
    errors: list[tuple[str, str, int | None]] = []
    seen = set()
    for loc, msg, _ in plain:
        path = _loc_path(loc)
        if (path, msg) not in seen:
            seen.add((path, msg))
            errors.append((path, msg, line_of(path, lines or {})))
    return SpecError(errors)


_FORM_NAMES = {"FloatRange": "{float: [low, high]}", "IntRange": "{int: [low, high]}",
               "Choice": "{choice: [...]}", "ExplicitPartition": "{teacher: [...], student: [...]}",
               "GeneratedPartition": "{per_stage: k} or {uniform: n}", "float": "a number",
               "int": "an integer", "bool": "true/false", "str": "a string", "list[int]": "a list of integers"}


_MEMBER_KEYS = {"FloatRange": {"float"}, "IntRange": {"int"}, "Choice": {"choice"},
                "ExplicitPartition": {"teacher", "student"}, "GeneratedPartition": {"per_stage", "uniform"}}


def _member_name(tag: str) -> str:
    """``function-after[_check(), FloatRange]`` -> ``FloatRange``."""
    if tag.startswith("function-"):
        return tag.rsplit(", ", 1)[-1].rstrip("]")
    return tag


def _is_tag(item: Any) -> bool:
    return isinstance(item, str) and (item in _FORM_NAMES or _is_generated_tag(item))


def _is_generated_tag(item: Any) -> bool:
    return isinstance(item, str) and item.startswith(("literal[", "function-"))


def _value_at(data: Any, loc: tuple[Any, ...]) -> Any:
    for key in loc:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _meant_member(value: Any, members: Mapping[str, Any]) -> str | None:
    if isinstance(value, dict):
        for member, keys in _MEMBER_KEYS.items():
            if member in members and keys & set(value):
                return member
    return None


def _loc_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif not _is_generated_tag(item):
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def line_of(path: str, lines: Mapping[str, int]) -> int | None:
    """Return the YAML line of ``path`` (``train.lr.float[0]``), else of its nearest enclosing
    key found in ``lines``; None when there is none."""
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return None
