"""Reading spec files: YAML (safe loader) -> validated :class:`Spec`, with each error's line;
``--set key=value`` overrides.

A spec file must be a regular file of at most :data:`MAX_SPEC_BYTES` (a FIFO or a device
would block or never end); a key given twice in one mapping is an error naming both lines
(PyYAML would silently keep the last).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import SpecError
from .checks import check_spec
from .errors import line_of, validation_error
from .schema import Spec

MAX_SPEC_BYTES = 1_000_000
"""The largest spec file read (bytes); real specs are a few kilobytes."""

_MAX_NODES = 20_000  # YAML nodes read, or visited with aliases expanded ("billion laughs"); specs have hundreds
_MAX_DEPTH = 64  # nesting of collections; PyYAML's scanner slows down with the square of it
_SHOW_DUPLICATES = 20
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no tags that build Python objects), which also records every key
    given twice in one mapping instead of silently keeping the last value."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.paths: dict[int, str] = {}  # id(mapping node) -> its path in the spec
        self.duplicates: list[tuple[str, str, int]] = []  # (path, message, line)
        self.composed = 0

    def fetch_flow_collection_start(self, TokenClass: type) -> None:  # noqa: N803 - PyYAML's name
        """Open a ``[`` or ``{``, refusing more than ``_MAX_DEPTH`` levels."""
        if self.flow_level >= _MAX_DEPTH:
            raise yaml.scanner.ScannerError(None, None, f"values nested more than {_MAX_DEPTH} levels deep",
                                            self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column: int) -> bool:
        """Open an indented block, refusing more than ``_MAX_DEPTH`` levels."""
        if len(self.indents) >= _MAX_DEPTH:
            raise yaml.scanner.ScannerError(None, None, f"values nested more than {_MAX_DEPTH} levels deep",
                                            self.get_mark())
        return super().add_indent(column)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        """Read one node, refusing documents of more than ``_MAX_NODES`` (PyYAML reads some
        10^4-10^5 per second: a megabyte of ``[1,1,1,...]`` would take a minute)."""
        self.composed += 1
        if self.composed > _MAX_NODES:
            raise SpecError([("", f"too large: more than {_MAX_NODES} YAML values in one spec",
                              self.peek_event().start_mark.line + 1)])
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Return the mapping of ``node``, noting every key it gives twice (merged keys aside)."""
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:  # "<<: *base" then own keys: overriding is meant
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader itself refuses it below
                    continue
                if first is None:
                    seen[key] = line
                else:
                    parent = self.paths.get(id(node), "")
                    path = f"{parent}.{key}" if parent else str(key)
                    where = f"twice on line {line}" if first == line else f"at line {first} and again at line {line}"
                    self.duplicates.append((path, f"duplicate key {key!r}: given {where}", line))
        return super().construct_mapping(node, deep=deep)


class _Walk:
    """The YAML line of every path in a composed document, and the path of every mapping node;
    refuses documents that expand (through aliases) to too many nodes, or contain themselves."""

    def __init__(self, paths: dict[int, str]) -> None:
        self.lines: dict[str, int] = {}
        self.paths = paths
        self.visited = 0
        self.open: set[int] = set()

    def __call__(self, node: yaml.Node, path: str) -> None:
        self.visited += 1
        if self.visited > _MAX_NODES:
            raise SpecError([("", f"the spec expands (through YAML aliases) to more than {_MAX_NODES} values",
                              node.start_mark.line + 1)])
        if id(node) in self.open:
            raise SpecError([(path, "a YAML alias refers to a value that contains it (a recursive value)",
                              node.start_mark.line + 1)])
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            self.open.add(id(node))
            if isinstance(node, yaml.MappingNode):
                self.paths.setdefault(id(node), path)
                for key, value in node.value:
                    child = f"{path}.{key.value}" if path else str(key.value)
                    self.lines[child] = key.start_mark.line + 1
                    self(value, child)
            else:
                for i, value in enumerate(node.value):
                    self(value, f"{path}[{i}]")
            self.open.discard(id(node))


def _read_yaml(text: str) -> tuple[Any, dict[str, int]]:
    """Return the data of YAML ``text`` and the line of each of its paths.

    Raises:
        SpecError: malformed YAML, duplicate keys, nesting too deep, or too many values.
    """
    loader: _SpecLoader | None = None
    try:
        loader = _SpecLoader(text)  # its reader refuses unprintable characters at once
        node = loader.get_single_node()
        walk = _Walk(loader.paths)
        if node is not None:
            walk(node, "")
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([("", f"malformed YAML: {problem}", line)]) from None
    except RecursionError:
        raise SpecError([("", "malformed YAML: values nested too deeply", None)]) from None
    finally:
        if loader is not None:
            loader.dispose()
    assert loader is not None
    if loader.duplicates:
        shown = loader.duplicates[:_SHOW_DUPLICATES]
        more = len(loader.duplicates) - len(shown)
        raise SpecError(shown + ([("", f"and {more} more duplicate key(s)", None)] if more else []))
    return data, walk.lines


def unknown_archs(data: Any) -> list[tuple[str, str]]:
    """Return ``(path, message)`` for each ``student.arch``/``teacher.arch`` of the raw spec
    ``data`` that names no registered model."""
    from .arch_names import ARCH_NAMES

    problems = []
    for section in ("student", "teacher"):
        arch = data.get(section, {}).get("arch") if isinstance(data.get(section), dict) else None
        if isinstance(arch, str) and arch not in ARCH_NAMES:
            problems.append((f"{section}.arch", f"unknown model {arch!r}; known: {', '.join(sorted(ARCH_NAMES))}"))
    return problems


_CHECKED_SECTIONS = ("data", "teacher", "student", "method", "blockkd", "partitions")
"""The sections of a spec that :func:`bkdsearch.spec.checks.check_spec` reads."""


def _semantic_problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Return ``(path, message)`` for the unknown models of the raw spec ``data`` whose schema
    check failed and, when the sections the semantic checks read are valid by themselves (the
    errors lie elsewhere), for every problem :func:`~bkdsearch.spec.checks.check_spec` finds."""
    problems = unknown_archs(data)
    # The other sections are replaced by valid placeholders (a name, a one-epoch recipe).
    checked = {key: data[key] for key in _CHECKED_SECTIONS if key in data}
    try:
        spec = Spec.model_validate({**checked, "name": "checked", "train": {"epochs": 1}})
    except ValidationError:
        return problems
    return [*problems, *(p for p in check_spec(spec) if p not in problems)]


def parse_spec(text: str, source: str = "<spec>") -> Spec:
    """Parse YAML text into a validated :class:`Spec` (safe loader; no code runs).

    Raises:
        SpecError: malformed YAML, a key given twice in one mapping (naming both lines), or any
            invalid field (all of them, with YAML lines).
    """
    data, lines = _read_yaml(text)
    if not isinstance(data, dict):
        raise SpecError([("", "a spec is a YAML mapping (name:, data:, student:, ...)", 1)])
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        error = validation_error(exc, lines, data)
        # One pass: unknown models and the partition checks are reported with the schema's errors.
        known = {path for path, _, _ in error.errors}
        extra = [(p, m, line_of(p, lines)) for p, m in _semantic_problems(data) if p not in known]
        raise SpecError([*error.errors, *extra]) from None
    except RecursionError:
        raise SpecError([("", "values nested too deeply", None)]) from None
    problems = check_spec(spec)
    if problems:
        raise SpecError([(p, m, line_of(p, lines)) for p, m in problems])
    return spec


def file_kind(mode: int) -> str:
    """Return what a path of ``st_mode`` ``mode`` that is not a regular file is ("a directory",
    "a FIFO (named pipe)", ...), for messages."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def _refuse(path: Path, why: str) -> SpecError:
    return SpecError([("", f"cannot read spec {path}: {why}", None)])


def _check_file(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(path, f"it is {file_kind(st.st_mode)}, not a regular file")
    if st.st_size > MAX_SPEC_BYTES:
        raise _refuse(path, f"it has {st.st_size} bytes, over the limit of {MAX_SPEC_BYTES} bytes for a spec")


def read_spec_text(path: str | Path) -> str:
    """Return the text of the spec file at ``path``, after checking (before reading a byte) that
    it is a regular file of at most :data:`MAX_SPEC_BYTES` bytes.

    Raises:
        SpecError: a missing or unreadable path; a directory, FIFO, device or socket; a file
            over the size limit; text that is not UTF-8. The message says which.
    """
    path = Path(path)
    try:
        _check_file(path, os.stat(path))
        # O_NONBLOCK: should the path turn into a FIFO after the check, opening it cannot hang;
        # the check is repeated on what was opened.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        with os.fdopen(fd, "rb") as f:
            _check_file(path, os.fstat(f.fileno()))
            raw = f.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise _refuse(path, str(exc.strerror or exc)) from None
    if len(raw) > MAX_SPEC_BYTES:  # it grew after the check
        raise _refuse(path, f"it has over {MAX_SPEC_BYTES} bytes, the limit for a spec")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _refuse(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def load_spec(path: str | Path) -> Spec:
    """Read and validate the spec file at ``path``.

    Raises:
        SpecError: a path that is not a regular file, a file over :data:`MAX_SPEC_BYTES`, an
            unreadable file, malformed YAML, duplicate keys or invalid fields.
    """
    return parse_spec(read_spec_text(path), str(path))


def with_overrides(spec: Spec, overrides: dict[str, Any]) -> Spec:
    """Return ``spec`` with the ``--set`` values ``overrides`` fixed in it, checked exactly as
    the spec file is (schema, then the semantic checks: an unknown architecture, a partition
    that cannot be built, enqueued values outside the search space).

    Raises:
        SpecError: an unknown name, or an invalid value (naming it).
    """
    from .resolution import override_spec

    fixed = override_spec(spec, overrides)
    problems = check_spec(fixed)
    if problems:
        raise SpecError([(path, message, None) for path, message in problems])
    return fixed


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
            out[key.strip()] = _read_yaml(raw)[0] if raw.strip() else None
        except SpecError:
            raise SpecError([(key, f"cannot parse value {raw!r}", None)]) from None
    return out
