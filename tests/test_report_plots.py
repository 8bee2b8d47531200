"""The report's plots tell the truth (issue 26, item 4): distinct tick labels, every line
labelled, no empty plot (a line in summary.md instead), accuracy against the study's own cost
objective with units, one fixed colormap with the better trial darker. Read from the
matplotlib figures, not from pixels."""

from __future__ import annotations

import matplotlib.pyplot as plt
import optuna
import pytest
from matplotlib.collections import LineCollection, PathCollection

from bkdsearch.plots import draw_plots
from bkdsearch.report import write_report

DIST = {"train.lr": optuna.distributions.FloatDistribution(0.01, 0.2, log=True),
        "blockkd.tau": optuna.distributions.FloatDistribution(1.0, 8.0)}
ACCS = [36.1, 36.3, 36.4, 37.5]  # what rounded to "36%" three times


def _one_epoch_study(url: str) -> optuna.Study:
    study = optuna.create_study(storage=url, study_name="one", direction="maximize")
    for i, acc in enumerate(ACCS):
        study.add_trial(optuna.trial.create_trial(
            value=acc, params={"train.lr": 0.02 + 0.03 * i, "blockkd.tau": 1.0 + i}, distributions=DIST,
            intermediate_values={1: acc},
            user_attrs={"flops": {"student": 12_680_000, "train_step": 3_000_000_000 + 2e8 * i},
                        "loss_terms": {"ce": [2.0], "kd": [1.5], "stone1_kd": [1.2]}}))
    return study


def _two_objective_study(url: str) -> optuna.Study:
    study = optuna.create_study(storage=url, study_name="two", directions=["maximize", "minimize"])
    study.set_metric_names(["val_acc", "train_gflops"])
    terms = {f"stone{k}_kd": [3.0 - k * 0.1, 2.0, 1.5 - k * 0.1] for k in range(1, 9)}
    terms.update(ce=[2.2, 1.8, 1.6], kd=[1.9, 1.4, 1.2], ensemble=[0.0, 0.0, 0.0])
    for i, acc in enumerate(ACCS):
        study.add_trial(optuna.trial.create_trial(
            values=[acc, 2.5 + 0.5 * i], params={"train.lr": 0.02 + 0.03 * i, "blockkd.tau": 1.0 + i},
            distributions=DIST, user_attrs={"flops": {"student": 12_680_000, "train_step": 2_500_000_000},
                                            "loss_terms": terms}))
    return study


def _labels_of(ax) -> list[str]:
    return [a.get_label() for a in [*ax.lines, *ax.collections]]


@pytest.fixture
def plots(tmp_path):
    """(figures by name, skipped lines) of both studies; every figure closed afterwards."""
    drawn = {}
    for name, make in (("one", _one_epoch_study), ("two", _two_objective_study)):
        study = make(f"sqlite:///{tmp_path}/{name}.db")
        figures, skipped = draw_plots(study, study.get_trials())
        drawn[name] = ({f: fig for f, fig in figures}, skipped)
    yield drawn
    plt.close("all")


def test_each_drawn_plot_has_data_titles_and_labelled_lines(plots):
    for name, (figures, _) in plots.items():
        assert {"history.png", "acc_vs_flops.png", "parallel.png"} <= set(figures), name
        for filename, fig in figures.items():
            fig.canvas.draw()
            assert fig.axes, filename
            ax = fig.axes[0]
            assert (ax.get_title() or fig._suptitle.get_text()).startswith(f"{name}: "), filename
            data = [len(line.get_xdata()) for line in ax.lines] + [len(c.get_offsets()) for c in ax.collections
                                                                   if isinstance(c, PathCollection)]
            data += [len(c.get_segments()) for c in ax.collections if isinstance(c, LineCollection)]
            assert sum(data) > 0, filename
            if filename in ("history.png", "loss_terms.png", "curves.png", "acc_vs_flops.png"):
                assert ax.get_xlabel() and ax.get_ylabel(), filename
                unlabelled = [label for label in _labels_of(ax) if label.startswith("_")]
                assert not unlabelled and ax.get_legend() is not None, (filename, unlabelled)


def test_percent_ticks_are_distinct(plots):
    for name in plots:
        for filename in ("history.png", "acc_vs_flops.png"):
            fig = plots[name][0][filename]
            fig.canvas.draw()
            ticks = [t.get_text() for t in fig.axes[0].get_yticklabels() if t.get_text()]
            assert len(ticks) >= 3 and len(set(ticks)) == len(ticks), (name, filename, ticks)
            assert all(t.endswith("%") for t in ticks)
            assert any("." in t for t in ticks), ticks  # a 1.4-point spread needs decimals


def test_a_one_epoch_study_draws_no_empty_plot_and_says_why(plots):
    figures, skipped = plots["one"]
    assert "curves.png" not in figures and "loss_terms.png" not in figures
    text = "\n".join(skipped)
    assert "`curves.png` not drawn: every trial reported one epoch" in text
    assert "`loss_terms.png` not drawn: trial 3 trained 1 epoch" in text
    assert "`importances.png` not drawn: 4 complete trials" in text


def test_accuracy_is_drawn_against_the_cost_that_differs_with_its_unit(plots):
    ax = plots["two"][0]["acc_vs_flops.png"].axes[0]  # the study's own objective
    assert ax.get_xlabel() == "train-step GFLOPs per image (objective train_gflops)"
    assert sorted(ax.collections[0].get_offsets()[:, 0]) == [2.5, 3.0, 3.5, 4.0]
    ax = plots["one"][0]["acc_vs_flops.png"].axes[0]  # every student alike: the train step's
    assert ax.get_xlabel().startswith("train-step GFLOPs per image (the student's FLOPs are the same")
    assert sorted(ax.collections[0].get_offsets()[:, 0]) == pytest.approx([3.0, 3.2, 3.4, 3.6])


def test_loss_terms_of_a_multi_epoch_trial_leave_out_terms_that_are_always_zero(plots):
    ax = plots["two"][0]["loss_terms.png"].axes[0]
    assert len(ax.lines) == 10 and all(len(line.get_xdata()) == 3 for line in ax.lines)
    assert "ensemble" not in _labels_of(ax) and "always 0, not drawn: ensemble" in ax.get_xlabel()


def test_colours_are_one_fixed_colormap_with_the_best_trial_darkest(plots):
    for name in plots:
        fig = plots[name][0]["parallel.png"]
        lines = [c for ax in fig.axes for c in ax.collections if isinstance(c, LineCollection)]
        assert lines and all(c.get_cmap().name == "viridis_r" for c in lines), name  # maximize: high is dark
        acc = plots[name][0]["acc_vs_flops.png"].axes[0].collections[0]
        colours, ys = acc.get_facecolors(), acc.get_offsets()[:, 1]
        darkest = min(range(len(ys)), key=lambda i: sum(colours[i][:3]))
        assert ys[darkest] == max(ys)


def test_report_files_and_summary_say_which_plots_are_missing(tmp_path):
    _one_epoch_study(f"sqlite:///{tmp_path}/one.db")
    files = write_report(f"sqlite:///{tmp_path}/one.db", "one", tmp_path / "rep")
    assert {f.name for f in files} == {"history.png", "acc_vs_flops.png", "parallel.png", "summary.md"}
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert "- `curves.png` not drawn: every trial reported one epoch" in summary
    assert "- [history](history.png)" in summary
