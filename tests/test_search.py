"""A real study through the command line on SQLite: run, resume, prune, status, report,
export, the optuna CLI and optuna-dashboard on our storage."""

import copy
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import torch
from conftest import TINY_SPEC, write_spec

# One worker runs this module's tests: they share the module-scoped study.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("study")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
BIN = Path(sys.executable).parent


def bkd(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "bkdsearch.cli", *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=timeout)


def _spec(tmp, teacher_ckpt, **search):
    spec = copy.deepcopy(TINY_SPEC)
    spec["teacher"]["checkpoint"] = teacher_ckpt
    spec["data"]["synthetic"]["train_size"] = 600  # half the teacher's: these trials test the study, not learning
    spec["train"].update(epochs=2, lr={"float": [0.02, 0.2], "log": True})
    spec["blockkd"] = {"tau": {"float": [1.0, 8.0]}}
    # The pruner may act from epoch 1 (a fifth of a 2-epoch cosine run rounds to 0), never after the last.
    spec["search"] = {"n_trials": 3, "pruner": "median", "pruner_warmup_fraction": 0.2, **search}
    return write_spec(Path(tmp) / "spec.yaml", spec)


@pytest.fixture(scope="session")
def study_dir(tmp_path_factory, teacher_ckpt):
    """A 3-trial study: two good enqueued configurations, then one with a tiny learning rate
    that the median pruner stops after its first epoch."""
    tmp = tmp_path_factory.mktemp("study")
    enqueue = [{"train.lr": 0.1, "blockkd.tau": 4.0}, {"train.lr": 0.08, "blockkd.tau": 2.0}]
    spec = _spec(tmp, teacher_ckpt, enqueue=enqueue)
    # A learning rate of 1e-5 is outside the searched range: enqueue it directly.
    storage = f"sqlite:///{tmp}/studies/tiny.db"
    r = bkd("run", spec, "--quiet", "--n-trials", "2", cwd=tmp)
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="tiny", storage=storage)
    study.enqueue_trial({"train.lr": 1e-5, "blockkd.tau": 4.0}, skip_if_exists=False)
    r = bkd("run", spec, "--quiet", "--n-trials", "3", cwd=tmp)
    assert r.returncode == 0, r.stderr
    return tmp, spec, storage


def test_study_trials_and_user_attrs(study_dir):
    tmp, spec, storage = study_dir
    study = optuna.load_study(study_name="tiny", storage=storage)
    states = [t.state for t in study.trials]
    assert states[:2] == [optuna.trial.TrialState.COMPLETE] * 2
    assert states[2] == optuna.trial.TrialState.PRUNED, [(t.state, t.intermediate_values) for t in study.trials]
    assert study.metric_names == ["val_acc"]
    attrs = study.trials[0].user_attrs
    for key in ("run_config", "flops", "versions", "device", "test_acc", "wall_time_s", "images_per_s", "teacher_s"):
        assert key in attrs, key
    assert attrs["run_config"]["train"]["lr"] == 0.1
    assert attrs["flops"]["train_step"] > attrs["flops"]["teacher"] > attrs["flops"]["student"] > 0
    assert set(attrs["flops"]["stones"]) == {"1", "2", "3"}
    assert attrs["versions"]["torch"] == torch.__version__
    assert 0 <= attrs["test_acc"] <= 100
    assert study.trials[0].intermediate_values.keys() == {1, 2}
    assert max(study.trials[2].intermediate_values) < 2  # pruned before its last epoch


def test_rerun_resumes_and_cap_counts_finished(study_dir):
    tmp, spec, storage = study_dir
    r = bkd("run", spec, "--quiet", "--n-trials", "4", cwd=tmp)
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    finished = [t for t in study.trials if t.state.is_finished() and t.state != optuna.trial.TrialState.FAIL]
    assert len(finished) == 4
    r = bkd("run", spec, "--quiet", "--n-trials", "4", cwd=tmp)  # nothing left to do
    assert r.returncode == 0 and len(optuna.load_study(study_name="tiny", storage=storage).trials) == 4


def test_status_json_and_optuna_cli(study_dir):
    tmp, spec, storage = study_dir
    r = bkd("status", "--storage", storage, "--json", cwd=tmp)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows[0]["study"] == "tiny" and rows[0]["counts"]["pruned"] >= 1
    r = subprocess.run([str(BIN / "optuna"), "trials", "--storage", storage, "--study-name", "tiny", "-f", "json"],
                       capture_output=True, text=True, env=ENV, cwd=tmp, timeout=120)
    assert r.returncode == 0, r.stderr
    numbers = {row["number"] for row in json.loads(r.stdout)}
    assert {0, 1, 2} <= numbers


def test_status_shows_running_trials_and_failure_reasons(study_dir, tmp_path):
    """On a copy of the study: one trial running (as a worker elsewhere would leave it) and
    one failed; status names the running trial's worker and epoch, and the failure's reason."""
    import sqlite3

    tmp, spec, storage = study_dir
    with sqlite3.connect(Path(tmp) / "studies" / "tiny.db") as src, sqlite3.connect(tmp_path / "copy.db") as dst:
        src.backup(dst)  # WAL mode: a file copy could miss the last transactions
    copy_url = f"sqlite:///{tmp_path}/copy.db"
    study = optuna.load_study(study_name="tiny", storage=copy_url)
    done = study.trials[0]
    running = study.ask({k: v for k, v in done.distributions.items()})
    running.set_user_attr("worker", "gpu-box-7 pid 4242 cuda:1")
    running.set_user_attr("checkpoint", {"artifact_id": "x", "epoch": 1})
    running.set_user_attr("run_config", done.user_attrs["run_config"])
    failed = study.ask()
    failed.set_user_attr("fail_reason", "non-finite loss: training loss is nan in epoch 2")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    surplus = study.ask()  # a race on the cap: queued again, never trained, not worth listing
    surplus.set_user_attr("fail_reason", "surplus: other workers had already filled the cap")
    study.tell(surplus, state=optuna.trial.TrialState.FAIL)

    r = bkd("status", "--storage", copy_url, "--json", cwd=tmp)
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)[0]
    assert row["counts"]["running"] == 1
    assert [(x["number"], x["worker"], x["epoch"], x["epochs"]) for x in row["running"]] == [
        (running.number, "gpu-box-7 pid 4242 cuda:1", 1, 2)]
    assert row["running"][0]["params"] == running.params
    assert {"number": failed.number, "reason": "non-finite loss: training loss is nan in epoch 2"} in row["failed"]
    assert surplus.number not in [f["number"] for f in row["failed"]]
    r = subprocess.run([sys.executable, "-m", "bkdsearch.cli", "status", "--storage", copy_url],
                       capture_output=True, text=True, env={**ENV, "COLUMNS": "250"}, cwd=tmp, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "gpu-box-7 pid 4242 cuda:1" in r.stdout and "1/2" in r.stdout
    assert f"failed trial {failed.number}: non-finite loss" in r.stdout
    # Trials trained by a real worker name it: host, process and device.
    assert done.user_attrs["worker"].startswith(f"{socket.gethostname()} pid ")
    assert done.user_attrs["worker"].endswith(" cpu")


def test_report_writes_plots_and_summary(study_dir):
    tmp, spec, storage = study_dir
    out = Path(tmp) / "report"
    r = bkd("report", "--storage", storage, "--study", "tiny", "-o", str(out), cwd=tmp)
    assert r.returncode == 0, r.stderr
    for name in ("history.png", "curves.png", "parallel.png", "summary.md"):
        assert (out / name).stat().st_size > 0, name
    summary = (out / "summary.md").read_text()
    # Every trial trains the same student with the same cuts: accuracy against cost has nothing to show.
    assert not (out / "acc_vs_flops.png").exists() and "`acc_vs_flops.png` not drawn: every trial has the same" \
        in summary
    assert "Best trials" in summary and "enqueued" in summary
    assert (out / "history.png").read_bytes()[:4] == b"\x89PNG"
    # Every plot is linked; the ones not drawn say why; the summary ends with the export command.
    for png in out.glob("*.png"):
        assert f"]({png.name})" in summary, png.name
    assert not (out / "importances.png").exists() and "importances need at least 10" in summary
    assert summary.rstrip().endswith(f"bkdsearch export --storage {storage} --study tiny --trial best -o train_best.py")
    assert "single runs: confirm over seeds" in summary


def test_status_fits_80_columns_with_units(study_dir):
    import io

    from rich.console import Console

    from bkdsearch.report import render_status, study_status

    tmp, spec, storage = study_dir
    buffer = io.StringIO()
    render_status(study_status(storage, "tiny"), Console(file=buffer, width=80, color_system=None))
    lines = buffer.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert not any("\u2026" in line for line in lines), "a cell was cut"
    text = buffer.getvalue()
    assert "best trials by val_acc" in text and "val_acc (%)" in text and "MFLOPs" in text
    assert any(line.startswith("  trial 0: ") and "train.lr=0.1" in line for line in lines)


def test_report_of_a_study_with_only_failed_trials_lists_the_reasons(tmp_path):
    storage = f"sqlite:///{tmp_path}/f.db"
    study = optuna.create_study(study_name="broken", storage=storage)
    for reason in ("DataError: no data", "DataError: no data", "CUDA out of memory"):
        trial = study.ask()
        trial.set_user_attr("fail_reason", reason)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    r = bkd("report", "--storage", storage, "--study", "broken", "-o", str(tmp_path / "rep"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert "no complete trial yet" in summary and "| 0, 1 | 2 | DataError: no data |" in summary
    assert "| 2 | 1 | CUDA out of memory |" in summary


def test_an_exported_trial_retrains_to_the_trials_own_weights(study_dir, teacher_ckpt):
    tmp, _, storage = study_dir
    script = Path(tmp) / "train_best.py"
    r = bkd("export", "--storage", storage, "--study", "tiny", "--trial", "0", "-o", str(script), cwd=tmp)
    assert r.returncode == 0, r.stderr
    text = script.read_text()
    imported = {line.split()[1].split(".")[0] for line in text.splitlines() if line.startswith(("import ", "from "))}
    assert "bkdsearch" not in imported and {"torch", "torchvision"} <= imported | {"torchvision"}
    assert imported - set(sys.stdlib_module_names) <= {"torch", "torchvision", "numpy", "PIL"}
    study = optuna.load_study(study_name="tiny", storage=storage)
    cfg = study.trials[0].user_attrs["run_config"]
    r = subprocess.run([sys.executable, str(script), "--teacher-checkpoint", teacher_ckpt, "--device", "cpu",
                        "--out", str(Path(tmp) / "exported"), "--val-fraction", str(cfg["data"]["val_fraction"])],
                       capture_output=True, text=True, env=ENV, cwd="/", timeout=600)
    assert r.returncode == 0, r.stderr
    # The study's own run of trial 0, not a retraining: the script reproduces what was searched.
    a = torch.load(Path(tmp) / "exported" / "student.pt", weights_only=True)
    b = torch.load(Path(tmp) / "studies" / "tiny" / "trial-0" / "student.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_our_study(study_dir):
    tmp, spec, storage = study_dir
    port = _free_port()
    cmd = [sys.executable, "-m", "bkdsearch.cli", "dashboard", "--storage", storage, "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=tmp, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = None
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as resp:
                    body = json.loads(resp.read())
                break
            except OSError:
                time.sleep(0.5)
        assert body is not None, "dashboard did not answer"
        assert "tiny" in [s["study_name"] for s in body["study_summaries"]]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_multi_objective_pareto_front(tmp_path, teacher_ckpt):
    spec = copy.deepcopy(TINY_SPEC)
    spec["teacher"]["checkpoint"] = teacher_ckpt
    spec["train"]["epochs"] = 1
    spec["blockkd"] = {"partition": {"choice": ["stage", "fine"]}}
    spec["partitions"] = {"stage": "stage_aligned", "fine": {"uniform": 4}}
    spec["search"] = {"n_trials": 2, "objectives": ["val_acc", "train_gflops"], "sampler": "nsga2", "pruner": "none",
                      "enqueue": [{"blockkd.partition": "stage"}, {"blockkd.partition": "fine"}]}
    path = write_spec(tmp_path / "mo.yaml", spec)
    r = bkd("run", path, "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/studies/tiny.db")
    assert study.metric_names == ["val_acc", "train_gflops"]
    assert len(study.directions) == 2 and study.best_trials
    gflops = {t.params["blockkd.partition"]: t.values[1] for t in study.trials}
    assert gflops["fine"] != gflops["stage"]
    r = bkd("report", "--storage", f"sqlite:///{tmp_path}/studies/tiny.db", "--study", "tiny", "-o",
            str(tmp_path / "rep"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "rep" / "pareto.png").exists()
    assert "Pareto front" in (tmp_path / "rep" / "summary.md").read_text()
