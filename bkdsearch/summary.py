"""The end of ``bkdsearch run``: what the study found and the exact commands to go on, in 80
columns."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .invocation import program
from .progress import percent
from .search import format_value
from .search.study import was_interrupted

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from .search.worker import WorkerReport

WIDTH = 80
"""Summaries are written to fit this many columns (but a path or URL, never broken)."""


def _wrap(items: list[str], indent: str = "  ", width: int = WIDTH) -> list[str]:
    """``items`` joined with ", " into lines of at most ``width`` columns, breaking between
    items only (an item longer than a line gets one of its own)."""
    lines: list[str] = []
    line = ""
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else "")
        if line and len(indent) + len(line) + 1 + len(piece) > width:
            lines.append(indent + line)
            line = piece
        else:
            line = f"{line} {piece}" if line else piece
    if line:
        lines.append(indent + line)
    return lines


def _objective(name: str, value: float) -> str:
    """An objective's value with its unit: accuracies in %, FLOPs in GFLOPs/MFLOPs."""
    if name.endswith("acc"):
        return f"{name} {value:.2f}%"
    if name.endswith("gflops"):
        return f"{name} {value:.3g} GFLOPs"
    if name.endswith("mflops"):
        return f"{name} {value:.3g} MFLOPs"
    return f"{name} {value:.4g}"


def _best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The trial ``export --trial best`` takes: the complete trial with the highest first
    objective (of several objectives, on the Pareto front); None without a complete trial."""
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    if not complete:
        return None
    pool = study.best_trials if len(study.directions) > 1 else complete
    return max(pool or complete, key=lambda t: t.values[0])


def confirmed_lines(study: optuna.Study) -> list[str]:
    """Return the confirmed configurations (val and test mean ± std over n seeds, training
    GFLOPs per image, s/epoch) and the winner's gain over the baseline with its interval,
    wrapped to :data:`WIDTH` columns; empty without confirmations."""
    import textwrap

    from .search.confirm import confirmed_configurations, cost_text, gain_of

    configs = confirmed_configurations(study)
    if not configs:
        return []
    lines = ["confirmed (mean ± std over seeds; chosen on val only):"]
    for c in configs:
        test = list(c.test.values())
        said = (f"{c.label}: val {_mean_std(list(c.val.values()))}"
                + (f", test {_mean_std(test)}" if test else "") + f", n={c.n}; {cost_text(c)}")
        lines += textwrap.wrap(said, WIDTH, initial_indent="  ", subsequent_indent="    ",
                               break_long_words=False, break_on_hyphens=False)
    gain = gain_of(study)
    for line in gain.lines() if gain is not None else []:
        lines += textwrap.wrap(line, WIDTH, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)
    return lines


def _mean_std(values: list[float]) -> str:
    """``mean ± std%`` of accuracies; a single value alone (one seed has no spread)."""
    import statistics

    if len(values) == 1:
        return f"{values[0]:.2f}%"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}%"


def next_command(command: str, *args: str, spec_path: str | None, storage: str | None,
                 study_name: str | None) -> str:
    """Return the shell line of ``bkdsearch COMMAND`` (started as :func:`program` says, so it
    runs when pasted into the same shell) on the same SPEC, --storage and --study as given
    (each only when given), then ``args``; the storage's password shows as ``***``."""
    import shlex

    from .search.storage import clean, url_secrets

    words = [*program(), command]
    if spec_path:
        words.append(spec_path)
    if storage:
        words += ["--storage", clean(storage, url_secrets(storage))]
    if study_name:
        words += ["--study", study_name]
    return shlex.join([*words, *args])


def run_summary(study: optuna.Study, report: WorkerReport, *, cap: int, spec_path: str, storage: str | None = None,
                study_name: str | None = None, n_trials: int | None = None,
                run_options: list[str] | None = None) -> list[str]:
    """Return the lines ``run`` ends with: the study's trials (finished, pruned, failed, and
    interrupted ones queued again counted apart) and this worker's, the best trial
    (objectives with units, test accuracy, the teacher's when the study records
    ``teacher_test_acc``, parameters), the confirmed configurations and the winner's gain
    over the baseline (:func:`confirmed_lines`), whether the cap is reached and how
    to raise it, and the next commands on the same SPEC/--storage/--study as given (the
    password hidden). Lines fit :data:`WIDTH` columns but for long paths and URLs.

    Args:
        study: the study run.
        report: this worker's :class:`bkdsearch.search.WorkerReport`.
        cap: the cap on the study's finished trials.
        spec_path, storage, study_name, n_trials: SPEC and the options as the user gave them
            (None: not given).
        run_options: options every ``run`` line repeats (``--set KEY=VALUE`` ...): what the
            study's fixed configuration needs.
    """
    from optuna.trial import TrialState


    trials = study.get_trials(deepcopy=False)
    count = {s: sum(1 for t in trials if t.state == s) for s in TrialState}
    complete, pruned = count[TrialState.COMPLETE], count[TrialState.PRUNED]
    finished = complete + pruned
    given = {"spec_path": spec_path, "storage": storage, "study_name": study_name}
    again = list(run_options or [])
    others = [f"{count[s]} {s.name.lower()}" for s in (TrialState.RUNNING, TrialState.WAITING) if count[s]]
    stopped = sum(1 for t in trials if was_interrupted(t))
    lines = _wrap([f"summary of study {study.study_name}: {complete} complete", f"{pruned} pruned",
                   f"{count[TrialState.FAIL] - stopped} failed",
                   *([f"{stopped} interrupted (queued again)"] if stopped else []), *others], indent="")
    stopped_here = f", {report.interrupted} interrupted" if report.interrupted else ""
    lines.append(f"this worker: {report.complete} complete, {report.pruned} pruned, {report.failed} failed"
                 + stopped_here)
    best = _best_trial(study)
    if best is None:
        lines.append("no complete trial yet")
    else:
        names = list(study.metric_names or ["val_acc"])
        names += [f"objective_{i}" for i in range(len(names), len(best.values))]
        multi = len(study.directions) > 1
        lines.append(f"best trial {best.number}" + (f" (highest {names[0]} on the Pareto front):" if multi else ":"))
        lines += _wrap([_objective(n, v) for n, v in zip(names, best.values, strict=False)])
        test, teacher = best.user_attrs.get("test_acc"), study.user_attrs.get("teacher_test_acc")
        acc = f"  test accuracy {percent(test)}"
        lines.append(acc + (f" (teacher {percent(teacher)})" if teacher is not None else ""))
        if best.params:
            lines += _wrap([f"{k}={format_value(v)}" for k, v in best.params.items()])
    lines += confirmed_lines(study)
    if finished >= cap:
        trained = report.complete + report.pruned + report.failed + report.interrupted
        lines.append(f"the cap of {cap} finished trials " + ("was already reached: nothing was run"
                                                              if not trained else "is reached"))
        lines.append(f"to train more, raise it (--n-trials larger than {finished}):")
        lines.append("  " + next_command("run", "--n-trials", str(finished + cap), *again, **given))
    else:
        lines.append(f"{finished} of the cap of {cap} trials finished; to go on:")
        extra = ["--n-trials", str(n_trials)] if n_trials else []
        lines.append("  " + next_command("run", *extra, *again, **given))
    return lines + next_steps(study.study_name, export=best is not None, **given)


def next_steps(study: str, *, spec_path: str | None, storage: str | None, study_name: str | None,
               export: bool = True) -> list[str]:
    """Return the ``next:`` lines a command that trained trials ends with: ``status``,
    ``dashboard``, ``report`` and (with ``export``) ``export`` on the same SPEC, --storage and
    --study as given, each as :func:`next_command` writes it (the password as ``***``)."""
    given = {"spec_path": spec_path, "storage": storage, "study_name": study_name}
    lines = ["next:", "  " + next_command("status", **given), "  " + next_command("dashboard", **given),
             "  " + next_command("report", "-o", f"reports/{study}", **given)]
    if export:
        lines.append("  " + next_command("export", "--trial", "best", "-o", "train_best.py", **given))
    if storage and "***" in lines[1] and "***" not in storage:
        lines.append("(*** stands for the storage password)")
    return lines
