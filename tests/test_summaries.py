"""Summaries count a trial that was interrupted (Ctrl-C) and queued again apart from the
trials that failed (issue 26, item 6)."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from bkdsearch.search import WorkerReport
from bkdsearch.search.study import was_interrupted
from bkdsearch.summary import next_steps, run_summary


def test_an_interrupted_and_requeued_trial_is_not_counted_as_failed(monkeypatch):
    monkeypatch.setattr("sys.argv", ["/nowhere/bin/bkdsearch"])
    study = optuna.create_study(study_name="s", direction="maximize")
    dist = {"train.lr": optuna.distributions.FloatDistribution(0.01, 0.2)}
    study.add_trial(optuna.trial.create_trial(value=50.0, params={"train.lr": 0.05}, distributions=dist))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, params={"train.lr": 0.1}, distributions=dist,
                                              user_attrs={"fail_reason": "interrupted (Ctrl-C); queued again, the "
                                                                         "next run resumes it after epoch 1"}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, params={"train.lr": 0.2}, distributions=dist,
                                              user_attrs={"fail_reason": "training loss is nan"}))
    study.enqueue_trial({"train.lr": 0.1})
    lines = run_summary(study, WorkerReport(complete=1), cap=4, spec_path="s.yaml")
    assert lines[:2] == ["summary of study s: 1 complete, 0 pruned, 1 failed,",
                         "1 interrupted (queued again), 1 waiting"]
    assert [was_interrupted(t) for t in study.trials] == [False, True, False, False]
    assert lines[-5:] == next_steps("s", spec_path="s.yaml", storage=None, study_name=None)
    assert lines[-1] == "  /nowhere/bin/bkdsearch export s.yaml --trial best -o train_best.py"


def test_the_study_line_after_each_trial_counts_interrupted_trials_apart():
    from bkdsearch.search.worker import study_line

    study = optuna.create_study(study_name="s", direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=50.0, user_attrs={"wall_time_s": 10.0}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL,
                                              user_attrs={"fail_reason": "interrupted (Ctrl-C); queued again"}))
    line = study_line(study, 2)
    assert line.startswith("study s: 1/2 done (0 pruned), 0 running, 0 failed, 1 interrupted; best 50.00% (#0)")


def test_status_and_report_count_interrupted_trials_apart(tmp_path, monkeypatch):
    """`status` (table and --json) and report's summary.md: an interrupted, requeued trial is
    neither a failure nor listed under the failed trials; summary.md's export command starts
    the tool as it was started."""
    from bkdsearch.report import study_status, write_report

    monkeypatch.setattr("sys.argv", ["/nowhere/bin/bkdsearch"])
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s", direction="maximize", storage=url)
    study.add_trial(optuna.trial.create_trial(value=50.0))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL,
                                              user_attrs={"fail_reason": "interrupted (Ctrl-C); queued again"}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "loss is nan"}))
    (row,) = study_status(url, "s")
    assert (row["counts"]["fail"], row["counts"]["interrupted"]) == (1, 1)
    assert [f["number"] for f in row["failed"]] == [2]
    files = write_report(url, "s", tmp_path / "report")
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert tmp_path / "report" / "summary.md" in files
    assert "1 complete, 0 pruned, 1 failed, 1 interrupted (queued again) trials." in summary
    assert "    /nowhere/bin/bkdsearch export --storage" in summary
