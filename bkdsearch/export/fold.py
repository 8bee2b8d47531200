"""Fold a trial's fixed configuration into the code it runs: ``if`` chains the configuration
decides keep only the branch taken.

In the runtime, a parameter ``cfg: RunConfig`` is the run's configuration, and so is
``self.cfg`` in a class whose ``__init__`` takes one and stores it. An exported script holds
one configuration, and its flags change only a few values (``FLAG_KEYS`` of
:mod:`bkdsearch.export.script`); the rest is fixed. A test built from those fixed values
(attributes of ``cfg``, constants, ``==``/``in``/``is``/``not``/``and``/``or``) is decided
when the script is written, so the script holds the branch taken, and what only the other
branches use (SyncBN for a run without it, DKD for a KL run) is never reached.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .rules import RUN_CONFIG

Rewrite = Callable[[list[str]], list[str]]
"""Lines of the source (names already renamed) -> what the script holds in their place."""
_UNKNOWN = object()
_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b, ast.Is: operator.is_, ast.IsNot: operator.is_not,
}


@dataclass(frozen=True)
class Fold:
    """One decided ``if`` chain: ``node`` (its first ``if``) becomes ``keep`` (the statements
    of the branch taken, none when no branch is), or, when a later ``elif`` is not decided, the
    chain from ``rest`` on (that ``elif`` written as ``if``)."""

    node: ast.If
    keep: list[ast.stmt]
    rest: ast.If | None
    dead: tuple[ast.AST, ...]
    """The tests and branches the script leaves out (nothing in them is reached)."""
    cut: tuple[int, int, Rewrite]
    """The chain's source lines (0-based, end exclusive) and what the script holds in their place."""


def fixed_values(config: Mapping[str, Any], changeable: set[str]) -> dict[str, Any]:
    """Return every dotted path of ``config`` (``runtime.sync_bn``, ``teacher``...) whose value
    no key of ``changeable`` (dotted paths a script's flags set) can change."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if not any(k == prefix or k.startswith(prefix + ".") or prefix.startswith(k + ".") for k in changeable):
            out[prefix] = value
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{prefix}.{key}", item)

    for key, value in config.items():
        walk(key, value)
    return out


def folds(tree: ast.Module, lines: list[str], fixed: Mapping[str, Any]) -> list[Fold]:
    """Return the decided ``if`` chains in ``tree`` (parsed from the source ``lines``) for the
    configuration values ``fixed``, each with its :attr:`Fold.cut`.

    Only outermost chains fold (one inside a folded branch stays as written), and a chain is
    left alone when folding would empty the block holding it or its branch cannot be moved left.
    """
    out: list[Fold] = []
    for scope, roots in _scopes(tree):
        for block in _blocks(scope):
            for node in block:
                decided = _decide(node, lines, roots, fixed) if isinstance(node, ast.If) else None
                if decided is None or not (decided[0] or decided[1] is not None or len(block) > 1):
                    continue
                if (cut := _render(node, *decided[:2], lines)) is not None:
                    out.append(Fold(node, *decided, cut))
    return out


def _scopes(tree: ast.Module) -> Iterator[tuple[ast.AST, frozenset[str]]]:
    """Each function of ``tree`` in which ``cfg`` (or ``self.cfg``) is a RunConfig, with those
    names."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
            stores = init is not None and _takes_config(init) and any(
                isinstance(n, ast.Assign) and ast.unparse(n).replace(" ", "") == "self.cfg=cfg"
                for n in ast.walk(init))
            for method in node.body:
                if isinstance(method, ast.FunctionDef):
                    roots = {"self.cfg"} if stores else set()
                    if _takes_config(method):
                        roots.add("cfg")
                    if roots:
                        yield method, frozenset(roots)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and _takes_config(node):
            yield node, frozenset({"cfg"})


def _takes_config(fn: ast.FunctionDef) -> bool:
    args = [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]
    typed = any(a.arg == "cfg" and a.annotation is not None and ast.unparse(a.annotation) == RUN_CONFIG for a in args)
    rebound = any(isinstance(n, ast.Name) and n.id == "cfg" and isinstance(n.ctx, ast.Store) for n in ast.walk(fn))
    return typed and not rebound


def _blocks(fn: ast.FunctionDef) -> Iterator[list[ast.stmt]]:
    """The statement lists of ``fn``'s body, not entering nested functions, classes or ``if``
    statements (their insides are another chain's branch)."""
    todo: list[list[ast.stmt]] = [fn.body]
    while todo:
        block = todo.pop()
        yield block
        for node in block:
            if isinstance(node, ast.If | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
                continue
            for name in ("body", "orelse", "finalbody"):
                inner = getattr(node, name, None)
                if isinstance(inner, list) and inner and isinstance(inner[0], ast.stmt):
                    todo.append(inner)
            for handler in getattr(node, "handlers", []):
                todo.append(handler.body)


def _decide(node: ast.If, lines: list[str], roots: frozenset[str],
            fixed: Mapping[str, Any]) -> tuple[list[ast.stmt], ast.If | None, tuple[ast.AST, ...]] | None:
    """``(keep, rest, dead)`` of :class:`Fold` for the chain starting at ``node``; None when
    its first test is not decided."""
    dead: list[ast.AST] = []
    branch: ast.If | None = node
    while branch is not None:
        truth = _truth(branch.test, roots, fixed)
        if truth is None:
            return None if branch is node else ([], branch, tuple(dead))
        dead.append(branch.test)
        taken = branch.body if truth else None
        orelse = branch.orelse
        elif_ = orelse[0] if len(orelse) == 1 and _is_elif(orelse[0], lines) else None
        if taken is not None:
            dead.extend(orelse)
            return taken, None, tuple(dead)
        dead.extend(branch.body)
        if elif_ is None:
            return orelse, None, tuple(dead)
        branch = elif_
    return None


def _is_elif(node: ast.stmt, lines: list[str]) -> bool:
    """True for an ``elif``: the syntax tree alone cannot tell it from ``else:`` + ``if``."""
    return isinstance(node, ast.If) and lines[node.lineno - 1][node.col_offset:].startswith("elif")


def _truth(expr: ast.expr, roots: frozenset[str], fixed: Mapping[str, Any]) -> bool | None:
    """True or False when ``fixed`` decides ``expr``'s truth; None when it does not."""
    if isinstance(expr, ast.BoolOp):
        values = [_truth(v, roots, fixed) for v in expr.values]
        decisive = isinstance(expr.op, ast.Or)  # the value that decides the whole: True for or
        if decisive in values:
            return decisive
        return None if None in values else not decisive
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Not):
        inner = _truth(expr.operand, roots, fixed)
        return None if inner is None else not inner
    if isinstance(expr, ast.Compare):
        left = _value(expr.left, roots, fixed)
        for op, comparator in zip(expr.ops, expr.comparators, strict=True):
            right = _value(comparator, roots, fixed)
            compare = _COMPARE.get(type(op))
            if left is _UNKNOWN or right is _UNKNOWN or compare is None:
                return None
            if isinstance(op, ast.Is | ast.IsNot) and right is not None:
                return None  # identity is only known for None
            if not compare(left, right):
                return False
            left = right
        return True
    value = _value(expr, roots, fixed)
    return None if value is _UNKNOWN else bool(value)


def _value(expr: ast.expr, roots: frozenset[str], fixed: Mapping[str, Any]) -> Any:
    if isinstance(expr, ast.Constant):
        return expr.value
    if isinstance(expr, ast.Tuple | ast.List):
        items = [_value(e, roots, fixed) for e in expr.elts]
        return _UNKNOWN if any(i is _UNKNOWN for i in items) else tuple(items)
    attrs: list[str] = []
    while isinstance(expr, ast.Attribute):
        attrs.append(expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name):
        return _UNKNOWN
    dotted = ".".join([expr.id, *reversed(attrs)])  # "self.cfg.runtime.sync_bn"
    root = next((r for r in roots if dotted.startswith(r + ".")), None)
    return _UNKNOWN if root is None else fixed.get(dotted[len(root) + 1:], _UNKNOWN)


def _render(node: ast.If, keep: list[ast.stmt], rest: ast.If | None,
            lines: list[str]) -> tuple[int, int, Rewrite] | None:
    """Return ``(start, end, rewrite)`` for the chain at ``node`` in the module's source
    ``lines``: its lines (0-based, end exclusive), and ``rewrite`` taking those lines as they
    are now (names already renamed) to what the script holds; None when the branch taken
    cannot be moved left (a line not indented as its block, such as a string at the margin)."""
    start, end = node.lineno - 1, node.end_lineno or node.lineno
    if rest is not None:
        skip, column = rest.lineno - 1 - start, rest.col_offset

        def restart(text: list[str]) -> list[str]:
            head = text[skip]
            return [head[:column] + head[column:].replace("elif", "if", 1), *text[skip + 1:]]

        return start, end, restart
    if not keep:
        return start, end, lambda text: []
    keep_from = keep[0].lineno - 1
    while lines[keep_from - 1].lstrip().startswith("#"):  # the comments heading the branch
        keep_from -= 1
    keep_to = keep[-1].end_lineno or keep[-1].lineno
    shift = keep[0].col_offset - node.col_offset
    if any(line.strip() and not line.startswith(" " * shift) for line in lines[keep_from:keep_to]):
        return None

    def dedent(text: list[str]) -> list[str]:
        return [line[shift:] if line.strip() else "" for line in text[keep_from - start:keep_to - start]]

    return start, end, dedent
