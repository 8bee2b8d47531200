"""Study status tables and reports (PNG plots + summary.md)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from .errors import NotFound
from .search import format_value, load_study, make_storage, trial_config
from .urls import redact


def study_status(storage_url: str, study_name: str | None = None) -> list[dict[str, Any]]:
    """Return one dict per study (or just ``study_name``): trial counts by state, the best
    trials (val acc, test acc, params), the running trials (worker, epochs done, params) and
    the last failed trials with their reasons.

    Raises:
        StudyNotFound: ``study_name`` is not in the storage.
        bkdsearch.search.StorageError: the storage cannot be opened (or is a missing SQLite file).
    """
    storage = make_storage(storage_url, create=False)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if study_name is not None:
        if study_name not in names:
            raise NotFound(f"no study {study_name!r} in {redact(storage_url)}; "
                                f"studies: {', '.join(names) or 'none'}")
        names = [study_name]
    rows = []
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        counts = {s.name.lower(): sum(1 for t in trials if t.state == s) for s in TrialState}
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        best = study.best_trials if len(study.directions) > 1 else sorted(
            complete, key=lambda t: t.values[0], reverse=True)[:5]
        rows.append({
            "study": name,
            "objectives": study.metric_names or ["val_acc"],
            "counts": counts,
            "best": [{"number": t.number, "values": t.values, "test_acc": t.user_attrs.get("test_acc"),
                      "params": t.params} for t in best],
            "running": [_running(t) for t in trials if t.state == TrialState.RUNNING],
            "failed": [{"number": t.number, "reason": t.user_attrs.get("fail_reason", "-")}
                       for t in trials if t.state == TrialState.FAIL
                       and not t.user_attrs.get("fail_reason", "").startswith("surplus")][-RECENT_FAILURES:],
        })
    return rows


RECENT_FAILURES = 5
"""How many of the latest failed trials ``status`` lists (not the surplus trials of a race on
the cap: they were queued again and never trained)."""


def _running(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A running trial: who trains it, how far it got (its last epoch checkpoint) and since when."""
    attrs = trial.user_attrs
    return {"number": trial.number, "worker": attrs.get("worker", "-"),
            "epoch": (attrs.get("checkpoint") or {}).get("epoch", 0),
            "epochs": (attrs.get("run_config") or {}).get("train", {}).get("epochs"),
            "started": trial.datetime_start.isoformat(timespec="seconds") if trial.datetime_start else None,
            "params": trial.params}


def render_status(rows: list[dict[str, Any]], console: Any) -> None:
    """Print :func:`study_status` rows as rich tables."""
    from rich.markup import escape
    from rich.table import Table

    if not rows:
        console.print("no studies in this storage")
    for row in rows:
        c = row["counts"]
        console.print(f"[bold]{row['study']}[/]: {c['complete']} complete, {c['pruned']} pruned, "
                      f"{c['fail']} failed, {c['running']} running, {c['waiting']} waiting")
        table = Table()
        table.add_column("trial", justify="right")
        for name in row["objectives"]:
            table.add_column(name, justify="right")
        table.add_column("test_acc", justify="right")
        table.add_column("params")
        for b in row["best"]:
            table.add_row(str(b["number"]), *(f"{v:.3f}" for v in b["values"]),
                          "-" if b["test_acc"] is None else f"{b['test_acc']:.2f}",
                          escape(", ".join(f"{k}={format_value(v)}" for k, v in b["params"].items())))
        console.print(table)
        if row["running"]:
            running = Table(title="running")
            for name in ("trial", "worker", "epoch", "started", "params"):
                running.add_column(name, justify="right" if name in ("trial", "epoch") else "left")
            for r in row["running"]:
                running.add_row(str(r["number"]), escape(r["worker"]), f"{r['epoch']}/{r['epochs'] or '?'}",
                                r["started"] or "-",
                                escape(", ".join(f"{k}={format_value(v)}" for k, v in r["params"].items())))
            console.print(running)
        for f in row["failed"]:
            console.print(f"failed trial {f['number']}: {escape(f['reason'])}", soft_wrap=True)


def write_report(storage_url: str, study_name: str, out_dir: Path) -> list[Path]:
    """Write PNG plots (history, Pareto front when multi-objective, importances,
    intermediate values) and ``summary.md`` into ``out_dir``; return the files written.

    Raises:
        StudyNotFound: no such study, or it has no complete trial.
        bkdsearch.search.StorageError: the storage cannot be opened (or is a missing SQLite file).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    study = load_study(storage_url, study_name)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise NotFound(f"study {study_name!r} has no complete trial to report on")
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    multi = len(study.directions) > 1
    names = study.metric_names or ["val_acc"]
    plots: list[tuple[str, Any]] = [
        ("history.png", lambda: ovm.plot_optimization_history(study, target=(lambda t: t.values[0]) if multi else None,
                                                             target_name=names[0])),
        ("intermediate.png", lambda: ovm.plot_intermediate_values(study)),
    ]
    if multi:
        plots.append(("pareto.png", lambda: ovm.plot_pareto_front(study, target_names=names)))
    if len(complete) >= 2 and complete[0].params:
        plots.append(("importances.png", lambda: ovm.plot_param_importances(
            study, target=(lambda t: t.values[0]) if multi else None, target_name=names[0])))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for filename, make in plots:
            try:
                ax = make()
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                (out_dir / f"{filename}.txt").write_text(f"not plotted: {exc}\n")
                continue
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            fig.savefig(out_dir / filename, dpi=100)
            plt.close(fig)
            files.append(out_dir / filename)
    summary = out_dir / "summary.md"
    summary.write_text(_summary(study, names))
    files.append(summary)
    return files


def _summary(study: optuna.Study, names: list[str]) -> str:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    counts = {s.name.lower(): sum(1 for t in trials if t.state == s) for s in TrialState}
    lines = [f"# Study `{study.study_name}`", "",
             f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed trials.",
             "Selection used validation accuracy only; test accuracy is reported, never selected on.", ""]
    best = sorted(complete, key=lambda t: t.values[0], reverse=True)[:10]
    lines += ["## Best trials", "", "| trial | " + " | ".join(names) + " | test_acc | params |",
              "|---" * (len(names) + 3) + "|"]
    for t in best:
        test = t.user_attrs.get("test_acc")
        lines.append(f"| {t.number} | " + " | ".join(f"{v:.3f}" for v in t.values)
                     + f" | {'-' if test is None else f'{test:.2f}'} | "
                     + ", ".join(f"{k}={format_value(v)}" for k, v in t.params.items()) + " |")
    if len(study.directions) > 1:
        lines += ["", "## Pareto front", ""]
        lines += [f"- trial {t.number}: " + ", ".join(f"{n}={v:.3f}" for n, v in zip(names, t.values, strict=False))
                  for t in study.best_trials]
    enqueued = study.user_attrs.get("spec", {}).get("search", {}).get("enqueue", [])
    if enqueued:
        lines += ["", "## Against the enqueued (published) configuration", ""]
        ref = _first_matching(complete, enqueued[0])
        if ref is None:
            lines.append("The enqueued configuration has not completed yet.")
        else:
            top = best[0]
            lines.append(f"Enqueued configuration: trial {ref.number}, val acc {ref.values[0]:.2f}%, "
                         f"test acc {_pct(ref.user_attrs.get('test_acc'))}.")
            lines.append(f"Best found: trial {top.number}, val acc {top.values[0]:.2f}% "
                         f"({top.values[0] - ref.values[0]:+.2f} points), test acc "
                         f"{_pct(top.user_attrs.get('test_acc'))}.")
    lines.append("")
    return "\n".join(lines)


def _first_matching(trials: list[optuna.trial.FrozenTrial], params: dict[str, Any]) -> optuna.trial.FrozenTrial | None:
    for t in sorted(trials, key=lambda t: t.number):
        if all(t.params.get(k) == v for k, v in params.items()):
            return t
    return None


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}%"


__all__ = ["render_status", "study_status", "trial_config", "write_report"]
