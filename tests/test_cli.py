"""The command line: exit codes, messages, `train` end to end."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import TINY_SPEC, write_spec

from bkdsearch.zoo import create_model

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def bkd(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bkdsearch.cli", *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=600)


def test_validate_ok_and_schema(tmp_path):
    r = bkd("validate", write_spec(tmp_path / "s.yaml", TINY_SPEC))
    assert r.returncode == 0, r.stderr
    assert "resnet14 -> resnet8" in r.stdout and "layer1.1" in r.stdout
    r = bkd("schema")
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    assert "student" in schema["properties"] and schema["additionalProperties"] is False


@pytest.mark.parametrize("mutate, needle", [
    (lambda s: s.update(method="distill"), "method"),
    (lambda s: s["partitions"].update(stage={"teacher": ["layer1.1", "layer2.1"], "student": ["layer2.0", "layer1.0"]}),
     "partitions.stage"),
    (lambda s: s["teacher"].update(checkpoint="/nonexistent/teacher.pt"), "teacher checkpoint not found"),
])
def test_bad_input_exits_2_without_traceback(tmp_path, mutate, needle):
    spec = copy.deepcopy(TINY_SPEC)
    mutate(spec)
    r = bkd("train", write_spec(tmp_path / "s.yaml", spec), "--out", str(tmp_path / "run"))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_spec_file_and_bad_set(tmp_path):
    r = bkd("validate", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "cannot read spec" in r.stderr
    r = bkd("train", write_spec(tmp_path / "s.yaml", TINY_SPEC), "--set", "train.lrr=0.1")
    assert r.returncode == 2 and "train.lrr" in r.stderr and "Traceback" not in r.stderr


def test_train_writes_metrics_and_loadable_student(tmp_path, teacher_ckpt):
    spec = copy.deepcopy(TINY_SPEC)
    spec["teacher"]["checkpoint"] = teacher_ckpt
    out = tmp_path / "run"
    r = bkd("train", write_spec(tmp_path / "s.yaml", spec), "--set", "train.epochs=1",
            "--set", "blockkd.order=deep_first", "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["epoch"] == 1 and "val_acc" in rows[0] and rows[-1]["final"]
    model = create_model("resnet8", num_classes=10)
    model.load_state_dict(torch.load(out / "student.pt", weights_only=True), strict=True)
    assert json.loads((out / "config.json").read_text())["blockkd"]["order"] == "deep_first"


def test_run_artifact_dir_option_wins_and_log_lines_do_not_wrap(tmp_path, teacher_ckpt):
    """--artifact-dir DIR puts the checkpoints of running trials in DIR/<study>, over
    BKDSEARCH_ARTIFACT_DIR and the default studies/<study>/artifacts; log lines stay whole
    in a 40-column terminal."""
    spec = copy.deepcopy(TINY_SPEC)
    spec["teacher"]["checkpoint"] = teacher_ckpt
    spec["train"]["epochs"] = 1
    spec["search"] = {"n_trials": 1, "pruner": "none"}
    env = {**ENV, "BKDSEARCH_ARTIFACT_DIR": str(tmp_path / "env-artifacts"), "COLUMNS": "40"}
    r = subprocess.run([sys.executable, "-m", "bkdsearch.cli", "run", write_spec(tmp_path / "s.yaml", spec),
                        "--quiet", "--artifact-dir", str(tmp_path / "shared")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    assert [p for p in (tmp_path / "shared" / "tiny").rglob("*") if p.is_file()], "no checkpoint artifact"
    assert not (tmp_path / "env-artifacts").exists()
    assert not (tmp_path / "studies" / "tiny" / "artifacts").exists()
    assert "study tiny: 1 done, 0 pruned, 0 failed, 0 running / cap 1; best val acc" in r.stdout
    assert "study tiny in sqlite:///studies/tiny.db; cap 1 trials; devices cpu x 1" in r.stdout
