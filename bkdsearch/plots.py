"""The plots of ``bkdsearch report``: what each shows, drawn so that it cannot mislead.

- every line and point set carries a label (a legend inside the plot, or beside it when
  there are many lines);
- accuracy ticks get as many decimals as it takes to tell them apart (36.2%, 36.4%, never
  "36%" three times);
- a plot with nothing to show is not drawn: :func:`draw_plots` returns why instead, and the
  report's summary.md says so;
- accuracy is drawn against the study's own cost objective (``train_gflops``,
  ``student_mflops``) when it has one, else against the FLOPs that differ between trials,
  each axis with its unit;
- colours come from one fixed, perceptually uniform colormap (viridis) where the better
  trial is darker, whatever the study.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib
import numpy as np
import optuna
from matplotlib.ticker import Formatter
from optuna.trial import FrozenTrial, TrialState

matplotlib.use("Agg")  # files only: no display is needed or wanted

MIN_TRIALS_FOR_IMPORTANCE = 10
"""Parameter importances from fewer finished trials are noise; the report says so instead."""

MAX_LEGEND_LINES = 10
"""More lines than this get their legend beside the plot (inside, it would hide them)."""

LEGEND_ROWS = 28
"""Rows of a legend beside the plot before it takes another column."""

COLORMAP = "viridis"
"""Perceptually uniform; reversed where needed so that the better trial is the darker one."""

COSTS = {
    "train_gflops": ("train-step GFLOPs per image", 1.0),
    "student_mflops": ("student MFLOPs per image", 1.0),
}
"""Cost objectives a study may have: axis label with its unit, and the factor from the value."""

Figure = Any
"""A matplotlib figure."""


def draw_plots(study: optuna.Study, trials: list[FrozenTrial], confirmed: Sequence[Any] = ()
               ) -> tuple[list[tuple[str, Figure]], list[str]]:
    """Return the report's figures as (file name, figure), and for each plot not drawn a line
    saying why (``\\`loss_terms.png\\` not drawn: ...``). The caller saves and closes them.
    ``confirmed``: the study's confirmed configurations
    (:func:`bkdsearch.search.confirm.confirmed_configurations`), drawn over their seeds.

    Plots: history (complete and pruned trials, best so far), validation curves per epoch,
    loss terms of the best trial, accuracy against cost, parallel coordinates, the Pareto
    front (several objectives) and parameter importances (from
    :data:`MIN_TRIALS_FOR_IMPORTANCE` complete trials).
    """
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    names = list(study.metric_names or ["val_acc"])
    figures: list[tuple[str, Figure]] = []
    skipped: list[str] = []
    if not complete:
        return figures, ["no plot drawn: no trial has completed"]
    cost_name, _ = _cost_axis(names, complete)
    plots: list[tuple[str, str, Callable[[Any], str | None]]] = [
        ("history.png", "optimisation history", lambda ax: _history(ax, trials, names[0])),
        ("curves.png", "validation accuracy per epoch", lambda ax: _curves(ax, trials)),
        ("loss_terms.png", "loss terms of the best trial", lambda ax: _loss_terms(ax, complete)),
        ("acc_vs_flops.png", f"{names[0]} against {cost_name.split(' (')[0]}",
         lambda ax: _acc_cost(ax, complete, names)),
        ("confirmed.png", "confirmed configurations over seeds", lambda ax: _confirmed_seeds(ax, confirmed)),
    ]
    # Optuna's plots switch pyplot to its ggplot style for good: ours keep the default.
    with matplotlib.style.context("default"):
        for filename, title, draw in plots:
            _draw(filename, f"{study.study_name}: {title}", draw, figures, skipped)
    figures += _optuna_plots(study, complete, names, skipped)
    return figures, skipped


def _draw(filename: str, title: str, draw: Callable[[Any], str | None], figures: list[tuple[str, Figure]],
          skipped: list[str]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    why_not = draw(ax)
    if why_not:
        plt.close(fig)
        skipped.append(f"`{filename}` not drawn: {why_not}.")
        return
    ax.set_title(title)
    fig.tight_layout()
    figures.append((filename, fig))


# --------------------------------------------------------------------------- axes


def _integer_x(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _percent_y(ax: Any, label: str) -> None:
    ax.yaxis.set_major_formatter(DistinctPercent())
    ax.set_ylabel(label)


class DistinctPercent(Formatter):
    """Percent tick labels (``36.25%``) with the fewest decimals, 0 to 4, that keep every tick
    on the axis distinct."""

    decimals = 0

    def set_locs(self, locs: Any) -> None:
        """Choose the decimals for the ticks ``locs`` about to be labelled."""
        super().set_locs(locs)
        values = sorted(float(v) for v in locs)
        self.decimals = 0
        while self.decimals < 4 and len({f"{v:.{self.decimals}f}" for v in values}) < len(values):
            self.decimals += 1

    def __call__(self, x: float, pos: int | None = None) -> str:
        """Return the label of the tick at ``x``."""
        return f"{x:.{self.decimals}f}%"


def _label_lines(ax: Any, lines: list[Any]) -> None:
    """A legend naming every line: inside the plot for a few, beside it (in columns of at most
    :data:`LEGEND_ROWS`) for more, so that it never hides a line."""
    if len(lines) <= MAX_LEGEND_LINES:
        ax.legend(fontsize=8)
        return
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
              ncol=math.ceil(len(lines) / LEGEND_ROWS))


def _shades(count: int) -> list[Any]:
    """``count`` colours of :data:`COLORMAP`, darkest first (the best trial, when sorted so);
    the lightest stops short of yellow, which a white page hides."""
    cmap = matplotlib.colormaps[COLORMAP]
    return [cmap(0.85 * i / max(count - 1, 1)) for i in range(count)]


# --------------------------------------------------------------------------- our plots


def _history(ax: Any, trials: list[FrozenTrial], name: str) -> str | None:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    ax.scatter([t.number for t in done], [t.values[0] for t in done], label="complete", color="#31688e")
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter([t.number for t in pruned], last, marker="x", color="0.55", label="pruned (last epoch)")
    best, xs, ys = -math.inf, [], []
    for t in sorted(done, key=lambda t: t.number):
        best = max(best, t.values[0])
        xs.append(t.number)
        ys.append(best)
    ax.step(xs, ys, where="post", color="#440154", label="best so far")
    ax.set_xlabel("trial")
    _integer_x(ax)
    _percent_y(ax, name.replace("_", " ") + " (%)" if name.endswith("acc") else name)
    ax.legend()
    return None


def _curves(ax: Any, trials: list[FrozenTrial]) -> str | None:
    shown = [t for t in trials if t.intermediate_values and t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if not shown:
        return "no trial reported per-epoch values (multi-objective studies do not report them to Optuna)"
    if all(len(t.intermediate_values) < 2 for t in shown):
        return "every trial reported one epoch: a curve needs two (history.png shows the accuracies)"
    # Best final accuracy first, so the best trial gets the darkest colour.
    shown.sort(key=lambda t: -t.intermediate_values[max(t.intermediate_values)])
    lines = []
    for t, color in zip(shown, _shades(len(shown)), strict=True):
        steps = sorted(t.intermediate_values)
        style = "-" if t.state == TrialState.COMPLETE else ":"
        pruned = " (pruned)" if t.state == TrialState.PRUNED else ""
        lines += ax.plot(steps, [t.intermediate_values[s] for s in steps], style, marker="." if len(steps) < 12
                         else None, color=color, label=f"trial {t.number}{pruned}")
    ax.set_xlabel("epoch (dotted: pruned; darker: higher final accuracy)")
    _integer_x(ax)
    _percent_y(ax, "validation accuracy (%)")
    _label_lines(ax, lines)
    return None


def _loss_terms(ax: Any, complete: list[FrozenTrial]) -> str | None:
    best = max(complete, key=lambda t: t.values[0])
    curves = best.user_attrs.get("loss_terms")
    if not curves:
        return f"trial {best.number} recorded no per-epoch loss terms"
    epochs = max(len(v) for v in curves.values())
    if epochs < 2:
        return f"trial {best.number} trained {epochs} epoch: a curve of its loss terms needs two"
    moving = {term: values for term, values in curves.items() if any(v != 0 for v in values)}
    if not moving:
        return f"every loss term of trial {best.number} is 0"
    lines = []
    for (term, values), color in zip(sorted(moving.items()), _shades(len(moving)), strict=True):
        lines += ax.plot(range(1, len(values) + 1), values, marker="." if len(values) < 12 else None,
                         color=color, label=term)
    ax.set_xlabel("epoch" + (f" (always 0, not drawn: {', '.join(sorted(set(curves) - set(moving)))})"
                             if len(moving) < len(curves) else ""))
    ax.set_ylabel(f"mean loss term per step (trial {best.number})")
    _integer_x(ax)
    _label_lines(ax, lines)
    return None


def _cost_axis(names: list[str], complete: list[FrozenTrial]) -> tuple[str, Callable[[FrozenTrial], float | None]]:
    """The cost accuracy is drawn against: the study's own cost objective when it has one,
    else student MFLOPs, else (all students alike) train-step GFLOPs; (axis label, value)."""
    for i, name in enumerate(names[1:], 1):
        if name in COSTS:
            label = f"{COSTS[name][0]} (objective {name})"
            return label, lambda t, i=i: t.values[i] if t.values and len(t.values) > i else None

    def student(t: FrozenTrial) -> float | None:
        value = (t.user_attrs.get("flops") or {}).get("student")
        return value / 1e6 if value else None

    def step(t: FrozenTrial) -> float | None:
        value = (t.user_attrs.get("flops") or {}).get("train_step")
        return value / 1e9 if value else None

    students = {student(t) for t in complete} - {None}
    if len(students) > 1:
        return COSTS["student_mflops"][0], student
    return COSTS["train_gflops"][0] + " (the student's FLOPs are the same in every trial)", step


def _acc_cost(ax: Any, complete: list[FrozenTrial], names: list[str]) -> str | None:
    label, cost = _cost_axis(names, complete)
    points = [(cost(t), t.values[0], t.number) for t in complete if cost(t) is not None]
    if not points:
        return "no trial recorded FLOPs"
    if len({round(p[0], 9) for p in points}) == 1 and len(points) > 1:
        return f"every trial has the same cost ({points[0][0]:.4g} {label.split(' (')[0]}): nothing to compare"
    ranked = sorted(points, key=lambda p: -p[1])
    ax.scatter([p[0] for p in ranked], [p[1] for p in ranked], c=_shades(len(ranked)), label="complete trial "
               "(darker: more accurate)")
    for x, y, n in points:
        ax.annotate(f"#{n}", (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(label)
    _percent_y(ax, f"{names[0].replace('_', ' ')} (%)")
    ax.legend(fontsize=8)
    return None


# --------------------------------------------------------------------------- Optuna's plots


def _confirmed_seeds(ax: Any, configs: Sequence[Any]) -> str | None:
    """Each confirmed configuration's runs (validation accuracy by seed) as points, their mean
    and 95% t-interval; the baseline in its own colour."""
    from .gain import CONFIDENCE, mean_interval

    if not configs:
        return "no configuration was confirmed (run `bkdsearch confirm`)"
    for x, c in enumerate(configs):
        colour = "tab:orange" if c.baseline else "tab:blue"
        values = list(c.val.values())
        ax.scatter([x] * len(values), values, color=colour, alpha=0.5, s=18)
        interval = mean_interval(values)
        low, high = (interval.low, interval.high) if interval is not None else (c.mean, c.mean)
        ax.errorbar([x + 0.15], [c.mean], yerr=[[c.mean - low], [high - c.mean]], fmt="o", color=colour,
                    capsize=4, label="baseline" if c.baseline else "searched configuration")
    ax.set_xticks(range(len(configs)), [c.label.replace(" (baseline)", "\n(baseline)") for c in configs])
    ax.set_xlabel(f"confirmed configuration (points: seeds; bars: mean and {CONFIDENCE:.0%} interval)")
    _percent_y(ax, "validation accuracy (%)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize="small")
    return None


def _optuna_plots(study: optuna.Study, complete: list[FrozenTrial], names: list[str],
                  skipped: list[str]) -> list[tuple[str, Figure]]:
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
    else:
        skipped.append("`parallel.png` not drawn: the study searches no parameter.")
    if multi:
        plots.append(("pareto.png", "Pareto front", lambda: ovm.plot_pareto_front(study, target_names=names)))
    figures = []
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
            if filename == "parallel.png":
                _fixed_colormap(fig, study.directions[0])
            fig.suptitle(f"{study.study_name}: {title}")
            fig.set_size_inches(9, 5)
            fig.tight_layout()
            figures.append((filename, fig))
    return figures


def _fixed_colormap(fig: Any, direction: optuna.study.StudyDirection) -> None:
    """Recolour Optuna's parallel-coordinate lines (its Blues flip with the study's
    direction and paint the best trial nearly white) with :data:`COLORMAP`, better darker."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import ListedColormap

    # Stops short of viridis' yellow end, which a white page hides (as _shades does).
    shades = matplotlib.colormaps[COLORMAP](np.linspace(0.0, 0.85, 256))
    maximize = direction == optuna.study.StudyDirection.MAXIMIZE
    cmap = ListedColormap(shades[::-1] if maximize else shades, name=COLORMAP + ("_r" if maximize else ""))
    for ax in fig.axes:
        for collection in ax.collections:
            if isinstance(collection, LineCollection):
                collection.set_cmap(cmap)
                collection.set_zorder(3)
