"""What a person reads about a study: ``status`` tables that fit 80 columns, and ``report``:
titled PNG plots plus a summary.md that links them and ends with the export command."""

from __future__ import annotations

import shlex
import statistics
import textwrap
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from .errors import NotFound
from .invocation import program
from .progress import percent
from .search import format_value, load_study, make_storage, trial_config
from .search.confirm import confirmed_configurations, gain_of
from .search.study import was_interrupted
from .urls import redact

RECENT_FAILURES = 5
"""How many of the latest failed trials ``status`` lists (not the surplus trials of a race on
the cap: they were queued again and never trained)."""

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
            "counts": state_counts(trials),
            "best": [{**_flat(t), "pareto": t.number in pareto} for t in best],
            "configurations": confirmed_rows(study),
            "gain": gain_row(study),
            "teacher_acc": study.user_attrs.get("teacher_test_acc"),
            "mixed": mixed_configurations(study, trials),
            "running": [_running(t) for t in trials if t.state == TrialState.RUNNING],
            "failed": [{"number": t.number, "reason": t.user_attrs.get("fail_reason", "-")}
                       for t in trials if t.state == TrialState.FAIL and not was_interrupted(t)
                       and not t.user_attrs.get("fail_reason", "").startswith("surplus")][-RECENT_FAILURES:],
        })
    return rows


def state_counts(trials: list[FrozenTrial]) -> dict[str, int]:
    """Return the trials per state (``complete``, ``pruned``, ``fail``, ``running``,
    ``waiting``), with the trials that failed only because their worker was stopped and were
    queued again counted apart as ``interrupted``, never as ``fail``."""
    counts = {s.name.lower(): sum(1 for t in trials if t.state == s) for s in TrialState}
    counts["interrupted"] = sum(1 for t in trials if was_interrupted(t))
    counts["fail"] -= counts["interrupted"]
    return counts


def _interrupted_text(counts: dict[str, int]) -> str:
    return f", {counts['interrupted']} interrupted (queued again)" if counts["interrupted"] else ""


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
                      f"{c['fail']} failed{_interrupted_text(c)}, {c['running']} running, {c['waiting']} waiting")
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
    """Write titled PNG plots (:func:`bkdsearch.plots.draw_plots`) and ``summary.md`` into
    ``out_dir``; return the files written. A plot without data is not drawn, with a line in
    summary.md saying why. A study with no complete trial gets a failure report.

    Raises:
        NotFound: no such study.
        StorageError: the storage cannot be opened (or is a missing SQLite file).
    """
    import matplotlib.pyplot as plt

    from .plots import draw_plots

    study = load_study(storage_url, study_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    names = study.metric_names or ["val_acc"]
    files: list[Path] = []
    skipped: list[str] = []
    if complete:
        figures, skipped = draw_plots(study, trials, confirmed_configurations(study))
        for filename, fig in figures:
            try:
                fig.savefig(out_dir / filename, dpi=100)
                files.append(out_dir / filename)
            finally:
                plt.close(fig)
    summary = out_dir / "summary.md"
    summary.write_text(_summary(study, trials, names, files, skipped, storage_url) if complete
                       else _failures(study, trials))
    return [*files, summary]


def _summary(study: optuna.Study, trials: list[FrozenTrial], names: list[str], files: list[Path],
             skipped: list[str], storage_url: str) -> str:
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    counts = state_counts(trials)
    lines = [f"# Study `{study.study_name}`", "",
             f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed"
             f"{_interrupted_text(counts)} trials.",
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
              "    " + shlex.join([*program(), "export", "--storage", redact(storage_url), "--study",
                                     study.study_name, "--trial", "best", "-o", "train_best.py"]), ""]
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
    counts = state_counts(trials)
    reasons: dict[str, list[int]] = {}
    for t in trials:
        if t.state == TrialState.FAIL and not was_interrupted(t):
            reasons.setdefault(t.user_attrs.get("fail_reason", "no reason recorded"), []).append(t.number)
    lines = [f"# Study `{study.study_name}`: no complete trial yet", "",
             f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed"
             f"{_interrupted_text(counts)}, {counts['running']} running trials.", ""]
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
