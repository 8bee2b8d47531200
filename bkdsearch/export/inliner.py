"""Inline the part of bkdsearch's runtime that a trial reaches into one script.

The exporter follows the code rather than tables: from a few root definitions (the script's
``main``, the trial's model builders and method) it walks every name those definitions use,
through ``from .x import y`` chains, to the module that defines it, and keeps exactly the
top-level definitions reached (a fixpoint over names), with the import-time statements of the
modules kept (registration loops). A method of a kept class is kept only when kept code names
it (an attribute, a name or a string: ``getattr(model, "decompose")`` counts), when it is a
dunder, or when an outside base class has that attribute (torch calls ``forward``); branches
the trial's fixed configuration rules out are never walked (:mod:`bkdsearch.export.fold`).
Names defined in two kept modules are renamed on inlining. Imports are merged by module, and
anything but torch, torchvision, numpy, PIL and the standard library is refused, lazy imports
included.
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ExportError
from .fold import Fold, Rewrite, folds
from .layout import docstring_summary, is_stdlib, refill
from .rules import ALLOWED_THIRD_PARTY

PACKAGE = "bkdsearch"
_PACKAGE_DIR = Path(__file__).resolve().parent.parent


@dataclass
class Module:
    """One parsed package module: its top-level definitions, imports and import-time code."""

    name: str
    path: Path
    source: str
    tree: ast.Module
    defs: dict[str, list[ast.stmt]] = field(default_factory=dict)
    package_imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    """local name -> (module, name in it; None when the local name is the module itself)."""
    external: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    """local name -> (third-party or stdlib module, imported name; None for ``import x``)."""
    statements: list[ast.stmt] = field(default_factory=list)
    """Top-level code that runs at import time (registration loops and calls)."""
    folds: list[Fold] = field(default_factory=list)
    """The ``if`` chains the trial's fixed configuration decides, whose tests and branches not
    taken are ``dead`` (by ``id``): :mod:`bkdsearch.export.fold`."""
    dead: set[int] = field(default_factory=set)

    @property
    def doc(self) -> str:
        """Return the first paragraph of the module docstring, on one line ('' when none)."""
        text = (ast.get_docstring(self.tree) or "").strip()
        return " ".join(text.split("\n\n")[0].split())


def _root(module: str) -> str:
    return module.split(".")[0]


def check_external(module: str, where: str) -> None:
    """Raise :class:`ExportError` unless ``module`` may be imported by an exported script."""
    if _root(module) not in ALLOWED_THIRD_PARTY and not is_stdlib(module):
        raise ExportError(f"{where} imports {module}, which an exported script cannot use")


def module_path(name: str) -> Path:
    """Return the source file of the package module ``name`` (``bkdsearch.core.recipe.losses``)."""
    rel = Path(*name.split(".")[1:])
    package = _PACKAGE_DIR / rel / "__init__.py"
    return package if package.is_file() else _PACKAGE_DIR / rel.with_suffix(".py")


def _type_checking(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _is_string(node: ast.AST) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _assigned_names(node: ast.stmt) -> list[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]  # type: ignore[attr-defined]
    if not all(isinstance(t, ast.Name | ast.Tuple) for t in targets):
        return []
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


def parse_module(name: str, fixed: Mapping[str, Any] | None = None) -> Module:
    """Parse package module ``name`` into a :class:`Module`, folding the ``if`` chains that the
    configuration values ``fixed`` (dotted paths) decide.

    Raises:
        ExportError: a relative import inside a function, or a module the script may not import.
    """
    path = module_path(name)
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    mod = Module(name, path, source, tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    body = list(tree.body)
    for i, node in enumerate(body):
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # module docstring
        if isinstance(node, ast.ImportFrom):
            if node.module == "__future__":
                continue
            target = importlib.util.resolve_name("." * node.level + (node.module or ""), package) \
                if node.level else (node.module or "")
            for alias in node.names:
                local = alias.asname or alias.name
                if _root(target) == PACKAGE:
                    sub = f"{target}.{alias.name}"
                    is_module = module_path(sub).is_file() and not _defines(target, alias.name)
                    mod.package_imports[local] = (sub, None) if is_module else (target, alias.name)
                else:
                    mod.external[local] = (target, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _root(alias.name) == PACKAGE:
                    raise ExportError(f"{name}: use 'from ... import' for package modules, not 'import {alias.name}'")
                mod.external[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0], None)
        elif _type_checking(node) or _is_string(node):
            continue  # a bare string documents the assignment above it, which renders it
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            mod.defs.setdefault(node.name, []).append(node)
        elif isinstance(node, ast.Assign | ast.AnnAssign) and _assigned_names(node):
            names = _assigned_names(node)
            if names == ["__all__"]:
                continue
            for n in names:
                mod.defs.setdefault(n, []).append(node)
        else:
            mod.statements.append(node)
    for local, (target, _) in mod.external.items():
        check_external(target, f"{name} ({local})")
    if fixed:
        mod.folds = folds(tree, source.splitlines(), fixed)
        mod.dead = {id(n) for f in mod.folds for n in f.dead}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom | ast.Import) and node not in tree.body:
            if isinstance(node, ast.ImportFrom) and node.level:
                raise ExportError(f"{name}:{node.lineno}: a relative import inside a function cannot be inlined")
            for target in ([node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]):
                check_external(target, f"{name}:{node.lineno}")
    return mod


def _defines(module: str, name: str) -> bool:
    """True when package module ``module`` binds ``name`` itself (so ``from module import
    name`` is not a submodule import)."""
    path = module_path(module)
    if not path.is_file():
        return False
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name:
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign) and name in _assigned_names(node):
            return True
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            return node.module not in (None, "") or bool(node.level == 0)
    return False


def _live(node: ast.AST, dropped: set[int] | frozenset[int]) -> Iterator[ast.AST]:
    """``ast.walk(node)`` without the subtrees of dropped class members."""
    todo = [node]
    while todo:
        n = todo.pop()
        if id(n) in dropped:
            continue
        yield n
        todo.extend(ast.iter_child_nodes(n))


def _names_used(nodes: Iterable[ast.AST], dropped: set[int] | frozenset[int] = frozenset()) -> set[str]:
    return {n.id for node in nodes for n in _live(node, dropped) if isinstance(n, ast.Name)}


def _members_named(nodes: Iterable[ast.AST], dead: set[int]) -> set[str]:
    """Every name, attribute and identifier-like string in ``nodes``: what may name a method."""
    out = set()
    for node in nodes:
        for n in _live(node, dead):
            if isinstance(n, ast.Name):
                out.add(n.id)
            elif isinstance(n, ast.Attribute):
                out.add(n.attr)
            elif isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.isidentifier():
                out.add(n.value)
    return out


def _dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


@dataclass
class Inlined:
    """The result of :func:`inline`: the kept nodes of each module, in script order."""

    modules: list[Module]
    kept: dict[str, list[ast.stmt]]
    renames: dict[tuple[str, str], str]
    external: dict[str, tuple[str, str | None]]
    resolve: Callable[[str, str], tuple[str, str]]
    dropped: set[int] = field(default_factory=set)
    """``id`` of every method of a kept class that no kept code names."""


class _Walker:
    def __init__(self, fixed: Mapping[str, Any] | None = None) -> None:
        self.fixed = fixed
        self.modules: dict[str, Module] = {}
        self.reached: set[tuple[str, str]] = set()
        self.included: set[str] = set()
        self.external: dict[str, tuple[str, str | None]] = {}
        self.named: set[str] = set()
        """Every name, attribute and identifier-like string in the code walked so far."""
        self.waiting: dict[str, list[tuple[str, ast.stmt]]] = {}
        """Methods of reached classes not walked yet, by name, with their module."""
        self._queue: list[tuple[str, str]] = []
        self._members: list[tuple[str, ast.stmt]] = []

    def module(self, name: str) -> Module:
        if name not in self.modules:
            self.modules[name] = parse_module(name, self.fixed)
        return self.modules[name]

    def resolve(self, module: str, name: str) -> tuple[str, str]:
        """Return (defining module, name) of ``name`` as seen from ``module``."""
        seen = set()
        while True:
            if (module, name) in seen:
                raise ExportError(f"import cycle resolving {name!r} in {module}")
            seen.add((module, name))
            mod = self.module(module)
            if name in mod.defs:
                return module, name
            if name in mod.package_imports:
                target, orig = mod.package_imports[name]
                if orig is None:
                    raise ExportError(f"{module} uses the module {target} by attribute ({name}.x): "
                                      "import the names it needs instead, so they can be inlined")
                module, name = target, orig
                continue
            raise ExportError(f"{module} has no definition of {name!r}")

    def reach(self, module: str, name: str) -> None:
        key = self.resolve(module, name)
        if key not in self.reached:
            self.reached.add(key)
            self._queue.append(key)

    def _use(self, mod: Module, nodes: Sequence[ast.AST]) -> None:
        for used in sorted(_names_used(nodes, mod.dead)):
            if used in mod.defs or used in mod.package_imports:
                self.reach(mod.name, used)
            elif used in mod.external:
                known = self.external.setdefault(used, mod.external[used])
                if known != mod.external[used]:
                    raise ExportError(f"{used!r} means {known} in one module and {mod.external[used]} "
                                      f"in {mod.name}: use one alias for one import")
        for name in _members_named(nodes, mod.dead) - self.named:
            self.named.add(name)
            self._members.extend(self.waiting.pop(name, []))

    def _walk_class(self, mod: Module, cls: ast.ClassDef) -> None:
        """Walk ``cls`` but for the methods nothing names yet (they wait in :attr:`waiting`)."""
        inherited = self._inherited(mod, cls)
        optional = [isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and inherited is not None
                    and not _dunder(item.name) and item.name not in inherited for item in cls.body]
        if all(optional):  # a body of methods only must keep one: keep them all
            optional = [False] * len(cls.body)
        parts: list[ast.AST] = [*cls.bases, *cls.keywords, *cls.decorator_list]
        for item, maybe in zip(cls.body, optional, strict=True):
            if maybe and isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name not in self.named:
                self.waiting.setdefault(item.name, []).append((mod.name, item))
            else:
                parts.append(item)
        self._use(mod, parts)

    def _inherited(self, mod: Module, cls: ast.ClassDef) -> set[str] | None:
        """Attribute names ``cls`` gets from base classes outside the package (which may call
        them), or None when a base cannot be told (then every method is kept)."""
        out: set[str] = set()
        for base in cls.bases:
            if isinstance(base, ast.Subscript):  # Generic[T], NamedTuple-like aliases
                base = base.value
            if isinstance(base, ast.Name) and (base.id in mod.defs or base.id in mod.package_imports):
                module, name = self.resolve(mod.name, base.id)
                nodes = self.module(module).defs[name]
                if len(nodes) != 1 or not isinstance(nodes[0], ast.ClassDef):
                    return None
                from_base = self._inherited(self.module(module), nodes[0])
                if from_base is None:
                    return None
                out |= from_base
                continue
            obj = _outside_object(mod, base)
            if obj is None:
                return None
            out |= set(dir(obj))
        return out

    def run(self) -> None:
        while self._queue or self._members:
            if self._members:
                module, node = self._members.pop()
                self._use(self.module(module), [node])
                continue
            module, name = self._queue.pop()
            mod = self.module(module)
            for node in mod.defs[name]:
                if isinstance(node, ast.ClassDef):
                    self._walk_class(mod, node)
                else:
                    self._use(mod, [node])
            if module not in self.included:
                self.included.add(module)
                self._use(mod, mod.statements)

    def dropped(self) -> set[int]:
        """``id`` of each method still waiting: nothing walked names it."""
        return {id(node) for waiting in self.waiting.values() for _, node in waiting}


def _outside_object(mod: Module, expr: ast.expr) -> object | None:
    """The object a base-class expression names outside the package (``nn.Module``,
    ``torch.optim.SGD``, ``Exception``), imported; None when it cannot be found."""
    attrs = []
    while isinstance(expr, ast.Attribute):
        attrs.append(expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name):
        return None
    try:
        if expr.id in mod.external:
            module, name = mod.external[expr.id]
            obj = importlib.import_module(module)
            if name is not None:
                obj = getattr(obj, name) if hasattr(obj, name) else importlib.import_module(f"{module}.{name}")
        elif hasattr(builtins, expr.id):
            obj = getattr(builtins, expr.id)
        else:
            return None
        for attr in reversed(attrs):
            obj = getattr(obj, attr)
    except (ImportError, AttributeError):
        return None
    return obj


def _dependencies(walker: _Walker, mod: Module, nodes: list[ast.stmt], dropped: set[int]) -> set[str]:
    deps = set()
    for used in _names_used(nodes, dropped | mod.dead):
        if used in mod.package_imports:
            deps.add(walker.resolve(mod.name, used)[0])
    return deps - {mod.name}


def inline(roots: Sequence[tuple[str, str]], rank: dict[str, int] | None = None,
           fixed: Mapping[str, Any] | None = None) -> Inlined:
    """Return what a script needs for the definitions ``roots`` (``(module, name)`` pairs).

    ``rank`` orders modules that do not depend on each other (lower first; default by name);
    ``fixed`` holds the configuration values the script cannot change (dotted paths), which
    decide ``if`` chains on ``cfg`` (:mod:`bkdsearch.export.fold`).

    Raises:
        ExportError: a name that cannot be resolved, a module used by attribute, an import
            the script may not use, or an import cycle between kept modules.
    """
    walker = _Walker(fixed)
    for module, name in roots:
        walker.reach(module, name)
    walker.run()
    dropped = walker.dropped()
    kept: dict[str, list[ast.stmt]] = {}
    for name in walker.included:
        mod = walker.modules[name]
        nodes = {id(n): n for (m, d) in walker.reached if m == name for n in mod.defs[d]}
        kept[name] = sorted([*nodes.values(), *mod.statements], key=lambda n: n.lineno)
    order = _topological(walker, kept, rank or {}, dropped)
    renames = _renames(walker, order, kept)
    return Inlined([walker.modules[m] for m in order], kept, renames, walker.external, walker.resolve, dropped)


def _topological(walker: _Walker, kept: dict[str, list[ast.stmt]], rank: dict[str, int],
                 dropped: set[int]) -> list[str]:
    deps = {m: _dependencies(walker, walker.modules[m], kept[m], dropped) & set(kept) for m in kept}
    order: list[str] = []
    left = dict(deps)
    while left:
        ready = [m for m, d in left.items() if not d - set(order)]
        if not ready:
            raise ExportError(f"import cycle between {', '.join(sorted(left))}")
        nxt = min(ready, key=lambda m: (rank.get(m, 99), m))
        order.append(nxt)
        del left[nxt]
    return order


def _renames(walker: _Walker, order: list[str], kept: dict[str, list[ast.stmt]]) -> dict[tuple[str, str], str]:
    """Script name of every reached definition: its own name, unless an earlier module (or an
    import alias) took it, then ``<name>_<module>``."""
    taken = set(walker.external) | set(dir(builtins))
    out: dict[tuple[str, str], str] = {}
    for module in order:
        stem = module.rsplit(".", 1)[-1]
        for name in sorted(d for (m, d) in walker.reached if m == module):
            script = name
            while script in taken:
                script = f"{script}_{stem}" if not script.endswith(f"_{stem}") else f"{script}_"
            taken.add(script)
            out[(module, name)] = script
    return out


def render_module(inlined: Inlined, mod: Module) -> str:
    """Return the kept source of ``mod`` (comments kept, docstrings cut to their first
    paragraph, unnamed methods left out) with every reference to a package definition
    written under its script name. Definitions are two blank lines apart; consecutive
    assignments keep their spacing in the source."""
    lines = mod.source.splitlines()
    out = ""
    previous: ast.stmt | None = None
    for node in inlined.kept[mod.name]:
        first = _first_line(lines, node)
        last = node.end_lineno or node.lineno
        doc = _attached_docstring(mod, node)
        if doc is not None:
            last = doc.end_lineno or doc.lineno
        chunk = [line.encode() for line in lines[first:last]]
        for lineno, start, end, text in sorted(_edits(inlined, mod, node), reverse=True):
            row = lineno - 1 - first
            chunk[row] = chunk[row][:start] + text.encode() + chunk[row][end:]
        text = [c.decode() for c in chunk]
        for a, b, rewrite in sorted(_cuts(inlined, mod, lines, node, doc), key=lambda c: c[:2], reverse=True):
            text[a - first:b - first] = rewrite(text[a - first:b - first])
        if previous is not None:
            out += "\n" + _gap(mod, lines, previous, node)
        out += refill("\n".join(text))
        previous = node
    return out


def _first_line(lines: list[str], node: ast.stmt) -> int:
    """0-based first line of ``node``: its decorators and the comments right above it."""
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))]) - 1
    while first > 0 and lines[first - 1].lstrip().startswith("#"):
        first -= 1
    return first


def _gap(mod: Module, lines: list[str], previous: ast.stmt, node: ast.stmt) -> str:
    """The blank lines between two kept top-level statements: two around a definition,
    else those of the source when they are neighbours there, else one."""
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    if isinstance(previous, defs) or isinstance(node, defs):
        return "\n\n"
    body = mod.tree.body
    nxt = body.index(previous) + 1
    if nxt < len(body) and _is_string(body[nxt]):
        nxt += 1  # the docstring attached to ``previous``
    if nxt < len(body) and body[nxt] is node:
        return "\n" if _first_line(lines, node) > (body[nxt - 1].end_lineno or 0) else ""
    return "\n"


def _cuts(inlined: Inlined, mod: Module, lines: list[str], node: ast.stmt,
          doc: ast.Expr | None) -> list[tuple[int, int, Rewrite]]:
    """``(first, end, rewrite)`` of 0-based lines (end exclusive): docstrings cut to their summary,
    dropped methods removed with the blank line above, decided ``if`` chains folded."""
    cuts: list[tuple[int, int, Rewrite]] = []
    for n in ast.walk(node):
        for item in n.body if isinstance(n, ast.ClassDef) else []:
            if id(item) in inlined.dropped:
                a, b = _first_line(lines, item), item.end_lineno or item.lineno
                if a > 0 and not lines[a - 1].strip():
                    a -= 1
                cuts.append((a, b, lambda text: []))
    removed = [(a, b) for a, b, _ in cuts]
    start, end = _first_line(lines, node), node.end_lineno or node.lineno
    cuts += [f.cut for f in mod.folds if start <= f.cut[0] < end and not any(x <= f.cut[0] < y for x, y in removed)]
    for d in _docstrings(node) + ([doc.value] if doc is not None else []):
        a, b = d.lineno - 1, d.end_lineno or d.lineno
        if not any(x <= a < y for x, y in removed):
            summary = docstring_summary(lines[a:b])
            cuts.append((a, b, lambda text, summary=summary: summary))
    return cuts


def _docstrings(node: ast.AST) -> list[ast.Constant]:
    out = []
    for n in ast.walk(node):
        body = getattr(n, "body", None)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and body and _is_string(body[0]):
            out.append(body[0].value)
    return out


def _attached_docstring(mod: Module, node: ast.stmt) -> ast.Expr | None:
    """The string right below a top-level assignment, which documents it; None if none."""
    body = mod.tree.body
    if not isinstance(node, ast.Assign | ast.AnnAssign) or node not in body:
        return None
    i = body.index(node) + 1
    nxt = body[i] if i < len(body) else None
    if isinstance(nxt, ast.Expr) and _is_string(nxt) and nxt.lineno == (node.end_lineno or 0) + 1:
        return nxt
    return None


def _edits(inlined: Inlined, mod: Module, node: ast.stmt) -> list[tuple[int, int, int, str]]:
    """(line, start byte, end byte, new text) for every name in ``node`` to rewrite."""
    def script_name(local: str) -> str | None:
        if local in mod.defs:
            key = (mod.name, local)
        elif local in mod.package_imports and mod.package_imports[local][1] is not None:
            target, orig = mod.package_imports[local]
            key = inlined.resolve(target, orig)
        else:
            return None
        new = inlined.renames.get(key)
        return new if new is not None and new != local else None

    edits = []
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and (new := script_name(n.id)):
            edits.append((n.lineno, n.col_offset, n.end_col_offset or n.col_offset, new))
        elif isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and n is node:
            new = inlined.renames.get((mod.name, n.name))
            if new and new != n.name:
                line = mod.source.splitlines()[n.lineno - 1].encode()
                keyword = b"class " if isinstance(n, ast.ClassDef) else b"def "
                start = line.index(keyword + n.name.encode()) + len(keyword)
                edits.append((n.lineno, start, start + len(n.name.encode()), new))
    return edits
