"""Faults at awkward moments, on real SQLite storages and real processes: a worker killed
between asking for a trial and its first heartbeat, or between queueing a dead trial's retry
and failing it; several workers failing the same stale trials at once; chains that reach the
retry limit; retries that start over; heartbeat settings out of range; a full disk under the
run folder or the artifact store; how many checkpoints finished trials keep."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState
from workerkit import (
    ENV,
    FINISHED,
    by_state,
    die_after_ask,
    finish,
    quick_spec,
    run_cmd,
    small_disk,
    start,
    study_name,
    trials,
)

from bkdsearch.core.engine.trainer import Trainer
from bkdsearch.core.recipe.errors import DiskFull
from bkdsearch.search import (
    StorageError,
    TrialSuggest,
    Worker,
    fail_stale_trials,
    heartbeat_settings,
    make_storage,
    open_study,
)
from bkdsearch.search.heartbeat import RETRY_OF, queue_again, retries_of
from bkdsearch.search.objective import prune_checkpoints
from bkdsearch.spec import Defaults, Spec, resolve

CPU = torch.device("cpu")
FAST = {"BKDSEARCH_HEARTBEAT_S": "1", "BKDSEARCH_GRACE_S": "3"}


def _spec(tmp_path, **kw) -> tuple[str, Spec]:
    path = quick_spec(tmp_path / "spec.yaml", **kw)
    return path, Spec.model_validate(yaml.safe_load(open(path)))


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if '"epoch"' in line]


def _fast(monkeypatch, grace: int = 2) -> None:
    monkeypatch.setenv("BKDSEARCH_HEARTBEAT_S", "1")
    monkeypatch.setenv("BKDSEARCH_GRACE_S", str(grace))


# --------------------------------------------------------------------------- 1. no heartbeat yet


@pytest.mark.slow
def test_trials_of_a_worker_killed_before_their_first_heartbeat_are_retried(tmp_path):
    """A worker is SIGKILLed right after asking for two trials (an enqueued one and a fresh
    one), before either recorded a heartbeat. Optuna's stale check never sees such trials, so
    the next worker would wait for them forever (they fill the cap of 2); it must fail them
    once they are older than the grace period, queue them again, and finish the study."""
    storage, name, n = f"sqlite:///{tmp_path}/study.db", study_name(), 2
    spec, _ = _spec(tmp_path)
    die_after_ask(spec, storage, name, asks=2, enqueue={"train.lr": 0.05, "train.momentum": 0.9})
    dead = trials(storage, name)
    assert [t.state for t in dead] == [TrialState.RUNNING] * 2

    rc, out, err = finish(start(run_cmd(spec, storage, name, n), tmp_path, **FAST), timeout=240)
    assert rc == 0, (out, err)
    ts = {t.number: t for t in trials(storage, name)}
    assert len([t for t in ts.values() if t.state in FINISHED]) == n, by_state(ts.values())
    assert not [t for t in ts.values() if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for d in dead:
        assert ts[d.number].state == TrialState.FAIL
        assert "no heartbeat since it started over 3 s ago" in ts[d.number].user_attrs["fail_reason"]
        retry, = retries_of(optuna.load_study(study_name=name, storage=storage), d.number)
        assert retry.state == TrialState.COMPLETE and retry.system_attrs["failed_trial"] == d.number
    enqueued = ts[dead[0].number].system_attrs["fixed_params"]
    assert any(t.params == enqueued for t in ts.values() if t.state == TrialState.COMPLETE)


def test_a_live_trial_without_a_heartbeat_yet_is_not_failed(tmp_path, monkeypatch):
    """A running trial with no heartbeat row that started less than the grace period ago is
    left alone; the check fails it only once it is both older than the grace period and was
    seen without a heartbeat for one interval."""
    _fast(monkeypatch, grace=2)
    _, spec = _spec(tmp_path)
    study = open_study(spec, f"sqlite:///{tmp_path}/s.db", "young")
    study.ask()
    assert fail_stale_trials(study) == []
    time.sleep(2.2)
    assert fail_stale_trials(study) == [0]
    assert study.get_trials()[0].state == TrialState.FAIL


# --------------------------------------------------------------------------- 2. queue, then fail


def test_a_worker_killed_between_queueing_a_retry_and_failing_the_trial(tmp_path, monkeypatch):
    """Worker A found trial 0 dead, queued its retry and was SIGKILLed before failing it:
    trial 0 is RUNNING, its heartbeat old, and its retry exists. The next check fails it and
    queues nothing more; the retry keeps the parameters."""
    _fast(monkeypatch, grace=2)
    storage, name = f"sqlite:///{tmp_path}/study.db", study_name()
    spec, _ = _spec(tmp_path)
    die_after_ask(spec, storage, name, heartbeat=True,
                  then="trial.suggest_float('train.lr', 0.02, 0.2, log=True)\n"
                       "from bkdsearch.search.heartbeat import queue_again\n"
                       "queue_again(study, study._storage.get_trial(trial._trial_id), lost=True)")
    first = trials(storage, name)
    assert [t.state for t in first] == [TrialState.RUNNING, TrialState.WAITING]
    assert first[1].system_attrs[RETRY_OF] == 0
    time.sleep(3.2)  # SQLite heartbeats have whole seconds
    study = optuna.load_study(study_name=name, storage=make_storage(storage))
    assert fail_stale_trials(study) == [0]
    ts = study.get_trials()
    assert [t.state for t in ts] == [TrialState.FAIL, TrialState.WAITING]
    assert "queued again with the same parameters" in ts[0].user_attrs["fail_reason"]
    assert ts[1].params == ts[0].params and ts[1].system_attrs["retry_history"] == [0]


_CHECKER = """
import pathlib, sys, time
from bkdsearch.search import fail_stale_trials, make_storage
import optuna
study = optuna.load_study(study_name=sys.argv[2], storage=make_storage(sys.argv[1]))
study.get_trials()
go = pathlib.Path(sys.argv[3])
(go.parent / f"ready-{sys.argv[4]}").touch()
while not go.exists():
    time.sleep(0.005)
print(fail_stale_trials(study))
"""


@pytest.mark.slow
def test_several_workers_failing_the_same_stale_trials_at_once_queue_each_once(tmp_path, monkeypatch):
    """Four processes run the stale check at the same instant on six dead trials: every dead
    trial ends FAIL with exactly one queued retry (a twin queued at the same moment is
    withdrawn as surplus), and each is reported failed by one process only."""
    url, name, dead = f"sqlite:///{tmp_path}/s.db", "race", 6
    env = {**ENV, "BKDSEARCH_HEARTBEAT_S": "1", "BKDSEARCH_GRACE_S": "2"}
    _fast(monkeypatch, grace=2)
    study = optuna.create_study(storage=make_storage(url), study_name=name)
    for _ in range(dead):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        study._storage.record_heartbeat(trial._trial_id)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _CHECKER, url, name, str(go), str(i)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(4)]
    deadline = time.monotonic() + 180
    while len(list(tmp_path.glob("ready-*"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(3.2)  # past the grace period (SQLite heartbeats have whole seconds)
    go.touch()  # all four at once
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    reported = [n for out, _ in outs for n in json.loads(out.strip().splitlines()[-1])]
    assert sorted(reported) == list(range(dead)), outs
    ts = optuna.load_study(study_name=name, storage=url).get_trials()
    for number in range(dead):
        assert ts[number].state == TrialState.FAIL
        twins = [t for t in ts if t.system_attrs.get(RETRY_OF) == number]
        waiting = [t for t in twins if t.state == TrialState.WAITING]
        assert len(waiting) == 1 and waiting[0].params == ts[number].params, [(t.number, t.state) for t in twins]
        assert all(t.user_attrs["fail_reason"].startswith("surplus") for t in twins if t not in waiting)


def test_a_chain_that_keeps_losing_its_worker_gives_up_at_the_limit(tmp_path, monkeypatch):
    _fast(monkeypatch, grace=2)
    monkeypatch.setenv("BKDSEARCH_MAX_RETRY", "1")
    _, spec = _spec(tmp_path)
    study = open_study(spec, f"sqlite:///{tmp_path}/s.db", "limit")
    for expected in (0, 1):
        trial = study.ask()  # trial 0, then its retry, trial 1
        assert trial.number == expected
        study._storage.record_heartbeat(trial._trial_id)
        time.sleep(3.2)  # SQLite heartbeats have whole seconds
        assert fail_stale_trials(study) == [expected]
    first, second = study.get_trials()
    assert first.user_attrs["fail_reason"].endswith("queued again with the same parameters")
    assert second.state == TrialState.FAIL and second.system_attrs[RETRY_OF] == 0
    assert second.user_attrs["fail_reason"].endswith("retried 1 times; giving up")
    monkeypatch.setenv("BKDSEARCH_MAX_RETRY", "0")
    trial = study.ask()
    study._storage.record_heartbeat(trial._trial_id)
    time.sleep(3.2)  # SQLite heartbeats have whole seconds
    assert fail_stale_trials(study) == [2]
    assert study.get_trials()[2].user_attrs["fail_reason"].endswith("retried 0 times; giving up")
    assert len(study.get_trials()) == 3


def test_interrupt_and_surplus_queue_first_and_never_twice(tmp_path):
    """Ctrl-C and a surplus drop queue the trial before failing it, keyed to it: when a
    worker died in between before (its queued copy exists), they queue no second one."""
    _, spec = _spec(tmp_path)
    study = open_study(spec, f"sqlite:///{tmp_path}/s.db", "keyed")
    worker = Worker(spec, study, n_trials=1, device=CPU, studies_dir=tmp_path / "studies", progress=False,
                    log=lambda m: None)
    trial = study.ask()
    trial.suggest_float("train.lr", 0.02, 0.2, log=True)
    queue_again(study, study._storage.get_trial(trial._trial_id))  # what the crashed attempt left
    worker.stop.set()
    worker.run_trial(trial)  # interrupted at once
    assert [t.number for t in retries_of(study, trial.number)] == [1]
    assert study.get_trials()[0].user_attrs["fail_reason"].startswith("interrupted")

    popped = study.ask()  # the retry, dropped as surplus twice (a crash the first time)
    assert popped.number == 1
    queue_again(study, study._storage.get_trial(popped._trial_id), retry=False)
    worker._drop_surplus(popped)
    ts = study.get_trials()
    assert [t.state for t in ts] == [TrialState.FAIL, TrialState.FAIL, TrialState.WAITING]
    assert ts[2].system_attrs[RETRY_OF] == 1 and ts[2].params == ts[1].params == {"train.lr": ts[0].params["train.lr"]}
    assert ts[2].system_attrs["retry_history"] == [0]  # a drop is no retry


def test_a_retry_that_starts_over_reports_its_own_learning_curve(tmp_path, monkeypatch):
    """The dead trial reported epochs 1-2 and saved a checkpoint that is gone: its retry
    starts from epoch 0 and its intermediate values are its own metrics, not the dead
    trial's (which Optuna would keep: 'step 1 is already reported')."""
    _fast(monkeypatch, grace=2)
    _, spec = _spec(tmp_path, epochs=2)
    study = open_study(spec, f"sqlite:///{tmp_path}/s.db", "curve")
    dead = study.ask()
    resolve(spec, TrialSuggest(dead))
    dead.report(11.0, 1)
    dead.report(22.0, 2)
    dead.set_user_attr("checkpoint", {"artifact_id": "gone", "epoch": 2})
    study._storage.record_heartbeat(dead._trial_id)
    time.sleep(3.2)  # SQLite heartbeats have whole seconds
    worker = Worker(spec, study, n_trials=1, device=CPU, studies_dir=tmp_path / "studies", progress=False,
                    log=lambda m: None)
    worker.run()
    retry = study.get_trials()[1]
    assert retry.state == TrialState.COMPLETE and "not available" in retry.user_attrs["resume_note"]
    rows = _rows(tmp_path / "studies" / "curve" / "trial-1")
    assert retry.intermediate_values == {r["epoch"]: r["val_acc"] for r in rows}
    assert sorted(retry.intermediate_values) == [1, 2]


def test_a_retry_that_resumes_copies_the_curve_of_its_checkpoint(tmp_path, monkeypatch):
    """The dead trial saved epoch 1 (and reported a value the checkpoint does not hold): its
    retry reports epoch 1 from the checkpoint's history and epoch 2 from its own training."""
    _fast(monkeypatch, grace=2)
    _, spec = _spec(tmp_path, epochs=2)
    study = open_study(spec, f"sqlite:///{tmp_path}/s.db", "resume")
    worker = Worker(spec, study, n_trials=1, device=CPU, studies_dir=tmp_path / "studies", progress=False,
                    log=lambda m: None)
    dead = study.ask()
    cfg = resolve(spec, TrialSuggest(dead))
    saved = Trainer(cfg, tmp_path / "dead-run", device=CPU).fit(stop_after=1)
    with open(tmp_path / "dead-run" / "last.pt", "rb") as f:
        worker.objective.artifacts.write("epoch-1", f)
    dead.set_user_attr("checkpoint", {"artifact_id": "epoch-1", "epoch": 1})
    dead.report(99.0, 1)
    study._storage.record_heartbeat(dead._trial_id)
    time.sleep(3.2)  # SQLite heartbeats have whole seconds
    worker.run()
    retry = study.get_trials()[1]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from"] == {"trial": 0, "epoch": 1}
    own = _rows(tmp_path / "studies" / "resume" / "trial-1")
    assert [r["epoch"] for r in own] == [2]
    assert retry.intermediate_values == {1: saved.history[0]["val_acc"], 2: own[0]["val_acc"]}


# --------------------------------------------------------------------------- 3. settings


@pytest.mark.slow
@pytest.mark.parametrize("name, value, words", [
    ("BKDSEARCH_HEARTBEAT_S", "1e12", "from 1 to 3600"),
    ("BKDSEARCH_HEARTBEAT_S", "inf", "from 1 to 3600"),
    ("BKDSEARCH_GRACE_S", "nan", "from 11 to 86400"),
    ("BKDSEARCH_MAX_RETRY", "101", "from 0 to 100"),
    ("BKDSEARCH_KEEP_CHECKPOINTS", "-1", "from 0 to 10000"),
])
def test_settings_out_of_range_exit_2_through_the_cli(tmp_path, name, value, words):
    spec, _ = _spec(tmp_path)
    proc = subprocess.run(run_cmd(spec, f"sqlite:///{tmp_path}/s.db", "bad", 1), cwd=tmp_path,
                          env={**ENV, name: value}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Exception" not in proc.stderr
    assert f"{name}={value!r}" in proc.stderr and words in proc.stderr, proc.stderr


@pytest.mark.parametrize("beat, grace", [
    ("0", None), ("3601", None), ("-inf", None), ("nan", None), ("2.5", None),
    ("10", "10"), ("10", "86401"), ("10", "1e12"), ("10", "inf"), ("5", "-3"),
])
def test_heartbeat_settings_are_bounded(monkeypatch, beat, grace):
    monkeypatch.setenv("BKDSEARCH_HEARTBEAT_S", beat)
    if grace is None:
        monkeypatch.delenv("BKDSEARCH_GRACE_S", raising=False)
    else:
        monkeypatch.setenv("BKDSEARCH_GRACE_S", grace)
    with pytest.raises(StorageError, match="expected a whole number of seconds from"):
        heartbeat_settings()


def test_heartbeat_settings_at_their_bounds(monkeypatch):
    monkeypatch.setenv("BKDSEARCH_HEARTBEAT_S", "3600")
    monkeypatch.delenv("BKDSEARCH_GRACE_S", raising=False)
    assert heartbeat_settings() == (3600, 10800)
    monkeypatch.setenv("BKDSEARCH_HEARTBEAT_S", "1")
    monkeypatch.setenv("BKDSEARCH_GRACE_S", "86400")
    assert heartbeat_settings() == (1, 86400)
    for bad in ("-1", "1.5", "lots"):
        monkeypatch.setenv("BKDSEARCH_MAX_RETRY", bad)
        with pytest.raises(StorageError, match="BKDSEARCH_MAX_RETRY"):
            heartbeat_settings()


# --------------------------------------------------------------------------- 4. disk full


def _no_tmp(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith((".tmp", ".download"))]


_FULL = """
import json, sys, pathlib, torch
from bkdsearch.errors import TrialsKeepFailing
from bkdsearch.search import Worker, open_study
from bkdsearch.spec import load_spec
spec = load_spec(sys.argv[1])
# In memory: where only the size of files can be capped, the cap would hold for the database too.
study = open_study(spec, "sqlite:///:memory:", "full")
worker = Worker(spec, study, n_trials=2, device=torch.device("cpu"), studies_dir=pathlib.Path("studies"),
                progress=False, log=print)
try:
    worker.run()
except TrialsKeepFailing as exc:
    print("stopped:", exc)
print(json.dumps([t.user_attrs.get("fail_reason") for t in study.get_trials()]))
"""


@pytest.mark.slow
def test_a_full_disk_under_the_run_folder_fails_trials_with_a_clear_reason(tmp_path):
    """The run folder has 256 KiB of room, less than one epoch checkpoint (~0.65 MB): each
    trial fails with ``no space left on <its folder> (needed ~0.6 MB)``, leaves no
    ``last.pt.tmp``, and five in a row stop the worker."""
    spec, _ = _spec(tmp_path)
    with small_disk(tmp_path / "disk", 256) as (disk, limit):
        proc = subprocess.run([sys.executable, "-c", _FULL, spec], cwd=disk, env=ENV, capture_output=True,
                              text=True, timeout=240, preexec_fn=limit)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (proc.stdout, proc.stderr)
        assert "stopped: 5 trials in a row failed" in proc.stdout, proc.stdout
        reasons = json.loads(proc.stdout.strip().splitlines()[-1])
        assert len(reasons) == 5, reasons
        for n, reason in enumerate(reasons):
            folder = disk / "studies" / "full" / f"trial-{n}"
            assert re.fullmatch(rf"no space left on {re.escape(str(folder))} \(needed ~0\.[5-7] MB\); .*",
                                reason), reason
        assert _no_tmp(disk) == []


_ARTIFACT = """
import sys, os, pathlib, torch
from bkdsearch.search import Worker, open_study
from bkdsearch.spec import load_spec
from bkdsearch.core.recipe.errors import DiskFull
spec = load_spec(sys.argv[1])
study = open_study(spec, "sqlite:///:memory:", "art")
worker = Worker(spec, study, n_trials=1, device=torch.device("cpu"), studies_dir=pathlib.Path("studies"),
                artifact_dir=pathlib.Path(sys.argv[2]), progress=False)
run = pathlib.Path("run"); run.mkdir()
(run / "last.pt").write_bytes(os.urandom(600_000))
if sys.argv[3] == "limit":
    import resource, signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
try:
    worker.objective._save_artifact(study.ask(), run, 1, None)
except DiskFull as exc:
    print("DiskFull:", exc)
"""


def test_a_full_artifact_store_fails_with_a_clear_reason_and_keeps_no_partial_artifact(tmp_path):
    spec, _ = _spec(tmp_path)
    with small_disk(tmp_path / "disk", 256) as (disk, limit):
        proc = subprocess.run([sys.executable, "-c", _ARTIFACT, spec, str(disk / "art"),
                               "limit" if limit else "tmpfs"], cwd=tmp_path, env=ENV, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        if limit is None:  # a real full disk
            assert f"DiskFull: no space left on {disk / 'art'} (needed ~0.6 MB)" in proc.stdout, proc.stdout
        else:  # a file size cap: the OS error is named
            assert "DiskFull: cannot write" in proc.stdout and "File too large [EFBIG]" in proc.stdout, proc.stdout
        assert list((disk / "art").iterdir()) == []


def test_a_full_disk_when_the_student_is_written_leaves_the_checkpoint_alone(tmp_path):
    """Room for the epoch checkpoint (~0.65 MB) but not for it and the student's weights
    (~0.33 MB) together: fit raises DiskFull naming the folder, no ``student.pt`` or ``.tmp``
    is left, ``last.pt`` is whole (the run resumes once there is room)."""
    _, spec = _spec(tmp_path)
    cfg = resolve(spec, Defaults())
    with small_disk(tmp_path / "disk", 800) as (disk, limit):
        if limit is not None:
            pytest.skip("needs a tmpfs (mount refused): a file size cap would stop the checkpoint first")
        with pytest.raises(DiskFull, match=rf"no space left on {re.escape(str(disk / 'run'))} \(needed ~0\.3 MB\)"):
            Trainer(cfg, disk / "run", device=CPU).fit()
        assert sorted(p.name for p in (disk / "run").iterdir()) == ["last.pt", "metrics.jsonl"]
        assert torch.load(disk / "run" / "last.pt", weights_only=True)["epoch"] == 1


# --------------------------------------------------------------------------- checkpoint retention


def test_finished_trials_keep_only_the_checkpoints_of_the_best(tmp_path, monkeypatch):
    """Three complete trials with BKDSEARCH_KEEP_CHECKPOINTS=1: only the best one's last
    checkpoint stays in the artifact store; a checkpoint a queued retry resumes from stays
    too, whatever its dead trial's rank; with K=0 the complete trials keep none."""
    monkeypatch.setenv("BKDSEARCH_KEEP_CHECKPOINTS", "1")
    _, spec = _spec(tmp_path)
    study = open_study(spec, f"sqlite:///{tmp_path}/s.db", "keep")
    worker = Worker(spec, study, n_trials=3, device=CPU, studies_dir=tmp_path / "studies", progress=False,
                    log=lambda m: None)
    worker.run()
    store = tmp_path / "studies" / "keep" / "artifacts"
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(done) == 3
    best = max(done, key=lambda t: t.values[0])
    assert [p.name for p in store.iterdir()] == [best.user_attrs["checkpoint"]["artifact_id"]]

    dead = study.ask()  # interrupted with a checkpoint: its queued retry resumes from it
    (store / "queued").write_bytes(b"checkpoint")
    dead.set_user_attr("checkpoint", {"artifact_id": "queued", "epoch": 1})
    queue_again(study, study._storage.get_trial(dead._trial_id))
    study.tell(dead, state=TrialState.FAIL)
    prune_checkpoints(study, worker.objective.artifacts, 0)
    assert [p.name for p in store.iterdir()] == ["queued"]
