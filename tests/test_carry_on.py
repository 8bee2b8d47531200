"""No silent failure (issue 23, item 5): a step a worker survives is logged with its trial's
number, what was tried and what went wrong."""

from __future__ import annotations

import time

import optuna
import torch
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from workerkit import quick_spec

from bkdsearch.search import open_study
from bkdsearch.search.carry_on import carry_on, failure_line
from bkdsearch.search.heartbeat import HeartbeatThread
from bkdsearch.search.optuna_seam import storage_of, trial_id_of
from bkdsearch.search.worker import Worker
from bkdsearch.spec import load_spec


def test_a_trial_ended_by_another_worker_that_then_fails_logs_the_reason_it_could_not_record(tmp_path):
    """A trial failed as stale by another worker (its heartbeat stopped too long) whose own
    objective then raises: recording its ``fail_reason`` fails (the trial is finished), which
    is logged with the trial's number instead of passing in silence; the worker goes on."""
    spec = load_spec(quick_spec(tmp_path / "s.yaml"))
    study = open_study(spec, f"sqlite:///{tmp_path}/s.db", "carry")
    logs: list[str] = []
    worker = Worker(spec, study, n_trials=1, device=torch.device("cpu"), studies_dir=tmp_path / "studies",
                    progress=False, log=logs.append)
    trial = study.ask()

    def objective(trial: optuna.Trial) -> list[float]:
        storage_of(study).set_trial_state_values(trial_id_of(trial), TrialState.FAIL)  # as another worker would
        raise RuntimeError("diverged")

    worker.objective = objective  # type: ignore[assignment]
    worker.run_trial(trial)
    lines = [m for m in logs if m.startswith(f"trial {trial.number}: recording its fail_reason failed")]
    assert len(lines) == 1, logs
    assert "UpdateFinishedTrialError" in lines[0] and lines[0].endswith("carrying on")
    assert any("had already been ended by another worker" in m for m in logs), logs
    assert study.trials[0].state == TrialState.FAIL and "fail_reason" not in study.trials[0].user_attrs


def test_a_heartbeat_that_fails_is_logged_once_and_its_recovery_too(tmp_path):
    """The database goes away under a running trial (its file moved away): the heartbeat
    thread says so once, with the trial number, keeps beating, and says when beats land again."""
    db = tmp_path / "h.db"
    storage = RDBStorage(f"sqlite:///{db}", heartbeat_interval=1)
    study = optuna.create_study(storage=storage, study_name="beats")
    trial = study.ask()
    logs: list[str] = []
    with HeartbeatThread(storage, trial_id_of(trial), 0.2, number=trial.number, log=logs.append):
        db.rename(tmp_path / "away.db")
        storage.engine.dispose()  # the next connection opens an empty database: no tables
        _wait_for(lambda: logs, 10)
        storage.engine.dispose()
        (tmp_path / "h.db").unlink(missing_ok=True)
        (tmp_path / "away.db").rename(db)
        _wait_for(lambda: len(logs) >= 2, 10)
    assert logs[0].startswith(f"trial {trial.number}: a heartbeat (tried again every 0.2 s) failed (")
    assert logs[0].endswith("carrying on")
    assert logs[1] == f"trial {trial.number}: heartbeats recorded again"
    assert len(logs) == 2, logs


def test_carry_on_logs_and_swallows_exceptions_only():
    logs: list[str] = []
    with carry_on("writing x", 3, logs.append):
        raise ValueError("postgresql://u:secret@h/db refused\nmore")
    assert logs == ["trial 3: writing x failed (ValueError: postgresql://u:***@h/db refused); carrying on"]
    assert failure_line("y", KeyError(), None) == "y failed (KeyError); carrying on"
    try:
        with carry_on("z", 1, logs.append):
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("KeyboardInterrupt must pass through")
    assert len(logs) == 1


def _wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)

