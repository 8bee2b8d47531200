"""``--set`` of any spec key a run uses (data.*, teacher.checkpoint...) in `train` and `run`,
and Ctrl-C stopping a worker's teacher training within a step."""

import copy
import json
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_SPEC, write_spec
from optuna.trial import TrialState
from workerkit import ENV, by_state, finish, quick_spec, run_cmd, start, study_name, trials

from bkdsearch.errors import SpecError
from bkdsearch.spec import Defaults, Spec, parameter_names, resolve
from bkdsearch.spec.resolution import override_spec
from bkdsearch.teacher import cached_teacher_path, teacher_weights
from bkdsearch.zoo import create_model


def bkd(*args: str, cwd) -> "subprocess.CompletedProcess":  # noqa: F821 - imported below
    import subprocess

    return subprocess.run([sys.executable, "-m", "bkdsearch.cli", *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=600)


def test_spec_keys_are_settable_and_validated():
    spec = Spec.model_validate({**TINY_SPEC, "method": "kd"})
    names = parameter_names(spec)
    for key in ("data.root", "data.batch_size", "data.val_fraction", "data.train_fraction", "data.split_seed",
                "teacher.checkpoint", "teacher.arch", "student.arch", "student.checkpoint"):
        assert key in names
    cfg = resolve(spec, Defaults(), overrides={"data.batch_size": 16, "data.split_seed": 7,
                                               "teacher.checkpoint": "/t.pt", "train.lr": 0.3})
    assert (cfg.data.batch_size, cfg.data.split_seed, cfg.teacher.checkpoint, cfg.train.lr) == (16, 7, "/t.pt", 0.3)
    # What the spec left unset stays unset: kd's published CE/KD weights still apply.
    assert (cfg.loss.alpha, cfg.loss.beta) == (0.1, 0.9)
    with pytest.raises(SpecError, match=r"data\.batch_size"):
        resolve(spec, Defaults(), overrides={"data.batch_size": 0})
    with pytest.raises(SpecError, match=r"data\.val_fraction"):
        override_spec(spec, {"data.val_fraction": "lots"})
    with pytest.raises(SpecError, match=r"data\.bogus: unknown parameter; known: .*data\.root"):
        resolve(spec, Defaults(), overrides={"data.bogus": 1})


def test_train_set_data_and_teacher_checkpoint(tmp_path):
    teacher = tmp_path / "teacher.pt"
    torch.save(create_model("resnet14", num_classes=10).state_dict(), teacher)
    spec = copy.deepcopy(TINY_SPEC)
    spec["method"] = "kd"
    spec["data"]["synthetic"].update(train_size=160, test_size=32)
    out = tmp_path / "run"
    r = bkd("train", write_spec(tmp_path / "s.yaml", spec), "--set", "train.epochs=1",
            "--set", "data.batch_size=16", "--set", f"teacher.checkpoint={teacher}", "--out", str(out),
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["batch_size"] == 16
    assert config["teacher"]["checkpoint"] == str(teacher)
    assert not (tmp_path / "studies" / "teachers").exists()  # the given teacher, none trained


def test_train_bad_set_exits_2_naming_the_key(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", TINY_SPEC)
    for item, needle in (("data.batch_size=-1", "data.batch_size"), ("data.nope=1", "data.nope"),
                         ("teacher.checkpoint=/nonexistent/t.pt", "teacher checkpoint not found")):
        r = bkd("train", spec, "--set", item, "--out", str(tmp_path / "run"), cwd=tmp_path)
        assert r.returncode == 2, (item, r.stdout, r.stderr)
        assert needle in r.stderr and "Traceback" not in r.stderr, (item, r.stderr)


def test_run_set_is_fixed_for_every_trial_and_recorded(tmp_path):
    spec = quick_spec(tmp_path / "spec.yaml", train_size=160)
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    name = study_name()
    # A searched parameter is the search's to choose: refused before any study is written.
    for item, needle in (("train.lr=0.1", "train.lr: searched by the spec"),
                         ("data.val_fraction=2", "data.val_fraction"), ("data.nope=1", "data.nope: unknown parameter")):
        r = bkd(*run_cmd(spec, storage, name, 1, "--set", item)[3:], cwd=tmp_path)
        assert r.returncode == 2, (item, r.stdout, r.stderr)
        assert needle in r.stderr and "Traceback" not in r.stderr, (item, r.stderr)
    assert not (tmp_path / "db.sqlite").exists()
    rc, out, err = finish(start(run_cmd(spec, storage, name, 1, "--set", "data.val_fraction=0.3",
                                        "--set", "train.weight_decay=0.001"), tmp_path))
    assert rc == 0, (out, err)
    done = [t for t in trials(storage, name) if t.state == TrialState.COMPLETE]
    assert done
    for t in done:
        assert t.user_attrs["run_config"]["data"]["val_fraction"] == 0.3
        assert t.user_attrs["run_config"]["train"]["weight_decay"] == 0.001
    import optuna

    recorded = optuna.load_study(study_name=name, storage=storage).user_attrs["spec"]
    assert recorded["data"]["val_fraction"] == 0.3 and recorded["train"]["weight_decay"] == 0.001


def test_teacher_training_resumes_after_a_stop(tmp_path):
    """A stopped teacher keeps its last epoch checkpoint and its next training resumes from it."""
    from bkdsearch.core.engine.trainer import Stopped

    spec = copy.deepcopy(TINY_SPEC)
    spec["teacher"] = {"arch": "resnet8", "recipe": {"epochs": 2, "lr": 0.1}}
    spec["data"]["synthetic"].update(train_size=96, test_size=32)
    cfg = resolve(Spec.model_validate(spec), Defaults())
    folder = cached_teacher_path(cfg, tmp_path).parent
    metrics = folder / "metrics.jsonl"
    with pytest.raises(Stopped):
        teacher_weights(cfg, tmp_path, should_stop=lambda: metrics.exists())
    assert (folder / "last.pt").is_file() and not (folder / "student.pt").exists()
    path = teacher_weights(cfg, tmp_path)
    assert Path(path).is_file()
    epochs = [json.loads(line).get("epoch") for line in metrics.read_text().splitlines()]
    assert epochs[:2] == [1, 2], epochs  # epoch 1 was not trained again


def test_ctrl_c_stops_teacher_training_within_a_step(tmp_path):
    spec = copy.deepcopy(TINY_SPEC)
    spec["method"] = "kd"
    spec["teacher"]["recipe"] = {"epochs": 40, "lr": 0.1, "schedule": "cosine"}
    spec["data"]["synthetic"].update(train_size=1600)
    spec["search"] = {"n_trials": 1, "pruner": "none"}
    path = write_spec(tmp_path / "spec.yaml", spec)
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    name = study_name()
    proc = start(run_cmd(path, storage, name, 1), tmp_path)
    teachers = tmp_path / "studies" / "teachers"
    deadline = time.monotonic() + 240
    while not any(p.stat().st_size for p in teachers.glob("*/metrics.jsonl")):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the teacher did not train an epoch:\n{proc.communicate()}")
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    rc, out, err = finish(proc, timeout=30)
    assert rc == 130, (out, err)
    assert time.monotonic() - t0 < 15, "took as long as the teacher's remaining epochs"
    assert "Traceback" not in err
    (folder,) = [p.parent for p in teachers.glob("*/metrics.jsonl")]
    assert (folder / "last.pt").is_file() and not (folder / "student.pt").exists()
    ts = trials(storage, name)
    assert not [t for t in ts if t.state == TrialState.RUNNING], by_state(ts)
    failed = [t for t in ts if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["fail_reason"].startswith("interrupted"), by_state(ts)
