"""`bkdsearch dashboard`: a real optuna-dashboard server in a subprocess, asked over HTTP.

Each server is `python -m bkdsearch.cli dashboard ...` on a free port of 127.0.0.1, polled
until it answers, then terminated; the study is a real SQLite one with checkpoint files in
its artifact folder (as a worker leaves them)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import optuna
from conftest import TINY_SPEC
from optuna.trial import TrialState

from bkdsearch.dashboard import READ_ONLY_NOTICE, READ_ONLY_SCRIPT, DashboardStorage, ReadOnlyRefused, readable_attrs
from bkdsearch.search import make_storage
from bkdsearch.spec import Defaults, Spec, resolve

ENV = {k: v for k, v in os.environ.items() if k != "BKDSEARCH_ARTIFACT_DIR"}
ENV.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
START_TIMEOUT_S = 120
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy for 127.0.0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(method: str, url: str, body: dict | None = None) -> tuple[int, bytes]:
    """(status, body) of an HTTP request; error statuses are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with HTTP.open(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get_json(url: str) -> dict:
    status, body = request("GET", url)
    assert status == 200, (status, body)
    return json.loads(body)


@contextlib.contextmanager
def dashboard(cwd: Path, *args: str):
    """Start `bkdsearch dashboard ARGS --port P`, wait until it answers; yield (base URL,
    the lines it printed before serving); terminate it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bkdsearch.cli", "dashboard", *args, "--port", str(port)],
                            cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"dashboard ended ({proc.returncode}):\n{out}\n{err}")
            try:
                with HTTP.open(f"{base}/api/meta", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"dashboard did not answer within {START_TIMEOUT_S} s")
            time.sleep(0.2)
        # It answers only once it serves: what it prints first is already out (and flushed).
        printed = [proc.stdout.readline().rstrip("\n") for _ in range(5)]
        yield base, printed
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def run_config() -> dict:
    return resolve(Spec.model_validate(TINY_SPEC), Defaults()).model_dump(mode="json")


def make_study(root: Path, artifacts: Path, name: str = "tiny") -> dict:
    """A study in ``root/studies.db`` as workers leave it: trial 0 COMPLETE with its checkpoint
    in ``artifacts`` (the study's artifact folder), trial 1 COMPLETE whose checkpoint was
    removed since, trial 2 RUNNING; return what the tests look for."""
    storage = f"sqlite:///{root / 'studies.db'}"
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr("spec", {**TINY_SPEC, "name": name})
    study.set_user_attr("teacher_test_acc", 91.5)
    cfg = run_config()
    flops = {"counter": "fvcore", "student": 12679424, "teacher": None, "train_step": 38038272, "stones": {}}
    artifacts.mkdir(parents=True, exist_ok=True)
    kept, gone = uuid.uuid4().hex, uuid.uuid4().hex
    (artifacts / kept).write_bytes(b"epoch 2 checkpoint " + os.urandom(64))
    for number, artifact_id in ((0, kept), (1, gone)):
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE, value=61.5 - number,
            params={"train.lr": 0.1}, distributions={"train.lr": optuna.distributions.FloatDistribution(0.01, 1)},
            user_attrs={"run_config": cfg, "flops": flops, "test_acc": 60.0,
                        "checkpoint": {"artifact_id": artifact_id, "epoch": 2}}))
    running = study.ask()
    running.set_user_attr("worker", "host pid 1 cpu")
    return {"storage": storage, "name": name, "id": study._study_id, "kept": artifacts / kept,
            "cfg": cfg, "flops": flops, "running": running._trial_id}


def attrs(serialized: list[dict]) -> dict[str, str]:
    return {a["key"]: a["value"] for a in serialized}


def study_names(storage: str) -> list[str]:
    return optuna.get_all_study_names(storage)


# --------------------------------------------------------------------------- read-only (the default)


def test_read_only_dashboard_prints_the_study_url_shows_checkpoints_and_refuses_writes(tmp_path):
    """The URL of --study's study is printed before serving and opens the dashboard; the
    trial's checkpoint (in --artifact-dir DIR/<study>) is listed and downloads; JSON user
    attrs come whole; deleting the study, user attrs, tell and notes answer 403 and change
    nothing, nor is the checkpoint file removed."""
    s = make_study(tmp_path, tmp_path / "shared" / "tiny")
    assert len(json.dumps(s["cfg"])) > 1024  # optuna-dashboard would cut it
    with dashboard(tmp_path, "--storage", s["storage"], "--study", "tiny",
                   "--artifact-dir", str(tmp_path / "shared")) as (base, printed):
        url = f"{base}/dashboard/studies/{s['id']}"
        assert f"open {url}" in printed, printed
        assert printed[:3] == [f"dashboard of {s['storage']}", "read-only (--writable to allow changes)",
                               f"checkpoints from {tmp_path / 'shared' / 'tiny'}"], printed
        assert all(len(line) <= 80 for line in printed if "/" not in line), printed
        status, page = request("GET", url)
        assert status == 200 and b"<html" in page.lower()
        # The page itself says it is read-only, and dims (with the reason) what would write:
        # a script of the page's own origin (its content security policy refuses inline ones).
        assert f'<script defer src="{READ_ONLY_SCRIPT}"></script></head>'.encode() in page
        status, script = request("GET", base + READ_ONLY_SCRIPT)
        assert status == 200 and json.dumps(READ_ONLY_NOTICE).encode() in script and b"__NOTICE__" not in script
        assert b"MutationObserver" in script and b"status === 403" in script

        detail = get_json(f"{base}/api/studies/{s['id']}")
        trials = {t["number"]: t for t in detail["trials"]}
        kept = s["kept"].name
        assert [a["artifact_id"] for a in trials[0]["artifacts"]] == [kept]
        assert trials[0]["artifacts"][0]["filename"] == "trial-0-epoch-2.pt"
        assert trials[1]["artifacts"] == []  # its checkpoint file is gone: nothing to list
        status, data = request("GET", f"{base}/artifacts/{s['id']}/{trials[0]['trial_id']}/{kept}")
        assert status == 200 and data == s["kept"].read_bytes()

        shown = attrs(trials[0]["user_attrs"])
        assert json.loads(shown["run_config"]) == s["cfg"]  # whole, not cut at 1024 characters
        assert json.loads(shown["flops"]) == s["flops"]
        assert shown["flops.train_step_mflops"] == "38.0383" and shown["checkpoint.epoch"] == "2"
        assert shown["run_config.train.epochs"] == str(s["cfg"]["train"]["epochs"])  # short, flat keys
        assert shown["test_acc"] == "60.0"
        summary = get_json(f"{base}/api/studies")["study_summaries"][0]
        assert json.loads(attrs(summary["user_attrs"])["spec"])["name"] == "tiny"

        trial0 = trials[0]["trial_id"]
        refused = [
            ("DELETE", f"/api/studies/{s['id']}", None),  # its artifacts first: refused there
            ("DELETE", f"/api/studies/{s['id']}", {"remove_associated_artifacts": False}),
            ("POST", f"/api/trials/{trial0}/user-attrs", {"user_attrs": {"test_acc": 99.0}}),
            ("POST", f"/api/trials/{s['running']}/tell", {"state": "Fail"}),
            ("PUT", f"/api/studies/{s['id']}/note", {"version": 1, "body": "hello"}),
            ("POST", f"/api/studies/{s['id']}/rename", {"study_name": "renamed"}),
            ("DELETE", f"/api/artifacts/{s['id']}/{trial0}/{kept}", None),
            ("POST", "/api/studies", {"study_name": "new", "directions": ["maximize"]}),
        ]
        for method, path, body in refused:
            status, answer = request(method, base + path, body)
            assert status == 403, (method, path, status, answer)
            assert "read-only dashboard" in json.loads(answer)["reason"] and "--writable" in answer.decode()
        assert get_json(f"{base}/api/studies/{s['id']}")["trials"][0]["artifacts"]

    assert study_names(s["storage"]) == ["tiny"]
    study = optuna.load_study(study_name="tiny", storage=s["storage"])
    assert study.trials[0].user_attrs["test_acc"] == 60.0
    assert study.trials[2].state == TrialState.RUNNING
    assert not any(k.startswith("artifacts:") for t in study.trials for k in t.system_attrs)  # nothing written
    assert s["kept"].is_file()


def test_every_write_of_the_read_only_storage_is_refused(tmp_path):
    """The storage the dashboard gets refuses each write method of an Optuna storage (not
    only those the dashboard calls today) and reads through."""
    s = make_study(tmp_path, tmp_path / "studies" / "tiny" / "artifacts")
    inner = make_storage(s["storage"], create=False)
    view = DashboardStorage(inner)
    trial_id = s["running"]
    dist = optuna.distributions.FloatDistribution(0, 1)
    writes = {
        "create_new_study": lambda: view.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "x"),
        "delete_study": lambda: view.delete_study(s["id"]),
        "set_study_user_attr": lambda: view.set_study_user_attr(s["id"], "k", 1),
        "set_study_system_attr": lambda: view.set_study_system_attr(s["id"], "k", 1),
        "create_new_trial": lambda: view.create_new_trial(s["id"]),
        "set_trial_param": lambda: view.set_trial_param(trial_id, "x", 0.5, dist),
        "set_trial_state_values": lambda: view.set_trial_state_values(trial_id, TrialState.FAIL),
        "set_trial_intermediate_value": lambda: view.set_trial_intermediate_value(trial_id, 1, 0.5),
        "set_trial_user_attr": lambda: view.set_trial_user_attr(trial_id, "k", 1),
        "set_trial_system_attr": lambda: view.set_trial_system_attr(trial_id, "k", 1),
    }
    abstract = {n for n in optuna.storages.BaseStorage.__abstractmethods__
                if n.startswith(("create_", "delete_", "set_"))}
    assert abstract <= set(writes), abstract - set(writes)  # every write of the interface is covered
    for name, write in writes.items():
        try:
            write()
        except ReadOnlyRefused as exc:
            assert "read-only dashboard" in str(exc) and "--writable" in str(exc), name
        else:
            raise AssertionError(f"{name} was not refused")
    assert [st.study_name for st in view.get_all_studies()] == ["tiny"]
    assert len(view.get_all_trials(s["id"])) == 3 and view.get_best_trial(s["id"]).number == 0
    assert view.get_trial(trial_id).state == TrialState.RUNNING and not view.get_trial(trial_id).params
    study = optuna.load_study(study_name="tiny", storage=s["storage"])
    assert study.user_attrs.keys() == {"spec", "teacher_test_acc"} and len(study.trials) == 3


def test_readable_attrs_keeps_scalars_and_spells_out_json():
    flops = {"student": 12_680_000, "teacher": None, "student_params": 470_000, "stones": {"a": 1_500_000},
             "counter": "fvcore"}
    shown = readable_attrs({"flops": flops, "stones": [1, 2], "test_acc": 61.5, "worker": "w",
                            "run_config": {"train": {"lr": 0.05, "milestones": [150, 180]}, "data": {"root": "/d"}}})
    assert json.loads(shown["flops"]) == flops  # whole
    # FLOP counts with their unit, parameters in millions, nested values flat, None left out.
    assert shown["flops.student_mflops"] == 12.68 and shown["flops.student_params_m"] == 0.47
    assert shown["flops.stones.a_mflops"] == 1.5 and shown["flops.counter"] == "fvcore"
    assert "flops.student" not in shown and "flops.teacher_mflops" not in shown
    assert shown["run_config.train.lr"] == 0.05 and shown["run_config.data.root"] == "/d"
    assert json.loads(shown["run_config.train.milestones"]) == [150, 180]
    assert json.loads(shown["stones"]) == [1, 2]
    assert shown["test_acc"] == 61.5 and shown["worker"] == "w"


# --------------------------------------------------------------------------- --writable


def test_writable_dashboard_deletes_the_study_and_its_checkpoints(tmp_path):
    """With --writable (and no study: the dashboard's home URL), the same DELETE goes
    through: the study is gone, and so is its checkpoint in the default artifact folder
    studies/<study>/artifacts."""
    s = make_study(tmp_path, tmp_path / "studies" / "tiny" / "artifacts")
    with dashboard(tmp_path, "--storage", s["storage"], "--writable") as (base, printed):
        assert f"open {base}/dashboard" in printed, printed
        assert printed[:3] == [f"dashboard of {s['storage']}", "writable: changes allowed",
                               f"checkpoints from {Path('studies') / '<study>' / 'artifacts'}"], printed
        status, page = request("GET", f"{base}/dashboard")
        assert status == 200 and READ_ONLY_SCRIPT.encode() not in page
        detail = get_json(f"{base}/api/studies/{s['id']}")
        assert [a["artifact_id"] for a in detail["trials"][0]["artifacts"]] == [s["kept"].name]
        assert attrs(detail["trials"][0]["user_attrs"])["run_config"].startswith("{")  # as stored
        status, answer = request("DELETE", f"{base}/api/studies/{s['id']}")
        assert status == 204, answer
    assert study_names(s["storage"]) == []
    assert not s["kept"].exists()


# --------------------------------------------------------------------------- bad input before serving


def test_a_port_in_use_is_bad_input_before_anything_is_printed(tmp_path):
    s = make_study(tmp_path, tmp_path / "studies" / "tiny" / "artifacts")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "bkdsearch.cli", "dashboard", "--storage", s["storage"],
                            "--study", "tiny", "--port", str(port)],
                           capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    assert r.stderr.startswith(f"error: --port {port} on 127.0.0.1 is already in use; --port "), r.stderr
    assert r.stderr.rstrip().endswith(" is free"), r.stderr
    assert len(r.stderr.splitlines()) == 1 and len(r.stderr.rstrip("\n")) <= 80, r.stderr


def test_an_unknown_study_is_bad_input_listing_the_studies(tmp_path):
    s = make_study(tmp_path, tmp_path / "studies" / "tiny" / "artifacts")
    r = subprocess.run([sys.executable, "-m", "bkdsearch.cli", "dashboard", "--storage", s["storage"],
                        "--study", "other", "--port", str(free_port())],
                       capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == "" and "no study 'other'" in r.stderr and "studies: tiny" in r.stderr
