"""Inline the part of bkdsearch's runtime that a trial reaches into one script.

The exporter follows the code rather than tables: starting from a few root definitions
(the script's ``main``, the trial's model builders and method), it walks every name those
definitions use, through ``from .x import y`` chains, to the module that defines it, and keeps
exactly the top-level definitions reached (a fixpoint over names). Statements that run at
import time in a kept module (model registration loops, ``register_decomposer`` calls) are
kept and walked too. Names defined in two kept modules are renamed on inlining, so modules
never need globally unique names. Third-party and standard-library imports are merged by
module; anything but torch, torchvision, numpy, PIL and the standard library is refused,
lazy imports inside functions included.
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ExportError

ALLOWED_THIRD_PARTY = frozenset({"torch", "torchvision", "numpy", "PIL"})
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

    @property
    def doc(self) -> str:
        """Return the first paragraph of the module docstring, on one line ('' when none)."""
        text = (ast.get_docstring(self.tree) or "").strip()
        return " ".join(text.split("\n\n")[0].split())


def _root(module: str) -> str:
    return module.split(".")[0]


def _is_stdlib(module: str) -> bool:
    return _root(module) in sys.stdlib_module_names


def check_external(module: str, where: str) -> None:
    """Raise :class:`ExportError` unless ``module`` may be imported by an exported script."""
    if _root(module) not in ALLOWED_THIRD_PARTY and not _is_stdlib(module):
        raise ExportError(f"{where} imports {module}, which an exported script cannot use")


def module_path(name: str) -> Path:
    """Return the source file of the package module ``name`` (``bkdsearch.core.losses``)."""
    rel = Path(*name.split(".")[1:])
    package = _PACKAGE_DIR / rel / "__init__.py"
    return package if package.is_file() else _PACKAGE_DIR / rel.with_suffix(".py")


def _type_checking(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _assigned_names(node: ast.stmt) -> list[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]  # type: ignore[attr-defined]
    if not all(isinstance(t, ast.Name | ast.Tuple) for t in targets):
        return []
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


def parse_module(name: str) -> Module:
    """Parse package module ``name`` into a :class:`Module`.

    Raises:
        ExportError: a relative import inside a function (it could not be inlined), or a
            module the script may not import.
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
        elif _type_checking(node):
            continue
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


def _names_used(nodes: Iterable[ast.AST]) -> set[str]:
    return {n.id for node in nodes for n in ast.walk(node) if isinstance(n, ast.Name)}


@dataclass
class Inlined:
    """The result of :func:`inline`: the kept nodes of each module, in script order."""

    modules: list[Module]
    kept: dict[str, list[ast.stmt]]
    renames: dict[tuple[str, str], str]
    external: dict[str, tuple[str, str | None]]
    resolve: Callable[[str, str], tuple[str, str]]


class _Walker:
    def __init__(self) -> None:
        self.modules: dict[str, Module] = {}
        self.reached: set[tuple[str, str]] = set()
        self.included: set[str] = set()
        self.external: dict[str, tuple[str, str | None]] = {}
        self._queue: list[tuple[str, str]] = []

    def module(self, name: str) -> Module:
        if name not in self.modules:
            self.modules[name] = parse_module(name)
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
        for used in sorted(_names_used(nodes)):
            if used in mod.defs or used in mod.package_imports:
                self.reach(mod.name, used)
            elif used in mod.external:
                known = self.external.setdefault(used, mod.external[used])
                if known != mod.external[used]:
                    raise ExportError(f"{used!r} means {known} in one module and {mod.external[used]} "
                                      f"in {mod.name}: use one alias for one import")

    def run(self) -> None:
        while self._queue:
            module, name = self._queue.pop()
            mod = self.module(module)
            self._use(mod, mod.defs[name])
            if module not in self.included:
                self.included.add(module)
                self._use(mod, mod.statements)


def _dependencies(walker: _Walker, mod: Module, nodes: list[ast.stmt]) -> set[str]:
    deps = set()
    for used in _names_used(nodes):
        if used in mod.package_imports:
            deps.add(walker.resolve(mod.name, used)[0])
    return deps - {mod.name}


def inline(roots: Sequence[tuple[str, str]], rank: dict[str, int] | None = None) -> Inlined:
    """Return what a script needs for the definitions ``roots`` (``(module, name)`` pairs).

    ``rank`` orders modules that do not depend on each other (lower first; default by name).

    Raises:
        ExportError: a name that cannot be resolved, a module used by attribute, an import
            the script may not use, or an import cycle between kept modules.
    """
    walker = _Walker()
    for module, name in roots:
        walker.reach(module, name)
    walker.run()
    kept: dict[str, list[ast.stmt]] = {}
    for name in walker.included:
        mod = walker.modules[name]
        nodes = {id(n): n for (m, d) in walker.reached if m == name for n in mod.defs[d]}
        kept[name] = sorted([*nodes.values(), *mod.statements], key=lambda n: n.lineno)
    order = _topological(walker, kept, rank or {})
    renames = _renames(walker, order, kept)
    return Inlined([walker.modules[m] for m in order], kept, renames, walker.external, walker.resolve)


def _topological(walker: _Walker, kept: dict[str, list[ast.stmt]], rank: dict[str, int]) -> list[str]:
    deps = {m: _dependencies(walker, walker.modules[m], kept[m]) & set(kept) for m in kept}
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
    """Return the kept source of ``mod`` (comments and docstrings kept) with every reference
    to a package definition written under its script name."""
    lines = mod.source.splitlines()
    pieces = []
    for node in inlined.kept[mod.name]:
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))]) - 1
        while first > 0 and lines[first - 1].lstrip().startswith("#"):
            first -= 1
        last = node.end_lineno or node.lineno
        if last < len(lines) and _is_attached_docstring(mod, node, last):
            last = _attached_docstring_end(mod, node)
        edits = _edits(inlined, mod, node)
        chunk = [line.encode() for line in lines[first:last]]
        for lineno, start, end, text in sorted(edits, reverse=True):
            row = lineno - 1 - first
            chunk[row] = chunk[row][:start] + text.encode() + chunk[row][end:]
        text = [c.decode() for c in chunk]
        for doc in sorted(_docstrings(node), key=lambda d: d.lineno, reverse=True):
            a, b = doc.lineno - 1 - first, (doc.end_lineno or doc.lineno) - first
            text[a:b] = _summary(text[a:b])
        pieces.append("\n".join(text))
    return "\n\n\n".join(pieces)


_SECTION = re.compile(r"^\s*(Args|Arguments|Returns|Yields|Raises|Attributes|Raises \(constructor\)):\s*$")


def _docstrings(node: ast.AST) -> list[ast.Constant]:
    out = []
    for n in ast.walk(node):
        body = getattr(n, "body", None)
        if (isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            out.append(body[0].value)
    return out


def _summary(doc: list[str]) -> list[str]:
    """A docstring's lines without its reference sections (Args:, Returns:, Raises:...): the
    script keeps what each definition is for; the library keeps the full reference."""
    cut = next((i for i, line in enumerate(doc) if i and _SECTION.match(line)), None)
    if cut is None:
        return doc
    kept = doc[:cut]
    while kept and not kept[-1].strip():
        kept.pop()
    indent = doc[0][: len(doc[0]) - len(doc[0].lstrip())]
    return [*kept, indent + '"""']


def _next_statement(mod: Module, node: ast.stmt) -> ast.stmt | None:
    body = mod.tree.body
    i = body.index(node)
    return body[i + 1] if i + 1 < len(body) else None


def _is_attached_docstring(mod: Module, node: ast.stmt, last: int) -> bool:
    nxt = _next_statement(mod, node)
    return (isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str) and nxt.lineno == last + 1)


def _attached_docstring_end(mod: Module, node: ast.stmt) -> int:
    nxt = _next_statement(mod, node)
    assert nxt is not None
    return nxt.end_lineno or nxt.lineno


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


def _by_type(name: str) -> tuple[int, str]:
    """isort's order-by-type: CONSTANTS, then Classes, then the rest."""
    bare = name.split(" as ")[0]
    kind = 0 if bare.isupper() and len(bare) > 1 else 1 if bare[:1].isupper() else 2
    return kind, bare


def import_lines(external: dict[str, tuple[str, str | None]]) -> list[str]:
    """Return the merged import statements for the used external names, isort-style:
    standard library first, then third-party; ``import x`` before ``from x import``."""
    plain: dict[bool, set[str]] = {True: set(), False: set()}
    froms: dict[tuple[bool, str], set[str]] = {}
    for local, (module, name) in external.items():
        std = _is_stdlib(module)
        if name is None:
            plain[std].add(module if local == module else f"{module} as {local}")
        else:
            froms.setdefault((std, module), set()).add(name if local == name else f"{name} as {local}")
    blocks = []
    for std in (True, False):
        block = [f"import {m}" for m in sorted(plain[std], key=lambda s: s.split(" ")[0])]
        block += [f"from {m} import {', '.join(sorted(names, key=_by_type))}"
                  for (s, m), names in sorted(froms.items()) if s == std]
        if block:
            blocks.append("\n".join(block))
    return blocks
