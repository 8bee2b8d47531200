"""``bkdsearch compare``: the methods at their default (published) configuration, several seeds
each, on one teacher; a mean ± std table of validation and test accuracy.

Each run is a plain ``train`` run (its folder is keyed by its configuration, so a repeated
comparison resumes or reuses finished runs); the teacher is the spec's, trained once when it
has no checkpoint.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .progress import make_progress, percent
from .spec import Defaults, RunConfig, Spec, resolve
from .teacher import teacher_weights

METHODS = ("ce", "kd", "dkd", "blockkd")


@dataclass
class MethodResult:
    """The runs of one method: per-seed accuracies and their mean/std."""

    method: str
    seeds: list[int] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    images_per_s: list[float] = field(default_factory=list)

    def stats(self, values: list[float]) -> tuple[float, float]:
        """Return (mean, sample std) of ``values`` (std 0 for one value)."""
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def comparison_configs(spec: Spec, methods: Sequence[str], seeds: Sequence[int],
                       overrides: dict[str, Any] | None = None) -> list[RunConfig]:
    """Return the RunConfig of every (method, seed): each method at its defaults (published
    loss weights for kd and dkd, the spec's defaults for the rest) and ``overrides``.

    Raises:
        SpecError: an unknown method, or an override that names no parameter.
    """
    from .errors import SpecError

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SpecError([("--methods", f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}", None)])
    if spec.teacher is None and any(m != "ce" for m in methods):
        raise SpecError([("--methods", "distillation methods need the spec's teacher", None)])
    configs = []
    for method in methods:
        for seed in seeds:
            fixed = {**(overrides or {}), "method": method, "seed": seed}
            configs.append(resolve(spec, Defaults(fixed), overrides=fixed))
    return configs


def run_comparison(spec: Spec, methods: Sequence[str], seeds: Sequence[int], *, studies_dir: Path,
                   device: str | None = None, overrides: dict[str, Any] | None = None,
                   log: Callable[[str], None] = print, terminal: bool | None = None) -> list[MethodResult]:
    """Train every (method, seed) of :func:`comparison_configs` and return one
    :class:`MethodResult` per method, in ``methods`` order. Each run (and the teacher's
    training, when it has to be trained) shows its progress (a bar on a ``terminal``, else
    one line per epoch with an ETA, to ``log``); after each run, the table so far.

    Raises:
        SpecError: see :func:`comparison_configs`. WeightsError, DataError: a bad teacher or
            missing data. RunFailure: a run failed (a non-finite loss, say).
    """
    from .core.engine.trainer import Trainer

    configs = comparison_configs(spec, methods, seeds, overrides)
    results = {m: MethodResult(m) for m in methods}
    for i, cfg in enumerate(configs, 1):
        weights = teacher_weights(cfg, studies_dir / "teachers", progress=True, log=log)
        run_dir = studies_dir / "runs" / f"{cfg.name}-{cfg.digest()}"
        label = f"[{i}/{len(configs)}] {cfg.method} seed {cfg.seed}"
        log(f"{label}: {run_dir}")
        shown = make_progress(label, log, terminal=terminal)
        result = Trainer(cfg, run_dir, teacher_weights=weights, device=device, progress=shown).fit(resume=True)
        entry = results[cfg.method]
        entry.seeds.append(cfg.seed)
        if result.val_acc is not None:
            entry.val_acc.append(result.val_acc)
        if result.test_acc is not None:
            entry.test_acc.append(result.test_acc)
        entry.images_per_s.append(result.images_per_s)
        log(f"{label}: val {percent(result.val_acc)}, test {percent(result.test_acc)}")
        if i < len(configs):
            done = [r for r in results.values() if r.seeds]
            log(comparison_markdown(done, f"so far ({i} of {len(configs)} runs)").rstrip("\n"))
    return [results[m] for m in methods]


def seeds_text(count: int) -> str:
    """Return ``count`` seeds in words: ``1 seed``, ``3 seeds``."""
    return f"{count} seed" + ("" if count == 1 else "s")


def comparison_title(name: str, methods: Sequence[str], seeds: int) -> str:
    """Return the title of a comparison: the spec's name, its methods and ``x 3 seeds``."""
    return f"{name}: {', '.join(methods)} x {seeds_text(seeds)}"


def _cell(result: MethodResult, values: list[float]) -> str:
    """Mean ± sample std; a single run is its value alone (one seed has no spread to show)."""
    if not values:
        return "-"
    mean, std = result.stats(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {std:.2f}"


def comparison_markdown(results: list[MethodResult], title: str) -> str:
    """Return the results as a markdown table (mean ± std over seeds, n per method; a method
    with one seed shows its value without ±)."""
    lines = [f"### {title}", "", "| method | n | val acc (%) | test acc (%) |", "|---|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.method} | {len(r.seeds)} | {_cell(r, r.val_acc)} | {_cell(r, r.test_acc)} |")
    return "\n".join(lines) + "\n"


def write_comparison(results: list[MethodResult], out_dir: Path, title: str) -> list[Path]:
    """Write ``comparison.md`` and ``comparison.json`` into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "comparison.md", out_dir / "comparison.json"
    md.write_text(comparison_markdown(results, title))
    js.write_text(json.dumps({"title": title, "methods": [asdict(r) for r in results]}, indent=2))
    return [md, js]
