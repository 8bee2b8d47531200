"""Helpers of the worker and failure tests: quick specs, `bkdsearch run` subprocesses, polling
a study."""

from __future__ import annotations

import contextlib
import copy
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
from conftest import TINY_SPEC, write_spec
from optuna.trial import TrialState

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def quick_spec(path: Path, *, epochs: int = 1, train_size: int = 320, **search) -> str:
    """A CE spec (no teacher needed) on a small synthetic task with a searched learning rate:
    one epoch is about a second on one CPU thread."""
    spec = copy.deepcopy(TINY_SPEC)
    spec["method"] = "ce"
    spec["data"]["synthetic"].update(train_size=train_size, test_size=64)
    spec["train"].update(epochs=epochs, lr={"float": [0.02, 0.2], "log": True},
                         momentum={"float": [0.5, 0.95]})
    spec["search"] = {"n_trials": 2, "pruner": "none", **search}
    return write_spec(Path(path), spec)


def study_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def run_cmd(spec: str, storage: str, study: str, n_trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bkdsearch.cli", "run", spec, "--storage", storage, "--study", study,
            "--n-trials", str(n_trials), "--quiet", "--devices", "cpu", *extra]


def start(cmd: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    Path(cwd).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(cmd, cwd=cwd, env={**ENV, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"worker did not finish in {timeout} s:\n{out}\n{err}") from None
    return proc.returncode, out, err


def trials(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=storage).get_trials()


def wait_for_checkpoint(proc: subprocess.Popen, storage: str, study: str, timeout: float = 180):
    """Poll until some RUNNING trial has saved an epoch checkpoint; return that trial."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"worker ended early ({proc.returncode}):\n{out}\n{err}")
        try:
            for t in trials(storage, study):
                if t.state == TrialState.RUNNING and t.user_attrs.get("checkpoint"):
                    return t
        except Exception:  # noqa: BLE001 - the study may not exist yet
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("no checkpoint saved in time")


def by_state(ts: list[optuna.trial.FrozenTrial]) -> dict[TrialState, list[int]]:
    out: dict[TrialState, list[int]] = {}
    for t in ts:
        out.setdefault(t.state, []).append(t.number)
    return out


def die_after_ask(spec: str, storage: str, study: str, *, asks: int = 1, enqueue: dict | None = None,
                  heartbeat: bool = False, then: str = "") -> None:
    """A worker SIGKILLed in the window between ``study.ask()`` and its first heartbeat: a
    process opens the study as ``bkdsearch run`` does (optionally enqueueing ``enqueue``
    first), asks ``asks`` trials (``heartbeat``: and records one for each), runs the Python
    statements ``then`` (``study`` and ``frozen``, the last trial, are defined) and kills
    itself."""
    code = f"""
import os, signal
from bkdsearch.search import open_study
from bkdsearch.spec import load_spec
study = open_study(load_spec({spec!r}), {storage!r}, {study!r})
if {enqueue!r}:
    study.enqueue_trial({enqueue!r})
for _ in range({asks}):
    trial = study.ask()
    if {heartbeat!r}:
        study._storage.record_heartbeat(trial._trial_id)
frozen = study._storage.get_trial(trial._trial_id)
{then}
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, (proc.returncode, proc.stdout, proc.stderr)


@contextlib.contextmanager
def small_disk(path: Path, size_kb: int) -> Iterator[tuple[Path, Callable[[], None] | None]]:
    """A folder with ``size_kb`` KiB of room: a tmpfs mounted there (root), yielding
    ``(path, None)``; where mounting is refused, a plain folder and ``(path, limit)`` with
    ``limit`` a ``preexec_fn`` that caps the size of every file a process writes (RLIMIT_FSIZE,
    SIGXFSZ ignored: writes past it fail with EFBIG), for a subprocess."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                             capture_output=True).returncode == 0 if shutil.which("mount") else False
    if not mounted:
        def limit() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (size_kb * 1024, resource.RLIM_INFINITY))

        yield path, limit
        return
    try:
        yield path, None
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
