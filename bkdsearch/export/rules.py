"""The rules the exporter imposes on how the recipe (``bkdsearch.core.recipe``) is written,
stated once: the exporter relies on them and :func:`recipe_violations` checks them (a test
runs it), so a rule broken shows up as a named line, not as a failing export.

1. Imports: torch, torchvision, numpy, PIL, the standard library and the recipe itself;
   nothing of the engine, the spec, the search or the CLI (the script has none of them).
2. No relative import inside a function (the inliner resolves module-level imports only).
3. A choice the configuration makes is an ``if`` chain on ``cfg.<path>`` in a function with
   a parameter ``cfg: RunConfig`` (or on ``self.cfg`` in a class whose ``__init__`` takes one
   and stores it): that is what the exporter folds to the trial's branch.
4. A model family exposes each architecture as a top-level builder function (the script's
   ``main`` calls it by name); the names live in the engine's registry.
5. Docstrings of functions and classes (which the script keeps) cite no file of the
   repository: the script's reader does not have it.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ALLOWED_THIRD_PARTY = frozenset({"torch", "torchvision", "numpy", "PIL"})
"""Rule 1: the third-party packages an exported script may import."""
RUN_CONFIG = "RunConfig"
"""Rule 3: the annotation that marks a ``cfg`` parameter as the run's configuration."""
RECIPE = "bkdsearch.core.recipe"
"""The package the exporter inlines from (with ``bkdsearch.export.script``)."""
_CITED_FILE = re.compile(r"\b(?:DESIGN|README|design)\.md\b|\bdocs/|\btests/\w+\.py")
_RECIPE_DIR = Path(__file__).resolve().parent.parent / "core" / "recipe"


def recipe_violations(files: dict[str, Path] | None = None) -> list[str]:
    """Return ``path:line: rule`` for every break of rules 1, 2 and 5 in the recipe's modules
    (``files``: module name -> source file; the package's own by default). Rules 3 and 4 are
    about what the exporter can fold and call; the export tests check their effect."""
    if files is None:
        files = {}
        for path in sorted(_RECIPE_DIR.rglob("*.py")):
            parts = list(path.relative_to(_RECIPE_DIR).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join([RECIPE, *parts])] = path
    found: list[str] = []
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        in_function = {id(n) for fn in functions for n in ast.walk(fn)}
        for node in ast.walk(tree):
            where = f"{path.name}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and node.level:
                if id(node) in in_function:
                    found.append(f"{where}: a relative import inside a function (rule 2)")
                base = package.split(".")
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
                if not (target == RECIPE or target.startswith(RECIPE + ".")):
                    found.append(f"{where}: imports {target}, outside the recipe (rule 1)")
            elif isinstance(node, ast.Import | ast.ImportFrom):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for module in modules:
                    root = module.split(".")[0]
                    inside = module == RECIPE or module.startswith(RECIPE + ".")
                    if not inside and root not in ALLOWED_THIRD_PARTY and root not in sys.stdlib_module_names \
                            and root != "__future__":
                        found.append(f"{where}: imports {module}, which a script cannot (rule 1)")
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                doc = ast.get_docstring(node) or ""
                if cited := _CITED_FILE.search(doc):
                    found.append(f"{path.name}:{node.lineno}: {node.name}'s docstring cites {cited.group(0)} (rule 5)")
    return found
