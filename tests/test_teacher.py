"""The spec's teacher: the lock that only training takes, a cache keyed by what the teacher
is (not where its data lies), one evaluation function, and data roots that are never
silently replaced."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from conftest import TINY_SPEC, write_spec
from optuna.trial import TrialState
from workerkit import ENV, finish, run_cmd, start

from bkdsearch.spec import Defaults, Spec, resolve
from bkdsearch.teacher import (
    cached_teacher_path,
    data_content_id,
    needs_training,
    teacher_identity,
    teacher_test_accuracy,
)


def _cfg(**data):
    spec = copy.deepcopy(TINY_SPEC)
    spec["data"].update(data)
    return resolve(Spec.model_validate(spec), Defaults())


def _hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding the teacher-training lock (as a `bkdsearch train` of another
    spec's teacher would), until killed."""
    code = textwrap.dedent(f"""
        import time
        from filelock import FileLock
        FileLock({str(path)!r}).acquire()
        print("held", flush=True)
        time.sleep(600)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_trial_with_a_given_teacher_checkpoint_never_waits_on_the_teacher_lock(tmp_path, teacher_ckpt):
    spec = copy.deepcopy(TINY_SPEC)
    spec["teacher"] = {"arch": "resnet14", "checkpoint": teacher_ckpt}
    spec["train"]["epochs"] = 1
    spec["data"]["synthetic"].update(train_size=320, test_size=64)
    path = write_spec(tmp_path / "spec.yaml", spec)
    lock = tmp_path / "studies" / "teachers" / ".train.lock"
    lock.parent.mkdir(parents=True)
    holder = _hold_lock(lock)
    try:
        storage = f"sqlite:///{tmp_path / 'studies' / 'lock.db'}"
        worker = start(run_cmd(path, storage, "lock", 1), tmp_path)
        rc, out, err = finish(worker, timeout=240)
        assert rc == 0, err
        assert holder.poll() is None, "the lock holder must still hold the lock while the trial ran"
    finally:
        holder.kill()
        holder.wait()
    trials = optuna.load_study(study_name="lock", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE]
    # The study still measured the teacher it distilled from (the shared evaluation function).
    assert 0.0 <= optuna.load_study(study_name="lock", storage=storage).user_attrs["teacher_test_acc"] <= 100.0


def test_only_a_missing_teacher_needs_training(tmp_path, teacher_ckpt):
    cfg = _cfg()
    assert needs_training(cfg, tmp_path)
    given = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"checkpoint": teacher_ckpt})})
    assert not needs_training(given, tmp_path)
    assert not needs_training(cfg.model_copy(update={"method": "ce"}), tmp_path)
    cached = cached_teacher_path(cfg, tmp_path)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(Path(teacher_ckpt).read_bytes())
    assert not needs_training(cfg, tmp_path)


def _fashion_copy(folder: Path, *, damage: bool = False) -> Path:
    """A copy of Debian's Fashion-MNIST files in ``folder`` (one label byte changed with
    ``damage``: other content, same size)."""
    source = Path("/usr/share/datasets/fashion-mnist")
    if not (source / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail("Fashion-MNIST missing from /usr/share/datasets: apt-get install dataset-fashion-mnist")
    import gzip

    folder.mkdir(parents=True)
    for file in source.glob("*.gz"):
        raw = gzip.decompress(file.read_bytes())
        if damage and file.name.startswith("train-labels"):
            raw = raw[:-1] + bytes([(raw[-1] + 1) % 10])
        (folder / file.name.removesuffix(".gz")).write_bytes(raw)
    return folder


def test_the_teacher_cache_key_follows_content_not_folder(tmp_path):
    spec = copy.deepcopy(TINY_SPEC)
    spec["data"] = {"dataset": "fashion_mnist", "val_fraction": 0.1, "batch_size": 64}
    here = _fashion_copy(tmp_path / "a")
    moved = _fashion_copy(tmp_path / "elsewhere" / "b")
    changed = _fashion_copy(tmp_path / "c", damage=True)

    def key(root: Path, **data) -> str:
        variant = {**spec, "data": {**spec["data"], "root": str(root), **data}}
        return teacher_identity(resolve(Spec.model_validate(variant), Defaults()))

    assert key(here) == key(moved), "moving a dataset must not retrain its teacher"
    assert key(here) != key(changed), "changed content must train a new teacher"
    assert key(here, download=True) == key(here)  # how the files were got is not what they are
    assert key(here, split_seed=1) != key(here)  # another validation split: another teacher
    assert data_content_id(_cfg().data) is None  # the synthetic set is its settings


def test_a_teacher_cached_under_the_old_key_is_still_found(tmp_path):
    cfg = _cfg()
    from bkdsearch.teacher import teacher_run_config

    tcfg = teacher_run_config(cfg)
    legacy = tmp_path / f"{tcfg.student.arch}-{tcfg.digest()}" / "student.pt"
    assert cached_teacher_path(cfg, tmp_path) != legacy
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"weights")
    assert cached_teacher_path(cfg, tmp_path) == legacy


def test_teacher_test_accuracy_builds_no_trainer(teacher_ckpt):
    cfg = _cfg()
    accuracy = teacher_test_accuracy(cfg, teacher_ckpt, "cpu")
    assert 30.0 < accuracy <= 100.0  # the shared teacher learnt the easy task (10 classes: chance 10%)


def test_a_data_root_that_does_not_exist_is_exit_2_naming_it(tmp_path):
    """Issue 26: Fashion-MNIST with a missing root silently read Debian's copy (and trained a
    second teacher). Now: exit 2 before anything trains, naming the path and the default."""
    missing = tmp_path / "no-such-data"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "bkdsearch.cli", "train", str(Path(__file__).parents[1] / "specs/fashion_mnist.yaml"),
         "--set", f"data.root={missing}", "--out", str(tmp_path / "out")],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert str(missing) in done.stderr and "/usr/share/datasets/fashion-mnist" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert time.monotonic() - started < 120


def test_a_lower_fidelity_shares_of_the_full_runs_data():
    """search.fidelity.train_fraction is a share of what the full run trains on: with
    data.train_fraction 0.5 a fidelity of 0.5 trains on a quarter, and a fidelity of epochs
    alone keeps the half (it used to reset it to the whole split)."""
    from bkdsearch.spec.resolution import at_fidelity

    cfg = _cfg(train_fraction=0.5)
    assert at_fidelity(cfg, None, 0.5).data.train_fraction == 0.25
    assert at_fidelity(cfg, 1).data.train_fraction == 0.5


def test_a_search_trial_at_a_lower_fidelity_distils_from_the_full_recipes_teacher(tmp_path):
    """The teacher of a trial trained on a fidelity share of the data is the one its
    confirmations use (keyed by the full recipe's data), not a second, weaker one."""
    spec = copy.deepcopy(TINY_SPEC)
    spec["train"]["epochs"] = 1
    spec["search"] = {"n_trials": 1, "pruner": "none", "fidelity": {"train_fraction": 0.5}}
    path = write_spec(tmp_path / "spec.yaml", spec)
    storage = f"sqlite:///{tmp_path / 'studies' / 'f.db'}"
    rc, out, err = finish(start(run_cmd(path, storage, "f", 1), tmp_path), timeout=300)
    assert rc == 0, err
    trial = optuna.load_study(study_name="f", storage=storage).trials[0]
    assert trial.user_attrs["run_config"]["data"]["train_fraction"] == 0.5  # it searched at the fidelity
    full = resolve(Spec.model_validate(spec), Defaults())
    cached = sorted((tmp_path / "studies" / "teachers").glob("*/student.pt"))
    assert cached == [cached_teacher_path(full, tmp_path / "studies" / "teachers")]
