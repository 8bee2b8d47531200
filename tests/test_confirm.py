"""`bkdsearch confirm`: the top configurations and the baseline (here every searched parameter
at its default, which no search trial ran) re-trained with fresh seeds at the full recipe as
trials of the same study; a SIGKILLed confirmation resumes; status, report and export use the
confirmed means, the winner and its gain over the baseline."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_SPEC, write_spec
from optuna.trial import TrialState
from workerkit import ENV, finish, start, trials

from bkdsearch.search.confirm import BASELINE_UNSEARCHED

pytestmark = pytest.mark.slow

FAST = {"BKDSEARCH_HEARTBEAT_S": "1", "BKDSEARCH_GRACE_S": "3"}


def _spec(tmp: Path) -> str:
    spec = copy.deepcopy(TINY_SPEC)
    spec["method"] = "ce"
    spec["data"]["synthetic"].update(train_size=320, test_size=64)
    spec["train"].update(epochs=4, lr={"float": [0.02, 0.2], "log": True})
    # Search at a lower fidelity: 2 epochs on half the training split; confirm at 4 on all of it.
    spec["search"] = {"n_trials": 3, "pruner": "none", "fidelity": {"epochs": 2, "train_fraction": 0.5}}
    return write_spec(tmp / "s.yaml", spec)


def _cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bkdsearch.cli", *args], capture_output=True, text=True,
                          env={**ENV, **(env or {})}, cwd=cwd, timeout=600)


def test_confirm_two_by_two_with_a_killed_confirmation_that_resumes(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    storage = f"sqlite:///{tmp_path}/studies/tiny.db"
    r = _cli("run", spec, "--quiet", "--devices", "cpu", cwd=tmp_path, env=FAST)
    assert r.returncode == 0, r.stderr
    searched = trials(storage, "tiny")
    assert all(t.user_attrs["run_config"]["train"]["epochs"] == 2 for t in searched)
    assert all(t.user_attrs["run_config"]["data"]["train_fraction"] == 0.5 for t in searched)
    top2 = sorted(searched, key=lambda t: -t.values[0])[:2]

    proc = start([sys.executable, "-m", "bkdsearch.cli", "confirm", spec, "--top", "2", "--seeds", "2", "--quiet",
                  "--devices", "cpu"], tmp_path, **FAST)
    deadline = time.monotonic() + 300
    victim = None
    while victim is None and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for t in trials(storage, "tiny"):
            if t.state == TrialState.RUNNING and t.user_attrs.get("confirm_of") is not None \
                    and (t.user_attrs.get("checkpoint") or {}).get("epoch", 0) >= 1:
                victim = t
        time.sleep(0.1)
    assert victim is not None, "no confirmation saved a checkpoint in time"
    proc.kill()
    proc.communicate()

    code, out, err = finish(start([sys.executable, "-m", "bkdsearch.cli", "confirm", spec, "--top", "2",
                                   "--seeds", "2", "--quiet", "--devices", "cpu"], tmp_path, **FAST))
    assert code == 0, err
    assert "confirmed winner: the " in out and "chosen on validation only" in out
    final = trials(storage, "tiny")
    confirmations = [t for t in final if t.state == TrialState.COMPLETE and t.user_attrs.get("confirm_of") is not None]
    assert sorted((t.user_attrs["confirm_of"], t.user_attrs["seed"]) for t in confirmations) == sorted(
        (n, s) for n in [t.number for t in top2] + [BASELINE_UNSEARCHED] for s in (1000, 1001))
    baseline_runs = [t for t in confirmations if t.user_attrs["confirm_of"] == BASELINE_UNSEARCHED]
    assert all(t.params["train.lr"] == pytest.approx((0.02 * 0.2) ** 0.5) for t in baseline_runs)
    for t in confirmations:  # the full recipe, the confirmation's own seed, never pruned
        cfg = t.user_attrs["run_config"]
        assert cfg["train"]["epochs"] == 4 and cfg["data"]["train_fraction"] == 1.0
        assert cfg["seed"] == t.user_attrs["seed"] and not t.intermediate_values
    resumed = [t for t in confirmations if t.user_attrs.get("resumed_from")]
    assert len(resumed) == 1 and resumed[0].user_attrs["resumed_from"]["epoch"] >= 1
    assert not [t for t in final if t.state == TrialState.RUNNING]

    status = json.loads(_cli("status", spec, "--json", cwd=tmp_path).stdout)[0]
    assert sorted(c["trial"] for c in status["configurations"]) == sorted(
        [t.number for t in top2] + [BASELINE_UNSEARCHED])
    assert all(c["n"] == 2 and c["epoch_s"] > 0 and c["train_gflops"] > 0 for c in status["configurations"])
    assert status["gain"]["baseline"] == BASELINE_UNSEARCHED and status["gain"]["val"]["method"] == "paired"
    assert "the default configuration" in " ".join(status["gain"]["lines"])
    assert "the default configuration" in out  # confirm ends with the gain
    exported = _cli("export", spec, "--trial", "best", "-o", "best.py", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert "confirmed winner" in exported.stdout
    script = (tmp_path / "best.py").read_text()
    assert "'epochs': 4" in script  # the full recipe
    assert "gain: " in script and "the default configuration" in script and "s/epoch" in script
    # Running confirm again queues nothing new.
    again = _cli("confirm", spec, "--top", "2", "--seeds", "2", "--quiet", "--devices", "cpu", cwd=tmp_path)
    assert again.returncode == 0 and "0 queued now, 0 to train" in again.stdout
