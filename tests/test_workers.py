"""Several `bkdsearch run` workers on one study: PostgreSQL, MariaDB and SQLite; a worker
SIGKILLed mid-trial (heartbeats, retry resuming from the saved epoch); Ctrl-C."""

import json
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from optuna.trial import TrialState
from workerkit import (
    FINISHED,
    by_state,
    finish,
    quick_spec,
    run_cmd,
    start,
    study_name,
    trials,
    wait_for_checkpoint,
)

pytestmark = pytest.mark.slow

# Dead workers are noticed within seconds instead of half a minute.
FAST_HEARTBEAT = {"BKDSEARCH_HEARTBEAT_S": "1", "BKDSEARCH_GRACE_S": "3"}


def _check_cap(storage, study, n, outputs):
    ts = trials(storage, study)
    numbers = [t.number for t in ts]
    assert len(numbers) == len(set(numbers)), f"duplicate trial numbers: {sorted(numbers)}"
    states = by_state(ts)
    finished = [t for t in ts if t.state in FINISHED]
    assert len(finished) == n, states
    assert not states.get(TrialState.RUNNING) and not states.get(TrialState.WAITING), states
    for t in ts:  # only races on the cap may fail here, and they say so
        if t.state == TrialState.FAIL:
            assert t.user_attrs["fail_reason"].startswith("surplus"), t.user_attrs
    # Each worker reports what it did; together they did exactly the n finished trials, and
    # they did them side by side (more than one worker took part).
    done = []
    for out in outputs:
        line = [x for x in out.splitlines() if x.startswith("this worker:")][-1]
        parts = line.removeprefix("this worker:").split(",")
        done.append(int(parts[0].split()[0]) + int(parts[1].split()[0]))
    assert sum(done) == n, outputs
    assert sum(1 for d in done if d) >= 2, outputs
    # Every finished trial was announced by the worker that trained it, with how it ended.
    logged = "\n".join(outputs)
    for t in finished:
        assert f"trial {t.number} started on cpu: " in logged, logged
        if t.state == TrialState.COMPLETE:
            assert f"trial {t.number} complete: val_acc {t.values[0]:.2f}%" in logged, logged
        else:
            assert f"trial {t.number} pruned at epoch" in logged, logged
    return ts


@pytest.mark.db
@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_three_workers_share_one_study_on_a_server(tmp_path, db_url, kind):
    """Three processes (as if on three machines: own folders) on a fresh database, started
    together (they race to create the tables and the study), cap 4."""
    storage, name, n = db_url(kind), study_name(), 5
    spec = quick_spec(tmp_path / "spec.yaml", epochs=1)
    procs = [start(run_cmd(spec, storage, name, n), tmp_path / f"machine{i}") for i in range(3)]
    results = [finish(p) for p in procs]
    for rc, out, err in results:
        assert rc == 0, (out, err)
        assert "Traceback" not in err
    ts = _check_cap(storage, name, n, [out for _, out, _ in results])
    assert Counter(t.state for t in ts)[TrialState.COMPLETE] == n
    assert all(t.user_attrs["run_config"]["train"]["lr"] == t.params["train.lr"] for t in ts
               if t.state == TrialState.COMPLETE)


def test_local_workers_on_sqlite_without_lock_errors(tmp_path):
    """Two processes on one SQLite file, one of them training two trials at once (threads)."""
    storage, name, n = f"sqlite:///{tmp_path}/studies/shared.db", study_name(), 5
    spec = quick_spec(tmp_path / "spec.yaml", epochs=1)
    procs = [start(run_cmd(spec, storage, name, n), tmp_path),
             start(run_cmd(spec, storage, name, n, "--trials-per-device", "2"), tmp_path)]
    results = [finish(p) for p in procs]
    for rc, out, err in results:
        assert rc == 0, (out, err)
        assert "locked" not in out + err and "Traceback" not in err
    _check_cap(storage, name, n, [out for _, out, _ in results])
    # SQLite is in WAL mode, so readers never block the writer.
    import sqlite3

    with sqlite3.connect(tmp_path / "studies" / "shared.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.db)])
def test_killed_worker_trial_is_retried_from_its_checkpoint(tmp_path, db_url, kind):
    """Worker A is SIGKILLed after its trial saved epoch k >= 1. Worker B (another folder, the
    same shared artifact folder) fails the stale trial, retries it with the same parameters
    from epoch k + 1, and the study reaches its cap."""
    storage = f"sqlite:///{tmp_path}/study.db" if kind == "sqlite" else db_url(kind)
    name, n, epochs = study_name(), 2, 3
    spec = quick_spec(tmp_path / "spec.yaml", epochs=epochs, train_size=640)
    env = {**FAST_HEARTBEAT, "BKDSEARCH_ARTIFACT_DIR": str(tmp_path / "shared-artifacts")}
    a = start(run_cmd(spec, storage, name, n), tmp_path / "machineA", **env)
    victim = wait_for_checkpoint(a, storage, name)
    a.send_signal(signal.SIGKILL)
    a.wait(timeout=60)
    victim = next(t for t in trials(storage, name) if t.number == victim.number)
    saved_epoch = victim.user_attrs["checkpoint"]["epoch"]
    assert victim.state == TrialState.RUNNING and 1 <= saved_epoch < epochs

    rc, out, err = finish(start(run_cmd(spec, storage, name, n), tmp_path / "machineB", **env))
    assert rc == 0, (out, err)
    ts = {t.number: t for t in trials(storage, name)}
    dead = ts[victim.number]
    assert dead.state == TrialState.FAIL and "no heartbeat" in dead.user_attrs["fail_reason"]
    retries = [t for t in ts.values() if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1, ts
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert retry.user_attrs["resumed_from"] == {"trial": victim.number, "epoch": saved_epoch}
    assert "fail_reason" not in retry.user_attrs
    # It trained only the remaining epochs (its own metrics file starts after the checkpoint)...
    rows = [json.loads(line) for line in
            (tmp_path / "machineB" / "studies" / name / f"trial-{retry.number}" / "metrics.jsonl")
            .read_text().splitlines()]
    assert [r["epoch"] for r in rows if "epoch" in r] == list(range(saved_epoch + 1, epochs + 1))
    # ...and its learning curve is whole: the dead trial's epochs, then its own.
    assert sorted(retry.intermediate_values) == list(range(1, epochs + 1))
    assert f"resuming after epoch {saved_epoch}" in out
    assert len([t for t in ts.values() if t.state in FINISHED]) == n
    assert not [t for t in ts.values() if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # Only the newest checkpoint of each trial is kept.
    assert len(list((tmp_path / "shared-artifacts" / name).iterdir())) <= len(ts)


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted"),
                                              (signal.SIGTERM, 143, "terminated (SIGTERM)")],
                         ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_fails_the_running_trial_and_the_next_run_resumes_it(tmp_path, sig, code, said):
    """Ctrl-C, and SIGTERM (what batch systems send before SIGKILL) alike: the running trial
    is checkpointed, ended and queued again; nothing stays RUNNING."""
    storage, name, epochs = f"sqlite:///{tmp_path}/study.db", study_name(), 3
    spec = quick_spec(tmp_path / "spec.yaml", epochs=epochs, train_size=640)
    proc = start(run_cmd(spec, storage, name, 1), tmp_path)
    running = wait_for_checkpoint(proc, storage, name)
    proc.send_signal(sig)
    rc, out, err = finish(proc, timeout=60)
    assert rc == code, (out, err)
    assert "Traceback" not in err and said in err
    ts = trials(storage, name)
    assert not [t for t in ts if t.state == TrialState.RUNNING], by_state(ts)
    stopped = next(t for t in ts if t.number == running.number)
    assert stopped.state == TrialState.FAIL
    assert stopped.user_attrs["fail_reason"].startswith("interrupted")
    saved_epoch = stopped.user_attrs["checkpoint"]["epoch"]
    assert saved_epoch < epochs
    queued = [t for t in ts if t.state == TrialState.WAITING]
    assert len(queued) == 1 and queued[0].params == stopped.params
    assert queued[0].system_attrs["failed_trial"] == stopped.number

    rc, out, err = finish(start(run_cmd(spec, storage, name, 1), tmp_path))
    assert rc == 0, (out, err)
    done = [t for t in trials(storage, name) if t.state == TrialState.COMPLETE]
    assert len(done) == 1 and done[0].user_attrs["resumed_from"] == {"trial": stopped.number,
                                                                      "epoch": saved_epoch}
    rows = (Path(tmp_path) / "studies" / name / f"trial-{done[0].number}" / "metrics.jsonl").read_text()
    assert json.loads(rows.splitlines()[0])["epoch"] == saved_epoch + 1



def _epoch_in(reason: str) -> int:
    return int(reason.split("after epoch ")[1].split()[0].rstrip(";,."))


def test_double_interrupts_never_lose_the_checkpoint_a_retry_needs(tmp_path, db_url):
    """Issue 25: a second Ctrl-C while a training thread was saving its next epoch rewrote the
    checkpoint attr after the retry had been queued and deleted the file the retry pointed
    to. Soak of double Ctrl-C / SIGTERM rounds with two trials per worker on PostgreSQL:
    every queued retry names the epoch its fail reason says, and that checkpoint exists."""
    storage, name = db_url("postgresql"), study_name()
    spec = quick_spec(tmp_path / "spec.yaml", epochs=8, train_size=192, n_trials=8)
    artifacts = tmp_path / "studies" / name / "artifacts"
    rounds = [(signal.SIGINT, signal.SIGINT, 130), (signal.SIGTERM, signal.SIGINT, 143),
              (signal.SIGINT, signal.SIGTERM, 130), (signal.SIGTERM, signal.SIGTERM, 143)]
    for first, second, code in rounds:
        proc = start(run_cmd(spec, storage, name, 8, "--trials-per-device", "2"), tmp_path)
        wait_for_checkpoint(proc, storage, name)
        proc.send_signal(first)
        time.sleep(0.3)  # inside the graceful stop: the threads are still between steps
        proc.send_signal(second)
        rc, out, err = finish(proc, timeout=90)
        assert rc == code, (first, second, out, err)
        ts = trials(storage, name)
        assert not [t for t in ts if t.state == TrialState.RUNNING], by_state(ts)
        retries = {t.system_attrs["retry_of"]: t for t in ts
                   if t.state == TrialState.WAITING and "retry_of" in t.system_attrs}
        for t in ts:
            reason = t.user_attrs.get("fail_reason", "")
            if t.state != TrialState.FAIL or not reason.startswith("interrupted"):
                continue
            retry = retries.get(t.number)
            if retry is None:
                continue  # already retried in an earlier round
            epoch = _epoch_in(reason)
            saved = retry.user_attrs.get("checkpoint")
            assert (saved or {}).get("epoch", 0) == epoch, (t.number, reason, saved)
            if saved:
                assert (artifacts / saved["artifact_id"]).is_file(), f"trial {t.number}'s checkpoint was deleted"
    rc, out, err = finish(start(run_cmd(spec, storage, name, 8, "--trials-per-device", "2"), tmp_path))
    assert rc == 0, (out, err)
    failed = {t.number: t for t in trials(storage, name) if t.state == TrialState.FAIL}
    for t in trials(storage, name):
        source = t.user_attrs.get("resumed_from")
        if t.state == TrialState.COMPLETE and source:
            assert source["epoch"] == _epoch_in(failed[source["trial"]].user_attrs["fail_reason"]), t.number
