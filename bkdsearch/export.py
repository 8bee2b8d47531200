"""Export one trial to ONE standalone training script that imports only torch and torchvision.

The script is built from bkdsearch's own modules (zoo models of the pair, atoms, blocks,
losses, methods, data, engine) inlined in dependency order, plus a small ``main`` from
``templates/train_script.py``. Running the same code is what makes the exported script's
weights identical to ``bkdsearch train`` with the same RunConfig. The RunConfig is embedded
as a JSON string literal: nothing from a spec becomes code.
"""

from __future__ import annotations

import ast
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from . import __version__
from .spec import RunConfig
from .urls import redact

_PACKAGE = Path(__file__).resolve().parent

# Model file of each registered CIFAR architecture; ImageNet models come from torchvision.
_FAMILY_FILES = {
    "resnet_cifar": ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56",
                     "resnet110", "resnet8x4", "resnet32x4", "ResNet50"),
    "wrn": ("wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"),
    "vgg": ("vgg8", "vgg13"),
    "mobilenetv2": ("MobileNetV2",),
    "shufflenet": ("ShuffleV1", "ShuffleV2"),
    "imagenet": ("resnet18", "resnet34", "resnet50", "mobilenet_v2"),
}
_CORE_BEFORE = ["zoo/atoms.py", "zoo/registry.py"]
# The data package, in dependency order (each module only uses names of those before it).
_DATA_FILES = ["data/arrays.py", "data/synthetic.py", "data/sources.py", "data/splits.py",
               "data/loader.py", "data/folder.py", "data/build.py"]
_CORE_AFTER = ["zoo/weights.py", "blocks.py", "losses.py", "methods.py", *_DATA_FILES, "engine.py"]
_ALLOWED_IMPORTS = {"torch", "torchvision", "numpy", "PIL"}


class ExportError(Exception):
    """The trial cannot be exported (unknown architecture, name clash between modules)."""


def model_files(*archs: str) -> list[str]:
    """Return the zoo files that define ``archs`` (relative to the package)."""
    files = []
    for family, names in _FAMILY_FILES.items():
        if any(a in names for a in archs):
            files.append(f"zoo/{family}.py")
    missing = [a for a in archs if not any(a in n for n in _FAMILY_FILES.values())]
    if missing:
        raise ExportError(f"no model file known for {missing}")
    return files


def _strip(source: str, name: str) -> tuple[str, list[str]]:
    """Return ``source`` without package-relative imports, ``__future__`` and TYPE_CHECKING
    blocks, plus its plain import lines (hoisted to the top of the script)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    drop: set[int] = set()
    imports: list[str] = []
    for node in tree.body:
        span = range(node.lineno - 1, node.end_lineno)
        if isinstance(node, ast.ImportFrom) and (node.level > 0 or node.module == "__future__"):
            drop.update(span)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            imports.append("\n".join(lines[i] for i in span))
            drop.update(span)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            drop.update(span)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and node is tree.body[0]:
            drop.update(span)  # the module docstring
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            drop.update(span)
    body = "\n".join(line for i, line in enumerate(lines) if i not in drop).strip("\n")
    return f"# {'-' * 20} from bkdsearch/{name}\n{body}\n", imports


def _package_imports(source: str) -> list[str]:
    """Return the names ``source`` imports from its own package at top level (``from .x
    import a``): in the script they must come from a module inlined before it."""
    names = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            names += [a.name if a.asname in (None, a.name) else f"{a.name} as {a.asname}" for a in node.names]
    return names


def _top_level_names(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            # Plain and tuple targets (``a, b = ...``) alike.
            names.update(n.id for t in node.targets for n in ast.walk(t)
                         if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def inline_modules(files: list[str]) -> str:
    """Return the inlined sources of ``files`` with their imports hoisted and de-duplicated.

    Raises:
        ExportError: two modules define the same top-level name (one would shadow the
            other in a single file), a module uses a name of its package that no module
            before it defines (wrong order, a missing file, an ``as`` alias), or a module
            imports a third-party package the script may not use.
    """
    bodies, imports, owners = [], [], {}
    for rel in files:
        source = (_PACKAGE / rel).read_text()
        missing = [name for name in _package_imports(source) if name not in owners]
        if missing:
            raise ExportError(f"{rel} imports {missing} from bkdsearch, which no module inlined before it defines")
        body, imps = _strip(source, rel)
        for name in _top_level_names(body):
            if name in owners:
                raise ExportError(f"{name!r} is defined in both {owners[name]} and {rel}")
            owners[name] = rel
        for imp in imps:
            root = re.split(r"[ .]", imp.split()[1])[0]
            if root not in _ALLOWED_IMPORTS and not _is_stdlib(root):
                raise ExportError(f"{rel} imports {root}, which an exported script cannot use")
        bodies.append(body)
        imports += [i for i in imps if i not in imports]
    return "\n".join(imports) + "\n\n\n" + "\n\n".join(bodies)


def _is_stdlib(name: str) -> bool:
    import sys

    return name in sys.stdlib_module_names


def render_script(cfg: RunConfig, header: dict[str, Any]) -> str:
    """Return the standalone script for ``cfg``; ``header`` (study, trial, params, metrics)
    is shown in the docstring."""
    archs = [cfg.student.arch] + ([cfg.teacher.arch] if cfg.teacher else [])
    files = _CORE_BEFORE + model_files(*archs) + _CORE_AFTER
    template = resources.files("bkdsearch").joinpath("templates/train_script.py").read_text()
    head_lines = "\n".join(f"    {k}: {_oneline(v)}" for k, v in header.items())
    config_json = json.dumps(cfg.model_dump(mode="json"), indent=1, sort_keys=True)
    return (
        "#!/usr/bin/env python3\n"
        f'"""Block-KD training script exported by bkdsearch {__version__}.\n\n'
        f"{head_lines}\n\n"
        "Standalone: needs only torch and torchvision. Run with --help for the flags.\n"
        '"""\n\nfrom __future__ import annotations\n\n'
        + inline_modules(files)
        + "\n\n# " + "-" * 20 + " the exported configuration (a JSON literal, not code)\n"
        + f"CONFIG_JSON = {config_json!r}\n\n"
        + template.split("# --- template ---\n", 1)[1]
    )


def _oneline(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value
    return redact(text).replace('"""', "'''").replace("\\", "/")


def export_trial(storage_url: str, study_name: str, trial_ref: str, output: Path) -> Path:
    """Write the script of trial ``trial_ref`` (``best`` or a number) of a study to ``output``.

    Raises:
        bkdsearch.search.NotFound: no such study or trial.
        bkdsearch.search.StorageError: the storage cannot be opened (or is a missing SQLite file).
        ExportError: the configuration cannot be exported.
    """
    from .report import _load_study
    from .search import trial_config

    study = _load_study(storage_url, study_name)
    trial, cfg = trial_config(study, trial_ref)
    header = {"study": study_name, "trial": trial.number, "state": trial.state.name,
              "params": trial.params, "values": trial.values,
              "test_acc": trial.user_attrs.get("test_acc"), "storage": redact(storage_url)}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_script(cfg, header))
    output.chmod(0o755)
    return output
