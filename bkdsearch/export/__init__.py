"""Export one trial to ONE plain training script that imports only torch and torchvision.

The script holds exactly the runtime code the trial reaches (its two model families, its
partition and stepping-stones, its method and loss, its data source, the loop), found by
following the code from the trial's entry points (:mod:`bkdsearch.export.inliner`), then the
entry point of :mod:`bkdsearch.export.script`, laid out to read top to bottom
(:mod:`bkdsearch.export.layout`: docstrings cut to their summary, statements rewrapped).
Running the same code is what makes the script's weights identical to ``bkdsearch train``
with the same RunConfig. The RunConfig is written as a literal (plain data, never code) at
the top of the script.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.engine.models import model_entry
from ..errors import ExportError
from ..spec import RunConfig
from ..urls import redact
from .fold import fixed_values
from .inliner import Inlined, inline, render_module
from .layout import import_lines, literal, plain_roles
from .script import FLAG_KEYS

SCRIPT = "bkdsearch.export.script"
_PLACEHOLDERS = {"CONFIG", "TEACHER_CHECKPOINT", "STUDENT_MODEL", "TEACHER_MODEL"}

_R, _E = "bkdsearch.core.recipe", "bkdsearch.core.engine"
# Script sections, in reading order: (heading, module prefixes).
_SECTIONS = [
    ("Errors", (_R + ".errors",)),
    ("Models", (_R + ".zoo",)),
    ("Partition and stepping-stones", (_R + ".cuts", _R + ".partitions", _R + ".stones")),
    ("Loss and method", (_R + ".losses", _R + ".methods")),
    # The loaders shard batches across processes, so the processes come before the data.
    ("Processes (one run on several GPUs)", (_R + ".distributed",)),
    ("Data", (_R + ".data",)),
    ("Training and evaluation", (_R + ".optim", _R + ".loop")),
    ("Main", (SCRIPT,)),
]
# Within the zoo, shared pieces before the families.
_ZOO_FIRST = (_R + ".zoo.atoms", _R + ".zoo.weights")


def _section(module: str) -> int:
    for i, (_, prefixes) in enumerate(_SECTIONS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise ExportError(f"{module} is not part of the runtime an exported script may inline")


def _rank(module: str) -> int:
    return 10 * _section(module) + (0 if module in _ZOO_FIRST else 1)


def _builder(arch: str) -> tuple[str, str]:
    """(module, name) of the top-level function building ``arch``."""
    try:
        builder = model_entry(arch).builder
    except KeyError as exc:
        raise ExportError(str(exc.args[0])) from None
    return builder.__module__, builder.__name__


def _models(cfg: RunConfig) -> tuple[tuple[str, str], tuple[str, str] | None]:
    """The builders of ``cfg``'s student and (when it distils) teacher."""
    distils = cfg.teacher is not None and cfg.method != "ce"
    return _builder(cfg.student.arch), _builder(cfg.teacher.arch) if distils else None  # type: ignore[union-attr]


def roots(cfg: RunConfig) -> list[tuple[str, str]]:
    """Return the entry points of ``cfg``'s script: the script's ``main`` and ``Config`` and
    each model's builder (from the registry). The method and the data source are reached
    through the recipe's ``if`` chains on the configuration, folded to the trial's."""
    student, teacher = _models(cfg)
    return [(SCRIPT, "main"), (SCRIPT, "Config"), student, *([teacher] if teacher else [])]


def fixed_config(cfg: RunConfig) -> dict[str, Any]:
    """Return the values of ``cfg`` that its script cannot change (every one but those its
    flags set), by dotted path: what decides the ``if`` chains folded into the script."""
    return fixed_values(cfg.model_dump(mode="json"), set(FLAG_KEYS))


def _body(inlined: Inlined) -> str:
    parts: list[str] = []
    section = None
    for mod in inlined.modules:
        kept = [n for n in inlined.kept[mod.name]
                if not (mod.name == SCRIPT and _placeholder(n))]
        if not kept:
            continue
        inlined.kept[mod.name] = kept
        index = _section(mod.name)
        banner = ""
        if index != section:
            section = index
            banner = f"# {'=' * 77}\n# {_SECTIONS[index][0]}\n# {'=' * 77}\n\n"
        parts.append(banner + render_module(inlined, mod))
    return "\n\n\n".join(parts) + "\n"


def _placeholder(node: Any) -> bool:
    targets = getattr(node, "targets", None) or [getattr(node, "target", None)]
    return any(getattr(t, "id", None) in _PLACEHOLDERS for t in targets)


def render_script(cfg: RunConfig, header: dict[str, Any], teacher_checkpoint: str | None = None) -> str:
    """Return the standalone script for ``cfg``.

    ``header`` (study, trial, params, values...) is shown in the docstring;
    ``teacher_checkpoint`` is the default of ``--teacher-checkpoint``.

    Raises:
        ExportError: the trial's code cannot be inlined (an unknown architecture, an import
            the script may not use).
    """
    inlined = inline(roots(cfg), rank={m: _rank(m) for m in _all_modules(cfg)}, fixed=fixed_config(cfg))
    student, teacher = _models(cfg)
    body = re.sub(r"\bSTUDENT_MODEL\b", inlined.renames.get(student, student[1]), plain_roles(_body(inlined)))
    body = re.sub(r"\bTEACHER_MODEL\b", inlined.renames.get(teacher, teacher[1]) if teacher else "None", body)
    head = "\n".join(f"    {k}: {_oneline(v)}" for k, v in header.items())
    config = literal(cfg.model_dump(mode="json"))
    imports = "\n\n".join(import_lines(inlined.external))
    return (
        "#!/usr/bin/env python3\n"
        f'"""Block-KD training script exported by bkdsearch {__version__}: '
        f"{cfg.teacher.arch + ' -> ' if cfg.teacher else ''}{cfg.student.arch}, {cfg.method}.\n\n"
        f"{head}\n\n"
        "Standalone: needs only torch and torchvision. Run with --help for the flags.\n"
        '"""\n\nfrom __future__ import annotations\n\n'
        f"{imports}\n\n"
        f"# {'=' * 77}\n# Configuration (plain data: the trial's resolved RunConfig)\n# {'=' * 77}\n"
        f"CONFIG = {config}\n\n"
        f"TEACHER_CHECKPOINT = {teacher_checkpoint!r}\n\n\n"
        + body
    )


def _all_modules(cfg: RunConfig) -> list[str]:
    from .inliner import _PACKAGE_DIR

    names = []
    for path in sorted(_PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(_PACKAGE_DIR.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        try:
            _section(name)
        except ExportError:
            continue
        names.append(name)
    return names


def _oneline(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value
    return redact(text).replace('"""', "'''").replace("\\", "/")


def export_trial(storage_url: str, study_name: str, trial_ref: str, output: Path, *,
                 allow_pruned: bool = False) -> Path:
    """Write the script of trial ``trial_ref`` (``best`` or a number) of a study to ``output``.

    Raises:
        NotFound: no such study or trial.
        StorageError: the storage cannot be opened (or is a missing SQLite file).
        ExportError: a pruned or failed trial (unless ``allow_pruned`` for a pruned one), or a
            configuration that cannot be exported.
    """
    from optuna.trial import TrialState

    from ..errors import DataError
    from ..search import load_study, trial_config
    from ..search.confirm import gain_header
    from ..teacher import cached_teacher_path

    study = load_study(storage_url, study_name)
    trial, cfg = trial_config(study, trial_ref)
    if trial.state == TrialState.PRUNED and not allow_pruned:
        raise ExportError(f"trial {trial.number} was pruned ({trial.user_attrs.get('pruned_reason', 'early')}); "
                          "export a complete trial, or pass --allow-pruned")
    if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
        raise ExportError(f"trial {trial.number} is {trial.state.name}: only complete (or pruned) trials export")
    teacher = None
    if cfg.teacher is not None and cfg.method != "ce":
        teacher = cfg.teacher.checkpoint
        if not teacher:
            try:  # the cache key reads the data: where it cannot, the script gets no default
                cached: Path | None = cached_teacher_path(cfg, Path("studies") / "teachers")
            except DataError:
                cached = None
            teacher = str(cached.resolve()) if cached is not None and cached.is_file() else None
    header = {"study": study_name, "trial": trial.number, "state": trial.state.name,
              "params": trial.params, "values": trial.values,
              "test_acc": trial.user_attrs.get("test_acc"), "teacher": teacher or "-",
              "storage": redact(storage_url)}
    if trial_ref == "best":  # the confirmed winner's gain over the baseline, with its interval and cost
        header.update(gain_header(study))
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(render_script(cfg, header, teacher))
        output.chmod(0o755)
    except OSError as exc:
        raise ExportError(f"cannot write {output}: {exc.strerror or exc}") from None
    return output
