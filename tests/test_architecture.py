"""The package's structure: a torch-only runtime, one-way arrows between the rooms, no import
cycle anywhere (lazy imports included), modules of one job and a declared public API."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

import bkdsearch

PACKAGE = Path(bkdsearch.__file__).resolve().parent
RUNTIME_IMPORTS = {"torch", "torchvision", "numpy", "PIL"}
MAX_MODULE_LINES = 550  # "about 500": one job per module

# Rooms and their order: a module may import its own room and the rooms before it only
# (cli -> search/report/export -> spec -> core, docs/design.md "Layout").
LAYERS = [
    ("core",),
    ("errors", "urls", "zoo", "data", "progress", "gain", "invocation", "lazy"),
    ("spec",),
    ("flops", "teacher", "ranks", "plots"),
    ("search",),
    ("report", "export", "preflight", "dashboard", "summary", "compare"),
    ("cli",),
    ("__main__",),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """Every import of ``path`` (module level and inside functions) as (absolute target, line);
    ``from pkg import sub`` names the submodule when ``sub`` is one."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) \
                if node.level else node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in MODULES else base, node.lineno))
    return found


def _layer(module: str) -> int:
    room = module.split(".")[1] if "." in module else "__init__"
    for i, rooms in enumerate(LAYERS):
        if room in rooms:
            return i
    raise AssertionError(f"{module} belongs to no room of the layout; add it to LAYERS")


def test_core_imports_only_torch_torchvision_numpy_and_the_standard_library() -> None:
    offenders = []
    for name, path in MODULES.items():
        if not name.startswith("bkdsearch.core"):
            continue
        for target, line in _imports(name, path):
            root = target.split(".")[0]
            if root == "bkdsearch":
                if not target.startswith("bkdsearch.core"):
                    offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
            elif root not in RUNTIME_IMPORTS and root not in sys.stdlib_module_names:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not offenders, "core must stay torch-only:\n" + "\n".join(offenders)


RECIPE = "bkdsearch.core.recipe"
ENGINE = "bkdsearch.core.engine"


def recipe_offenders(modules: dict[str, Path]) -> list[str]:
    """Every import, in the recipe's modules among ``modules`` (name -> file), of a bkdsearch
    module outside the recipe: the engine, the spec, the search, the CLI... (the recipe is what
    an exported script inlines)."""
    offenders = []
    for name, path in modules.items():
        if name != RECIPE and not name.startswith(RECIPE + "."):
            continue
        for target, line in _imports(name, path):
            if target.split(".")[0] == "bkdsearch" and not (target == RECIPE or target.startswith(RECIPE + ".")):
                offenders.append(f"{path.name}:{line} imports {target}")
    return offenders


def test_the_recipe_imports_nothing_of_the_engine_spec_search_or_cli() -> None:
    offenders = recipe_offenders(MODULES)
    assert offenders == [], "the recipe must stay plain:\n" + "\n".join(offenders)
    # Everything in core is one of the two layers, and the engine does use the recipe.
    core = [n for n in MODULES if n.startswith("bkdsearch.core.")]
    assert all(n.startswith((RECIPE, ENGINE)) for n in core), core
    assert any(t.startswith(RECIPE) for n in core if n.startswith(ENGINE) for t, _ in _imports(n, MODULES[n]))


def test_the_recipe_check_catches_an_engine_import(tmp_path: Path) -> None:
    # The recipe's losses with one import of the engine added (a copy; the package is untouched).
    bad = tmp_path / "losses.py"
    bad.write_text(MODULES[RECIPE + ".losses"].read_text(encoding="utf-8")
                   + "\nfrom ..engine.trainer import Trainer\nfrom ...spec import RunConfig\n", encoding="utf-8")
    found = recipe_offenders({RECIPE + ".losses": bad})
    assert [o.split(" imports ")[1] for o in found] == ["bkdsearch.core.engine.trainer", "bkdsearch.spec"]


def _graph() -> dict[str, set[str]]:
    return {name: {t for t, _ in _imports(name, path) if t in MODULES and t != name}
            for name, path in MODULES.items()}


def test_no_import_cycle_anywhere_in_the_package() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_arrows_point_one_way_between_rooms() -> None:
    wrong = []
    for name, targets in _graph().items():
        if name == "bkdsearch":
            continue
        for target in targets:
            if target == "bkdsearch":
                continue  # the version string
            same_room = target.split(".")[:2] == name.split(".")[:2]
            if _layer(target) > _layer(name) or (_layer(target) == _layer(name) and not same_room):
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports against the layout's arrows:\n" + "\n".join(sorted(wrong))


def test_modules_do_one_job_and_stay_small() -> None:
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in MODULES.items()}
    big = {n: s for n, s in sizes.items() if s > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


def test_public_api_is_declared_and_importable() -> None:
    assert bkdsearch.__all__
    for name in bkdsearch.__all__:
        assert getattr(bkdsearch, name) is not None, name
    # The documented entry points of earlier versions keep working.
    from bkdsearch.data import build_data
    from bkdsearch.zoo import create_model, load_weights

    assert callable(create_model) and callable(load_weights) and callable(build_data)


def test_every_error_is_bad_input_or_run_failure() -> None:
    errors = importlib.import_module("bkdsearch.errors")
    for name in errors.__all__:
        cls = getattr(errors, name)
        if cls in (errors.BkdsearchError, errors.BadInput, errors.RunFailure):
            continue
        assert issubclass(cls, errors.BadInput) != issubclass(cls, errors.RunFailure), name
