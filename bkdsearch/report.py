"""What a person reads about a study: ``status`` tables that fit 80 columns, and ``report``:
titled PNG plots plus a summary.md that links them and ends with the export command."""

from __future__ import annotations

import math
import shlex
import statistics
import textwrap
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from .errors import NotFound
from .gain import CONFIDENCE, mean_interval
from .progress import percent
from .search import format_value, load_study, make_storage, trial_config
from .search.confirm import confirmed_configurations, gain_of
from .urls import redact

RECENT_FAILURES = 5
"""How many of the latest failed trials ``status`` lists (not the surplus trials of a race on
the cap: they were queued again and never trained)."""

MIN_TRIALS_FOR_IMPORTANCE = 10
"""Parameter importances from fewer finished trials are noise; the report says so instead."""


# --------------------------------------------------------------------------- facts


def _objective_text(name: str, value: float) -> str:
    return f"{value:.2f}%" if name.endswith("acc") else f"{value:.3g}"


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in params.items())


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _flat(t: FrozenTrial) -> dict[str, Any]:
    attrs = t.user_attrs
    flops = attrs.get("flops") or {}
    return {"number": t.number, "values": t.values, "test_acc": attrs.get("test_acc"),
            "student_mflops": flops["student"] / 1e6 if flops.get("student") else None,
            "train_gflops": flops["train_step"] / 1e9 if flops.get("train_step") else None,
            "wall_time_s": attrs.get("wall_time_s"), "params": t.params,
            "confirm_of": attrs.get("confirm_of"), "seed": attrs.get("seed")}


def study_status(storage_url: str, study_name: str | None = None) -> list[dict[str, Any]]:
    """Return one dict per study (or just ``study_name``): trial counts by state, the best
    trials (objectives, test acc, FLOPs, time, params), the confirmed configurations, the
    running trials (worker, epochs done, params) and the last failures with their reasons.

    Raises:
        NotFound: ``study_name`` is not in the storage.
        StorageError: the storage cannot be opened (or is a missing SQLite file).
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
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        pareto = {t.number for t in study.best_trials} if len(study.directions) > 1 else set()
        best = sorted(complete, key=lambda t: t.values[0], reverse=True)[:5]
        rows.append({
            "study": name,
            "objectives": study.metric_names or ["val_acc"],
            "counts": {s.name.lower(): sum(1 for t in trials if t.state == s) for s in TrialState},
            "best": [{**_flat(t), "pareto": t.number in pareto} for t in best],
            "configurations": confirmed_rows(study),
            "gain": gain_row(study),
            "teacher_acc": study.user_attrs.get("teacher_test_acc"),
            "mixed": mixed_configurations(study, trials),
            "running": [_running(t) for t in trials if t.state == TrialState.RUNNING],
            "failed": [{"number": t.number, "reason": t.user_attrs.get("fail_reason", "-")}
                       for t in trials if t.state == TrialState.FAIL
                       and not t.user_attrs.get("fail_reason", "").startswith("surplus")][-RECENT_FAILURES:],
        })
    return rows


def mixed_configurations(study: optuna.Study, trials: list[FrozenTrial]) -> list[str]:
    """Return the digests of the fixed configurations a mixed study holds (workers that joined
    with ``--allow-different-spec``, trials that record another ``config_digest``); an empty
    list when the study has one configuration."""
    digests = set(study.user_attrs.get("mixed_configs", []))
    digests |= {t.user_attrs["config_digest"] for t in trials if t.user_attrs.get("config_digest")}
    if digests:
        digests.add(study.user_attrs.get("fixed_config_digest") or next(iter(digests)))
    return sorted(digests) if len(digests) > 1 else []


MIXED_NOTE = ("MIXED: its trials were trained with {n} different fixed configurations (digests {digests}; "
              "workers joined with --allow-different-spec): compare trials only within one (user attr "
              "config_digest)")
"""What ``status`` and ``report`` say about a mixed study."""


def confirmed_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Return one row per confirmed configuration, highest mean validation accuracy first:
    its search trial (``trial``; -1 for a baseline no search trial ran), ``label``,
    ``baseline``, ``n``, val and test (mean, std) in %, ``train_gflops`` per image,
    ``epoch_s`` (wall seconds per epoch) and its parameters."""
    rows = []
    for c in confirmed_configurations(study):
        val, test = list(c.val.values()), list(c.test.values())
        rows.append({"trial": c.origin, "label": c.label, "baseline": c.baseline, "n": c.n, "val": _mean_std(val),
                     "test": _mean_std(test) if test else None, "train_gflops": c.train_gflops,
                     "epoch_s": c.epoch_s, "params": c.runs[0].params, "confirmed": True})
    return rows


def gain_row(study: optuna.Study) -> dict[str, Any] | None:
    """Return the confirmed winner against the baseline (:func:`bkdsearch.search.confirm.gain_of`)
    as JSON: ``baseline`` and ``challenger`` (search trials), ``winner``, the baseline's
    ``name``, the ``val``/``test`` intervals (mean, low, high, df, method, n; points) and the
    ``lines`` a person reads; None without a confirmed baseline."""
    gain = gain_of(study)
    if gain is None:
        return None
    return {"baseline": gain.baseline.origin, "name": gain.name, "winner": gain.winner.origin,
            "challenger": None if gain.challenger is None else gain.challenger.origin,
            "val": None if gain.val is None else asdict(gain.val),
            "test": None if gain.test is None else asdict(gain.test), "lines": gain.lines()}


def _running(trial: FrozenTrial) -> dict[str, Any]:
    """A running trial: who trains it, how far it got (its last epoch checkpoint) and since when."""
    attrs = trial.user_attrs
    return {"number": trial.number, "worker": attrs.get("worker", "-"),
            "epoch": (attrs.get("checkpoint") or {}).get("epoch", 0),
            "epochs": (attrs.get("run_config") or {}).get("train", {}).get("epochs"),
            "started": trial.datetime_start.isoformat(timespec="seconds") if trial.datetime_start else None,
            "params": trial.params}


# --------------------------------------------------------------------------- status


def render_status(rows: list[dict[str, Any]], console: Any) -> None:
    """Print :func:`study_status` rows: short tables with units, each trial's parameters on
    their own wrapped lines, so nothing is cut at 80 columns."""
    from rich.markup import escape
    from rich.table import Table

    if not rows:
        console.print("no studies in this storage")
    for row in rows:
        c = row["counts"]
        console.print(f"[bold]{escape(row['study'])}[/]: {c['complete']} complete, {c['pruned']} pruned, "
                      f"{c['fail']} failed, {c['running']} running, {c['waiting']} waiting")
        if row.get("mixed"):
            console.print("[bold yellow]" + escape(MIXED_NOTE.format(n=len(row["mixed"]),
                                                                     digests=", ".join(row["mixed"]))) + "[/]")
        if row.get("teacher_acc") is not None:
            console.print(f"teacher test accuracy {percent(row['teacher_acc'])}")
        if not row["best"]:
            console.print("no complete trial yet")
        else:
            multi = len(row["objectives"]) > 1
            table = Table(title=f"best trials by {row['objectives'][0]}", title_justify="left")
            table.add_column("trial", justify="right")
            for name in row["objectives"]:
                table.add_column(f"{name} (%)" if name.endswith("acc") else name, justify="right")
            table.add_column("test (%)", justify="right")
            table.add_column("MFLOPs", justify="right")
            table.add_column("min", justify="right")
            for b in row["best"]:
                mark = "*" if multi and b["pareto"] else ""
                table.add_row(f"{b['number']}{mark}",
                              *(f"{v:.2f}" if n.endswith("acc") else f"{v:.3g}"
                                for n, v in zip(row["objectives"], b["values"], strict=False)),
                              "-" if b["test_acc"] is None else f"{b['test_acc']:.2f}",
                              "-" if b["student_mflops"] is None else f"{b['student_mflops']:.1f}",
                              "-" if b["wall_time_s"] is None else f"{b['wall_time_s'] / 60:.1f}")
            console.print(table)
            if multi:
                console.print("* on the Pareto front")
            for b in row["best"]:
                origin = f" (confirms {b['confirm_of']}, seed {b['seed']})" if b.get("confirm_of") is not None else ""
                text = f"trial {b['number']}{origin}: {_params_text(b['params']) or '-'}"
                console.print(escape(textwrap.fill(text, width=max(console.width, 40), initial_indent="  ",
                                                   subsequent_indent="    ", break_long_words=False,
                                                   break_on_hyphens=False)), soft_wrap=True)
        if row.get("configurations"):
            table = Table(title="confirmed (mean ± std over seeds)", title_justify="left")
            for name in ("configuration", "n", "val (%)", "test (%)", "GFLOPs/img", "s/epoch"):
                table.add_column(name, justify="left" if name == "configuration" else "right")
            for conf in row["configurations"]:
                table.add_row(*_confirmed_cells(conf))
            console.print(table)
        for line in (row.get("gain") or {}).get("lines", []):
            console.print(escape(textwrap.fill(line, width=max(console.width, 40), subsequent_indent="  ",
                                               break_long_words=False, break_on_hyphens=False)), soft_wrap=True)
        if row["running"]:
            running = Table(title="running", title_justify="left")
            for name in ("trial", "epoch", "started", "worker"):
                running.add_column(name, justify="right" if name in ("trial", "epoch") else "left",
                                   overflow="fold")
            for r in row["running"]:
                running.add_row(str(r["number"]), f"{r['epoch']}/{r['epochs'] or '?'}", r["started"] or "-",
                                escape(r["worker"]))
            console.print(running)
        for f in row["failed"]:
            console.print(f"failed trial {f['number']}: {escape(f['reason'])}")


def _confirmed_cells(conf: dict[str, Any]) -> list[str]:
    """A :func:`confirmed_rows` row as text: label, n, val and test mean ± std, GFLOPs per
    image (training step) and seconds per epoch."""
    test = conf["test"]
    return [conf["label"], str(conf["n"]), f"{conf['val'][0]:.2f} ± {conf['val'][1]:.2f}",
            "-" if test is None else f"{test[0]:.2f} ± {test[1]:.2f}",
            "-" if conf["train_gflops"] is None else f"{conf['train_gflops']:.3g}",
            "-" if conf["epoch_s"] is None else f"{conf['epoch_s']:.1f}"]


# --------------------------------------------------------------------------- report


def write_report(storage_url: str, study_name: str, out_dir: Path) -> list[Path]:
    """Write titled PNG plots and ``summary.md`` into ``out_dir``; return the files written.

    Plots: history (complete and pruned trials, best so far), validation curves per epoch,
    loss terms of the best trial when recorded, accuracy against FLOPs, parallel coordinates,
    the Pareto front (two objectives) and parameter importances (from
    :data:`MIN_TRIALS_FOR_IMPORTANCE` finished trials). A plot without data is skipped with a
    line in summary.md saying why. A study with no complete trial gets a failure report.

    Raises:
        NotFound: no such study.
        StorageError: the storage cannot be opened (or is a missing SQLite file).
    """
    import matplotlib

    matplotlib.use("Agg")
    study = load_study(storage_url, study_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    names = study.metric_names or ["val_acc"]
    files: list[Path] = []
    skipped: list[str] = []
    plots: list[tuple[str, str, Callable[[Any], str | None]]] = [
        ("history.png", "optimisation history", lambda ax: _history(ax, trials, names[0])),
        ("curves.png", "validation accuracy per epoch", lambda ax: _curves(ax, trials)),
        ("loss_terms.png", "loss terms of the best trial", lambda ax: _loss_terms(ax, complete)),
        ("acc_vs_flops.png", f"{names[0]} against student MFLOPs", lambda ax: _acc_flops(ax, complete)),
        ("confirmed.png", "confirmed configurations over seeds", lambda ax: _confirmed_seeds(ax, study)),
    ]
    if complete:
        for filename, title, draw in plots:
            _save(out_dir, filename, f"{study.study_name}: {title}", draw, files, skipped)
        files += _optuna_plots(study, complete, names, out_dir, skipped)
    summary = out_dir / "summary.md"
    summary.write_text(_summary(study, trials, names, files, skipped, storage_url) if complete
                       else _failures(study, trials))
    return [*files, summary]


def _save(out_dir: Path, filename: str, title: str, draw: Callable[[Any], str | None], files: list[Path],
          skipped: list[str]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    try:
        why_not = draw(ax)
        if why_not:
            skipped.append(f"`{filename}` not drawn: {why_not}.")
            return
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(out_dir / filename, dpi=100)
        files.append(out_dir / filename)
    finally:
        plt.close(fig)


def _integer_x(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _percent_y(ax: Any, label: str) -> None:
    from matplotlib.ticker import PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.set_ylabel(label)


def _history(ax: Any, trials: list[FrozenTrial], name: str) -> str | None:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    ax.scatter([t.number for t in done], [t.values[0] for t in done], label="complete", color="tab:blue")
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter([t.number for t in pruned], last, marker="x", color="tab:gray", label="pruned (last epoch)")
    ordered = sorted(done, key=lambda t: t.number)
    best, xs, ys = -math.inf, [], []
    for t in ordered:
        best = max(best, t.values[0])
        xs.append(t.number)
        ys.append(best)
    ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    _integer_x(ax)
    _percent_y(ax, name.replace("_", " ") + " (%)" if name.endswith("acc") else name)
    ax.legend()
    return None


def _curves(ax: Any, trials: list[FrozenTrial]) -> str | None:
    shown = [t for t in trials if t.intermediate_values and t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if not shown:
        return "no trial reported per-epoch values (multi-objective studies do not report them to Optuna)"
    for t in shown:
        steps = sorted(t.intermediate_values)
        style = "-" if t.state == TrialState.COMPLETE else ":"
        ax.plot(steps, [t.intermediate_values[s] for s in steps], style, alpha=0.7)
    ax.set_xlabel("epoch (dotted: pruned)")
    _integer_x(ax)
    _percent_y(ax, "validation accuracy (%)")
    return None


def _loss_terms(ax: Any, complete: list[FrozenTrial]) -> str | None:
    best = max(complete, key=lambda t: t.values[0])
    curves = best.user_attrs.get("loss_terms")
    if not curves:
        return f"trial {best.number} recorded no per-epoch loss terms"
    for term, values in sorted(curves.items()):
        ax.plot(range(1, len(values) + 1), values, label=term)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean loss term per step")
    _integer_x(ax)
    ax.legend()
    return None


def _acc_flops(ax: Any, complete: list[FrozenTrial]) -> str | None:
    points = [(f["student_mflops"], f["values"][0], f["number"]) for f in map(_flat, complete)
              if f["student_mflops"] is not None]
    if not points:
        return "no trial recorded FLOPs"
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    for x, y, n in points:
        ax.annotate(str(n), (x, y), fontsize=8)
    ax.set_xlabel("student MFLOPs per image")
    _percent_y(ax, "validation accuracy (%)")
    return None


def _optuna_plots(study: optuna.Study, complete: list[FrozenTrial], names: list[str], out_dir: Path,
                  skipped: list[str]) -> list[Path]:
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    multi = len(study.directions) > 1
    target = (lambda t: t.values[0]) if multi else None
    plots: list[tuple[str, str, Callable[[], Any]]] = []
    if complete[0].params:
        plots.append(("parallel.png", f"parameters against {names[0]}",
                      lambda: ovm.plot_parallel_coordinate(study, target=target, target_name=names[0])))
        if len(complete) >= MIN_TRIALS_FOR_IMPORTANCE:
            plots.append(("importances.png", f"parameter importances for {names[0]}",
                          lambda: ovm.plot_param_importances(study, target=target, target_name=names[0])))
        else:
            skipped.append(f"`importances.png` not drawn: {len(complete)} complete trials; importances need "
                           f"at least {MIN_TRIALS_FOR_IMPORTANCE} to mean anything.")
    if multi:
        plots.append(("pareto.png", "Pareto front", lambda: ovm.plot_pareto_front(study, target_names=names)))
    files = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for filename, title, make in plots:
            try:
                ax = make()
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                skipped.append(f"`{filename}` not drawn: {exc}.")
                continue
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            for each in fig.axes:  # Optuna's generic titles give way to ours
                each.set_title("")
            fig.suptitle(f"{study.study_name}: {title}")
            fig.set_size_inches(9, 5)
            fig.tight_layout()
            fig.savefig(out_dir / filename, dpi=100)
            plt.close(fig)
            files.append(out_dir / filename)
    return files


def _summary(study: optuna.Study, trials: list[FrozenTrial], names: list[str], files: list[Path],
             skipped: list[str], storage_url: str) -> str:
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    counts = {s.name.lower(): sum(1 for t in trials if t.state == s) for s in TrialState}
    lines = [f"# Study `{study.study_name}`", "",
             f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed trials.",
             "Selection used validation accuracy only; test accuracy is reported, never selected on."]
    mixed = mixed_configurations(study, trials)
    if mixed:
        lines += ["", "**" + MIXED_NOTE.format(n=len(mixed), digests=", ".join(mixed)) + ".**"]
    teacher = study.user_attrs.get("teacher_test_acc")
    if teacher is not None:
        lines.append(f"Teacher test accuracy: {percent(teacher)}.")
    lines += ["", "## Best trials", "",
              "| trial | " + " | ".join(names) + " | test acc | student MFLOPs | time (min) | params |",
              "|---" * (len(names) + 5) + "|"]
    for f in map(_flat, sorted(complete, key=lambda t: t.values[0], reverse=True)[:10]):
        lines.append(f"| {f['number']} | " + " | ".join(_objective_text(n, v) for n, v in zip(names, f["values"],
                                                                                           strict=False))
                     + f" | {percent(f['test_acc'])} | "
                     + ("-" if f["student_mflops"] is None else f"{f['student_mflops']:.1f}") + " | "
                     + ("-" if f["wall_time_s"] is None else f"{f['wall_time_s'] / 60:.1f}") + " | "
                     + (_params_text(f["params"]) or "-") + " |")
    lines += _confirmed_section(study)
    if len(study.directions) > 1:
        lines += ["", "## Pareto front", ""]
        lines += [f"- trial {t.number}: " + ", ".join(f"{n} {_objective_text(n, v)}"
                                                      for n, v in zip(names, t.values, strict=False))
                  for t in study.best_trials]
    if gain_row(study) is None:  # before confirmation: single runs, with a warning
        lines += _against_enqueued(study, complete)
    lines += ["", "## Plots", ""]
    lines += [f"- [{p.stem}]({p.name})" for p in files]
    lines += [f"- {why}" for why in skipped]
    lines += ["", "## Next", "", "Export the best configuration as a plain training script:", "",
              f"    bkdsearch export --storage {shlex.quote(redact(storage_url))} --study "
              f"{shlex.quote(study.study_name)} --trial best -o train_best.py", ""]
    return "\n".join(lines)


def _confirmed_section(study: optuna.Study) -> list[str]:
    """summary.md's confirmed configurations (mean ± std, cost) and the gain of the winner over
    the baseline with its interval; empty without confirmations."""
    rows = confirmed_rows(study)
    if not rows:
        return []
    lines = ["", "## Confirmed configurations (mean ± std over seeds)", "",
             "| configuration | n | val acc (%) | test acc (%) | training GFLOPs/image | s/epoch |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(_confirmed_cells(c)) + " |" for c in rows]
    lines.append(f"\nConfirmed winner (highest mean validation accuracy): {rows[0]['label']}.")
    gain = gain_row(study)
    if gain is not None:
        lines += ["", f"## Gain over {gain['name']}", "", *(f"- {line}" for line in gain["lines"])]
    return lines


def _confirmed_seeds(ax: Any, study: optuna.Study) -> str | None:
    """Each confirmed configuration's runs (validation accuracy by seed) as points, their mean
    and 95% t-interval; the baseline in its own colour."""
    configs = confirmed_configurations(study)
    if not configs:
        return "no configuration was confirmed (run `bkdsearch confirm`)"
    for x, c in enumerate(configs):
        colour = "tab:orange" if c.baseline else "tab:blue"
        values = list(c.val.values())
        ax.scatter([x] * len(values), values, color=colour, alpha=0.5, s=18)
        interval = mean_interval(values)
        low, high = (interval.low, interval.high) if interval is not None else (c.mean, c.mean)
        ax.errorbar([x + 0.15], [c.mean], yerr=[[c.mean - low], [high - c.mean]], fmt="o", color=colour,
                    capsize=4)
    ax.set_xticks(range(len(configs)), [c.label.replace(" (baseline)", "\n(baseline)") for c in configs])
    ax.set_xlabel(f"confirmed configuration (points: seeds; bars: mean and {CONFIDENCE:.0%} interval)")
    _percent_y(ax, "validation accuracy (%)")
    return None


def _against_enqueued(study: optuna.Study, complete: list[FrozenTrial]) -> list[str]:
    enqueued = study.user_attrs.get("spec", {}).get("search", {}).get("enqueue", [])
    if not enqueued:
        return []
    lines = ["", "## Against the enqueued (published) configuration", ""]
    ref = _first_matching(complete, enqueued[0])
    if ref is None:
        return [*lines, "The enqueued configuration has not completed yet."]
    top = max(complete, key=lambda t: t.values[0])
    lines.append(f"Enqueued configuration: trial {ref.number}, val acc {ref.values[0]:.2f}%, "
                 f"test acc {percent(ref.user_attrs.get('test_acc'))}.")
    lines.append(f"Best found: trial {top.number}, val acc {top.values[0]:.2f}% "
                 f"({top.values[0] - ref.values[0]:+.2f} points, single runs: confirm over seeds before "
                 f"trusting the difference), test acc {percent(top.user_attrs.get('test_acc'))}.")
    return lines


def _failures(study: optuna.Study, trials: list[FrozenTrial]) -> str:
    counts = {s.name.lower(): sum(1 for t in trials if t.state == s) for s in TrialState}
    reasons: dict[str, list[int]] = {}
    for t in trials:
        if t.state == TrialState.FAIL:
            reasons.setdefault(t.user_attrs.get("fail_reason", "no reason recorded"), []).append(t.number)
    lines = [f"# Study `{study.study_name}`: no complete trial yet", "",
             f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed, "
             f"{counts['running']} running trials.", ""]
    if reasons:
        lines += ["## Why trials failed", "", "| trials | count | reason |", "|---|---|---|"]
        for reason, numbers in sorted(reasons.items(), key=lambda kv: -len(kv[1])):
            shown = ", ".join(str(n) for n in numbers[:10]) + (" ..." if len(numbers) > 10 else "")
            lines.append(f"| {shown} | {len(numbers)} | {reason.replace('|', '/')} |")
    lines.append("")
    return "\n".join(lines)


def _first_matching(trials: list[FrozenTrial], params: dict[str, Any]) -> FrozenTrial | None:
    for t in sorted(trials, key=lambda t: t.number):
        if all(t.params.get(k) == v for k, v in params.items()):
            return t
    return None


__all__ = ["confirmed_rows", "gain_row", "render_status", "study_status", "trial_config", "write_report"]
