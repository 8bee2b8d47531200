"""Summaries count a trial that was interrupted (Ctrl-C) and queued again apart from the
trials that failed (issue 26, item 6)."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from bkdsearch.search import WorkerReport
from bkdsearch.summary import next_steps, run_summary, was_interrupted


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
