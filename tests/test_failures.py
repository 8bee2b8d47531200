"""Failures: trials that go NaN or raise, stale trials and their retries, checkpoints that
carry code or are corrupt, bad storage URLs, passwords in URLs."""

import copy
import json
import os
import pathlib
import pickle
import uuid

import optuna
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_SPEC, write_spec
from optuna.trial import TrialState
from workerkit import quick_spec

from bkdsearch.cli import main
from bkdsearch.core.engine.trainer import Trainer
from bkdsearch.search import (
    MAX_CONSECUTIVE_FAILURES,
    StorageError,
    TrialsKeepFailing,
    TrialSuggest,
    Worker,
    fail_stale_trials,
    heartbeat_settings,
    make_storage,
    open_study,
)
from bkdsearch.spec import RuntimeConfig, Spec, resolve

CPU = torch.device("cpu")


def cli(*args: str):
    """Run the command line in-process; return (exit code, stdout + stderr)."""
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result.exit_code, result.output + (result.stderr or "")


def _spec(tmp_path, **search) -> Spec:
    import yaml

    path = quick_spec(tmp_path / "spec.yaml", **search)
    return Spec.model_validate(yaml.safe_load(open(path)))


# --------------------------------------------------------------------------- trials that fail


def test_nan_and_raising_trials_fail_with_reasons_and_the_worker_goes_on(tmp_path):
    spec = _spec(tmp_path)
    study = open_study(spec, f"sqlite:///{tmp_path}/s.db", "failing")
    # Values outside the limits, enqueued behind the spec's back: each trial's resolution refuses
    # them (an lr that would overflow is bounded, issue 25.4), naming the value and the limit.
    study.enqueue_trial({"train.lr": 1e6})
    study.enqueue_trial({"train.momentum": 1.5})  # momentum must be < 1
    logs = []
    worker = Worker(spec, study, n_trials=2, device=CPU, studies_dir=tmp_path / "studies",
                    progress=False, log=logs.append)
    report = worker.run()
    ts = study.get_trials()
    assert [t.state for t in ts] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert ts[0].user_attrs["fail_reason"].startswith("invalid configuration")
    assert "lr" in ts[0].user_attrs["fail_reason"] and "10" in ts[0].user_attrs["fail_reason"]
    assert ts[1].user_attrs["fail_reason"].startswith("invalid configuration")
    assert "momentum" in ts[1].user_attrs["fail_reason"]
    assert (report.failed, report.complete) == (2, 2)
    assert any("trial 0 failed: invalid configuration" in line for line in logs)


def test_a_non_finite_loss_fails_the_trial_with_its_reason(tmp_path):
    """A student whose weights hold NaN (what preflight refuses on the command line; a
    program can still start from one): each trial fails at its first step saying so, and
    the worker stops once trials keep failing."""
    from bkdsearch.zoo import create_model

    state = create_model("resnet8", num_classes=10).state_dict()
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, tmp_path / "nan.pt")
    spec = _spec(tmp_path)
    spec = spec.model_copy(update={"student": spec.student.model_copy(update={"checkpoint": str(tmp_path / "nan.pt")})})
    study = open_study(spec, f"sqlite:///{tmp_path}/s.db", "nan")
    logs = []
    worker = Worker(spec, study, n_trials=1, device=CPU, studies_dir=tmp_path / "studies",
                    progress=False, log=logs.append)
    with pytest.raises(TrialsKeepFailing, match="non-finite loss"):
        worker.run()
    reasons = [t.user_attrs["fail_reason"] for t in study.get_trials()]
    assert len(reasons) == MAX_CONSECUTIVE_FAILURES
    assert all(r.startswith("non-finite loss") and ("nan" in r or "inf" in r) for r in reasons), reasons
    assert any("trial 0 failed: non-finite loss" in line for line in logs)


def test_a_worker_stops_when_every_trial_fails(tmp_path):
    spec = _spec(tmp_path)
    study = open_study(spec, f"sqlite:///{tmp_path}/s.db", "broken")
    for _ in range(MAX_CONSECUTIVE_FAILURES + 1):
        study.enqueue_trial({"train.momentum": 1.5}, skip_if_exists=False)
    worker = Worker(spec, study, n_trials=3, device=CPU, studies_dir=tmp_path / "studies",
                    progress=False, log=lambda m: None)
    with pytest.raises(TrialsKeepFailing, match="in a row failed.*momentum"):
        worker.run()
    ts = study.get_trials()
    assert [t.state for t in ts].count(TrialState.FAIL) == MAX_CONSECUTIVE_FAILURES
    assert not [t for t in ts if t.state == TrialState.RUNNING]


def test_surplus_trial_of_a_race_on_the_cap_is_failed_and_requeued(tmp_path):
    spec = _spec(tmp_path)
    study = open_study(spec, f"sqlite:///{tmp_path}/s.db", "race")
    other = study.ask()  # another worker's trial fills the cap of 1
    study.enqueue_trial({"train.lr": 0.05})
    worker = Worker(spec, study, n_trials=1, device=CPU, studies_dir=tmp_path / "studies", progress=False)
    popped = study.ask()  # as if asked at the same moment as ``other``
    assert popped.number == 1 and worker._surplus(popped)
    worker._drop_surplus(popped)
    ts = study.get_trials()
    assert ts[1].state == TrialState.FAIL and ts[1].user_attrs["fail_reason"].startswith("surplus")
    assert ts[2].state == TrialState.WAITING and ts[2].system_attrs["fixed_params"] == {"train.lr": 0.05}
    assert not worker._surplus(other)


def test_stale_trial_is_failed_once_and_retried_with_its_params_and_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("BKDSEARCH_HEARTBEAT_S", "1")
    monkeypatch.setenv("BKDSEARCH_GRACE_S", "2")
    spec = _spec(tmp_path)
    url = f"sqlite:///{tmp_path}/s.db"
    study = open_study(spec, url, "stale")
    trial = study.ask()
    trial.suggest_float("train.lr", 0.02, 0.2, log=True)
    trial.set_user_attr("checkpoint", {"artifact_id": "abc", "epoch": 3})
    study._storage.record_heartbeat(trial._trial_id)
    assert fail_stale_trials(study) == []
    import time

    time.sleep(3.2)
    # A second process looking at the same moment: each stale trial is failed (and retried) once.
    other = optuna.load_study(study_name="stale", storage=make_storage(url))
    assert fail_stale_trials(study) == [0]
    assert fail_stale_trials(other) == []
    ts = study.get_trials()
    assert len(ts) == 2
    assert ts[0].state == TrialState.FAIL and "no heartbeat for over 2 s" in ts[0].user_attrs["fail_reason"]
    assert ts[1].state == TrialState.WAITING and ts[1].params == ts[0].params
    assert ts[1].user_attrs["checkpoint"] == {"artifact_id": "abc", "epoch": 3}
    assert "fail_reason" not in ts[1].user_attrs
    assert ts[1].system_attrs["failed_trial"] == 0


def test_retry_refuses_a_checkpoint_artifact_that_carries_code(tmp_path, monkeypatch):
    """A checkpoint artifact swapped for a pickle with a payload: the retry starts from epoch 0
    and the payload never runs."""
    marker = tmp_path / "PWNED"
    spec = _spec(tmp_path)
    study = open_study(spec, f"sqlite:///{tmp_path}/s.db", "evil")
    worker = Worker(spec, study, n_trials=1, device=CPU, studies_dir=tmp_path / "studies", progress=False)
    with open(tmp_path / "evil.pt", "wb") as f:
        torch.save({"epoch": 1, "method": _Payload(marker)}, f)
    with open(tmp_path / "evil.pt", "rb") as f:
        worker.objective.artifacts.write("evil", f)
    dead = study.ask()
    dead.suggest_float("train.lr", 0.02, 0.2, log=True)
    dead.suggest_float("train.momentum", 0.5, 0.95)
    dead.set_user_attr("checkpoint", {"artifact_id": "evil", "epoch": 1})
    study.tell(dead, state=TrialState.FAIL)
    study._storage.get_heartbeat_stale_trial_callback()(study, study._storage.get_trial(dead._trial_id))
    worker.run()
    retry = study.get_trials()[1]
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["resumed_from"] == {"trial": 0, "epoch": 0}
    assert "not available" in retry.user_attrs["resume_note"]
    assert not marker.exists()


def test_retry_on_a_cpu_worker_resumes_a_gpu_workers_checkpoint(tmp_path):
    """A trial trained by a GPU worker (device cuda:0, graphs, bf16, channels_last) whose
    worker died is retried by a CPU worker: the runtime differs, yet it resumes from the
    saved epoch."""
    spec = _spec(tmp_path, epochs=2)
    study = open_study(spec, f"sqlite:///{tmp_path}/s.db", "other-device")
    worker = Worker(spec, study, n_trials=1, device=CPU, studies_dir=tmp_path / "studies", progress=False)
    dead = study.ask()
    cfg = resolve(spec, TrialSuggest(dead))
    gpu = cfg.model_copy(update={"runtime": RuntimeConfig(device="cuda:0", amp="bf16", cuda_graph="on",
                                                          channels_last="on")})
    # Trained here on the CPU (where those runtime settings are inert), saved as that worker would.
    Trainer(gpu, tmp_path / "gpu-run", device=CPU).fit(stop_after=1)
    with open(tmp_path / "gpu-run" / "last.pt", "rb") as f:
        worker.objective.artifacts.write("gpu-epoch-1", f)
    dead.set_user_attr("checkpoint", {"artifact_id": "gpu-epoch-1", "epoch": 1})
    study.tell(dead, state=TrialState.FAIL)
    study._storage.get_heartbeat_stale_trial_callback()(study, study._storage.get_trial(dead._trial_id))
    worker.run()
    retry = study.get_trials()[1]
    assert retry.state == TrialState.COMPLETE, retry.user_attrs
    assert retry.user_attrs["resumed_from"] == {"trial": 0, "epoch": 1}
    assert "resume_note" not in retry.user_attrs
    assert retry.user_attrs["run_config"]["runtime"]["device"] == "cpu"
    rows = (tmp_path / "studies" / "other-device" / f"trial-{retry.number}" / "metrics.jsonl").read_text()
    assert [json.loads(r)["epoch"] for r in rows.splitlines() if "epoch" in r] == [2]


def test_stop_request_fails_the_running_trial_as_interrupted_and_queues_it(tmp_path):
    """Ctrl-C sets the worker's stop event: the trainer stops before its next step, and the
    trial ends FAIL (interrupted) and is queued again with the same parameters."""
    spec = _spec(tmp_path)
    study = open_study(spec, f"sqlite:///{tmp_path}/s.db", "stop")
    worker = Worker(spec, study, n_trials=1, device=CPU, studies_dir=tmp_path / "studies",
                    progress=False, log=lambda m: None)
    worker.stop.set()
    worker.run_trial(study.ask())
    run_dir = tmp_path / "studies" / "stop" / "trial-0"
    assert run_dir.is_dir()  # the trainer had started...
    assert not (run_dir / "metrics.jsonl").exists()  # ...and stopped before its first step
    stopped, queued = study.get_trials()
    assert stopped.state == TrialState.FAIL
    assert stopped.user_attrs["fail_reason"].startswith("interrupted")
    assert queued.state == TrialState.WAITING and queued.params == stopped.params
    assert queued.system_attrs["failed_trial"] == stopped.number
    assert (worker.report.failed, worker.report.interrupted) == (0, 1)  # counted apart from failures


def test_heartbeat_settings_from_the_environment(monkeypatch):
    monkeypatch.delenv("BKDSEARCH_HEARTBEAT_S", raising=False)
    monkeypatch.delenv("BKDSEARCH_GRACE_S", raising=False)
    assert heartbeat_settings() == (10, 30)
    monkeypatch.setenv("BKDSEARCH_HEARTBEAT_S", "2")
    assert heartbeat_settings() == (2, 30)
    monkeypatch.setenv("BKDSEARCH_GRACE_S", "1")
    with pytest.raises(StorageError, match="longer than"):
        heartbeat_settings()
    monkeypatch.setenv("BKDSEARCH_HEARTBEAT_S", "soon")
    with pytest.raises(StorageError, match="BKDSEARCH_HEARTBEAT_S"):
        heartbeat_settings()


# --------------------------------------------------------------------------- checkpoints


class _Payload:
    """Pickles to a call that creates ``marker``: what a malicious checkpoint carries."""

    def __init__(self, marker, how="system"):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "system":
            return (os.system, (f"touch {self.marker}",))
        if self.how == "exec":
            return (exec, (f"open({self.marker!r}, 'w').close()",))
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _train_args(tmp_path, **models):
    spec = copy.deepcopy(TINY_SPEC)
    spec["data"]["synthetic"].update(train_size=128, test_size=64)
    spec["train"]["epochs"] = 1
    for key, value in models.items():
        spec[key]["checkpoint"] = value
    return ["train", write_spec(tmp_path / "spec.yaml", spec), "--out", str(tmp_path / "run")]


@pytest.mark.parametrize("where, how, writer", [
    ("teacher", "system", "torch"),
    ("teacher", "exec", "pickle"),
    ("student", "touch", "torch"),
])
def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path, monkeypatch, where, how, writer):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    obj = {"model": {"conv1.weight": _Payload(marker, how)}}
    if writer == "torch":
        torch.save(obj, evil)
    else:
        with open(evil, "wb") as f:
            pickle.dump(obj, f)
    pickle.loads(pickle.dumps(_Payload(tmp_path / "probe", how)))  # the payload does work...
    assert (tmp_path / "probe").exists()
    code, out = cli(*_train_args(tmp_path, **{where: str(evil)}))
    assert code == 2, out
    assert "refused" in out and str(evil) in out
    assert not marker.exists()  # ...but not from a checkpoint


@pytest.mark.parametrize("content", [
    pytest.param(lambda good: good[: len(good) // 2], id="truncated"),
    pytest.param(lambda good: os.urandom(4096), id="random-bytes"),
    pytest.param(lambda good: b"", id="empty"),
    pytest.param(lambda good: b"hello world\n", id="text"),
])
def test_corrupt_checkpoint_exits_2(tmp_path, monkeypatch, content):
    monkeypatch.chdir(tmp_path)
    buf = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.zeros(1000)}}, buf)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content(buf.read_bytes()))
    code, out = cli(*_train_args(tmp_path, teacher=str(bad)))
    assert code == 2, out
    assert str(bad) in out


# --------------------------------------------------------------------------- storage URLs

BAD_URLS = [
    "nosuchdb://x",
    "not a url at all",
    "postgresql+psycopg://postgres@127.0.0.1:1/test",
    "mysql+pymysql://root@127.0.0.1:1/test",
    "sqlite:////proc/no/such/dir/x.db",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_storage_url_exits_2_with_a_message(tmp_path, monkeypatch, url):
    monkeypatch.chdir(tmp_path)
    spec = quick_spec(tmp_path / "spec.yaml")
    for args in (["run", spec, "--storage", url, "--n-trials", "1", "--devices", "cpu"],
                 ["status", "--storage", url],
                 ["export", "--storage", url, "--study", "x", "-o", str(tmp_path / "x.py")],
                 ["report", "--storage", url, "--study", "x", "-o", str(tmp_path / "rep")]):
        code, out = cli(*args)
        assert code == 2, (args, out)
        assert "storage" in out and "Traceback" not in out, (args, out)
    assert not (tmp_path / "x.py").exists()


@pytest.mark.parametrize("url, secrets", [
    ("postgresql+psycopg://postgres:s3cret@127.0.0.1:1/test", ["s3cret"]),
    ("mysql+pymysql://root:s3cret@127.0.0.1:1/test", ["s3cret"]),
    ("postgresql+psycopg://postgres:s3cr%2Ft@127.0.0.1:1/test", ["s3cr%2Ft", "s3cr/t"]),
    ("postgresql+psycopg://postgres@127.0.0.1:1/test?password=s3cret", ["s3cret"]),
])
def test_password_never_shown_when_the_storage_fails(tmp_path, monkeypatch, url, secrets):
    monkeypatch.chdir(tmp_path)
    spec = quick_spec(tmp_path / "spec.yaml")
    for args in (["run", spec, "--storage", url, "--n-trials", "1", "--devices", "cpu"],
                 ["status", "--storage", url],
                 ["export", "--storage", url, "--study", "x", "-o", str(tmp_path / "x.py")],
                 ["report", "--storage", url, "--study", "x", "-o", str(tmp_path / "rep")],
                 ["dashboard", "--storage", url]):
        code, out = cli(*args)
        assert code == 2, (args, out)
        assert "127.0.0.1" in out and "***" in out, (args, out)
        for secret in secrets:
            assert secret not in out, (args, out)


@pytest.mark.db
@pytest.mark.slow
def test_password_never_reaches_output_attrs_reports_or_scripts(tmp_path, monkeypatch, db_url):
    """PostgreSQL with trust authentication accepts any password: a whole run, status, report
    and export with a password in the URL (given in the spec and on the command line)."""
    import yaml

    monkeypatch.chdir(tmp_path)
    secret = f"pw{uuid.uuid4().hex[:8]}"
    url = db_url("postgresql").replace("postgres@", f"postgres:{secret}@")
    spec_path = quick_spec(tmp_path / "spec.yaml")
    spec = yaml.safe_load(pathlib.Path(spec_path).read_text())
    spec["storage"] = url
    write_spec(tmp_path / "spec.yaml", spec)
    seen = []
    code, out = cli("run", spec_path, "--n-trials", "1", "--devices", "cpu", "--quiet")
    assert code == 0, out
    seen.append(out)
    for args in (["status", "--storage", url], ["status", spec_path],
                 ["export", "--storage", url, "--study", "tiny", "-o", str(tmp_path / "train_best.py")],
                 ["report", "--storage", url, "--study", "tiny", "-o", str(tmp_path / "report")]):
        code, out = cli(*args)
        assert code == 0, (args, out)
        seen.append(out)
    study = optuna.load_study(study_name="tiny", storage=url)
    assert "***" in study.user_attrs["spec"]["storage"]
    seen.append(repr(study.user_attrs) + repr(study._storage.get_study_system_attrs(study._study_id)))
    for t in study.get_trials():
        seen.append(repr(t.user_attrs) + repr(t.system_attrs) + repr(t.params))
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.name != "spec.yaml":
            seen.append(path.read_bytes().decode("latin-1"))
    assert (tmp_path / "train_best.py").exists() and (tmp_path / "report" / "summary.md").exists()
    for text in seen:
        assert secret not in text


def test_redact_hides_query_passwords():
    from bkdsearch.urls import redact

    assert "s3cret" not in redact("postgresql+psycopg://u@db.example/x?sslmode=require&password=s3cret")
    assert "s3cret" not in redact("mysql+pymysql://root@db.example/x?passwd=s3cret")


def test_failure_reasons_never_store_a_password():
    from bkdsearch.search.objective import _reason

    try:
        raise RuntimeError("lost postgresql+psycopg://bob:s3cret@db/bkd mid-query")
    except RuntimeError as exc:
        reason = _reason(exc)
    assert "s3cret" not in reason and "bob:***@db" in reason and reason.startswith("RuntimeError: lost ")
