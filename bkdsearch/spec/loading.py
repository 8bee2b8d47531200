"""Reading spec files: YAML (safe loader) -> validated :class:`Spec`, with each error's line;
``--set key=value`` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import SpecError
from .checks import check_spec
from .errors import line_of, validation_error
from .schema import Spec


def _node_lines(node: yaml.Node, path: str, out: dict[str, int]) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = f"{path}.{key.value}" if path else str(key.value)
            out[child] = key.start_mark.line + 1
            _node_lines(value, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            _node_lines(value, f"{path}[{i}]", out)


def parse_spec(text: str, source: str = "<spec>") -> Spec:
    """Parse YAML text into a validated :class:`Spec` (safe loader; no code runs).

    Raises:
        SpecError: malformed YAML or any invalid field (all of them, with YAML lines).
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([("", f"malformed YAML: {problem}", line)]) from None
    if not isinstance(data, dict):
        raise SpecError([("", "a spec is a YAML mapping (name:, data:, student:, ...)", 1)])
    lines: dict[str, int] = {}
    if node is not None:
        _node_lines(node, "", lines)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, lines, data) from None
    problems = check_spec(spec)
    if problems:
        raise SpecError([(p, m, line_of(p, lines)) for p, m in problems])
    return spec


def load_spec(path: str | Path) -> Spec:
    """Read and validate the spec file at ``path``.

    Raises:
        SpecError: unreadable file, malformed YAML or invalid fields.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        detail = getattr(exc, "strerror", None) or exc
        raise SpecError([("", f"cannot read spec {path}: {detail}", None)]) from None
    return parse_spec(text, str(path))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are YAML scalars/lists (``0.1``, ``[1,2]``, ``dkd``).

    Raises:
        SpecError: an item without ``=`` or with an unparsable value.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError([(item, "expected key=value", None)])
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise SpecError([(key, f"cannot parse value {raw!r}", None)]) from None
    return out
