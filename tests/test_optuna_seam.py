"""One module owns every use of Optuna's private API (``search/optuna_seam.py``), and its
storage wrapper wraps every storage method of the installed Optuna (issue 23, item 1)."""

from __future__ import annotations

import ast
import inspect
import textwrap
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState
from workerkit import finish, quick_spec, run_cmd, start, study_name, trials

from bkdsearch.search import make_storage, optuna_seam
from bkdsearch.search.objective import TRAIN_GFLOPS_CONSTRAINT
from bkdsearch.search.optuna_seam import WrappedStorage
from bkdsearch.search.patient import PatientStorage
from bkdsearch.search.study import make_sampler
from bkdsearch.spec import load_spec

PACKAGE = Path(__file__).resolve().parents[1] / "bkdsearch"
SEAM = PACKAGE / "search" / "optuna_seam.py"

DEPRECATED = {"get_failed_trial_callback"}
"""Deprecated aliases Optuna implements on top of a wrapped method (nothing to wrap)."""


def private_optuna_names() -> set[str]:
    """The private attribute names of Optuna's study, trial, storage and artifact store
    objects and classes."""
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    trial = study.ask()
    store = optuna.artifacts.FileSystemArtifactStore(".")
    objects = [study, trial, study.trials[0], store, optuna.Study, optuna.Trial, optuna.trial.FrozenTrial,
               optuna.trial.FixedTrial, optuna_seam.FrozenStudy, BaseStorage, BaseHeartbeat, RDBStorage,
               _CachedStorage, optuna.artifacts.FileSystemArtifactStore]
    names = {n for o in objects for n in (*dir(o), *getattr(o, "__dict__", {}))}
    names |= {"_backend", "_trial_id", "_study_id", "_storage"}
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def private_uses(path: Path, private: set[str]) -> list[str]:
    """``file:line: what`` for each private Optuna module, name or attribute that ``path`` touches."""
    tree = ast.parse(path.read_text(), filename=str(path))
    where = path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE) else path.name
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "optuna":
            parts = [*(node.module or "").split("."), *(a.name for a in node.names)]
            if any(p.startswith("_") for p in parts):
                found.append(f"{where}:{node.lineno}: from {node.module} import "
                             f"{', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "optuna" and any(p.startswith("_") for p in alias.name.split(".")):
                    found.append(f"{where}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.Attribute) and node.attr in private:
            found.append(f"{where}:{node.lineno}: .{node.attr}")
    return found


def test_no_module_but_the_seam_touches_a_private_optuna_name():
    private = private_optuna_names()
    assert {"_storage", "_trial_id", "_study_id", "_backend", "_get_stale_trial_ids", "_base_path"} <= private
    uses = [use for path in sorted(PACKAGE.rglob("*.py")) if path != SEAM for use in private_uses(path, private)]
    assert uses == [], "private Optuna API outside search/optuna_seam.py:\n" + "\n".join(uses)


def test_the_check_sees_private_uses(tmp_path):
    """The walk finds each kind of private use (else the test above would prove nothing)."""
    sample = tmp_path / "sample.py"
    sample.write_text("import optuna.storages._rdb.models\nfrom optuna.storages._heartbeat import BaseHeartbeat\n"
                      "from optuna.storages import _CachedStorage\n"
                      "def f(study, trial):\n    return study._storage.get_trial(trial._trial_id)\n")
    uses = sorted(use.split(": ", 1)[1] for use in private_uses(sample, private_optuna_names()))
    assert uses == ["._storage", "._trial_id", "from optuna.storages import _CachedStorage",
                    "from optuna.storages._heartbeat import BaseHeartbeat", "import optuna.storages._rdb.models"]


def storage_methods() -> set[str]:
    """The methods a wrapper of an RDB storage must have: the public methods of
    ``BaseStorage``, ``BaseHeartbeat`` and ``RDBStorage``, BaseHeartbeat's private ones, and
    every method Optuna's cache calls on its backend (read from the cache's source)."""
    names = {n for cls in (BaseStorage, BaseHeartbeat, RDBStorage) for n, member in vars(cls).items()
             if callable(member) and not n.startswith("__") and (not n.startswith("_") or cls is BaseHeartbeat)}
    tree = ast.parse(textwrap.dedent(inspect.getsource(_CachedStorage)))
    names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
              and isinstance(node.value, ast.Attribute) and node.value.attr == "_backend"}
    return names - DEPRECATED - {"_abc_impl"}


def test_the_wrapper_wraps_every_storage_method_of_the_installed_optuna():
    """An Optuna upgrade that adds a storage method (or a call of the cache on its backend)
    fails here until :class:`WrappedStorage` wraps it in its class body."""
    needed = storage_methods()
    assert {"get_trial", "record_heartbeat", "_get_trials", "_create_new_trial", "upgrade"} <= needed
    missing = sorted(n for n in needed if n not in vars(WrappedStorage))
    assert missing == []
    assert issubclass(PatientStorage, BaseStorage) and issubclass(PatientStorage, BaseHeartbeat)


def test_every_wrapped_call_goes_through_guard(tmp_path):
    """Each database call of the wrapper passes through ``guard`` (what a patient storage retries)."""
    calls: list[str] = []

    class Counting(WrappedStorage):
        def guard(self, what, attempt):
            calls.append(what)
            return attempt()

    storage = optuna_seam.with_cache(Counting(RDBStorage(f"sqlite:///{tmp_path}/s.db", heartbeat_interval=1)))
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    storage.record_heartbeat(optuna_seam.trial_id_of(trial))
    study.tell(trial, 0.5)
    assert optuna_seam.stale_trial_ids(storage, optuna_seam.study_id_of(study)) == []
    assert study.best_value == 0.5
    for what in ("create_new_study", "create_new_trial", "set_trial_param", "record_heartbeat",
                 "set_trial_state_values", "the stale-trial check", "get_all_trials"):
        assert what in calls


def test_make_storage_puts_a_patient_server_storage_under_optunas_cache():
    storage = make_storage("postgresql+psycopg://postgres@127.0.0.1:5432/test")
    try:
        assert isinstance(storage, _CachedStorage)
        assert isinstance(optuna_seam.unwrap_cache(storage), PatientStorage)
        assert isinstance(optuna_seam.rdb_of(storage), RDBStorage)
        assert optuna_seam.heartbeat_interval(storage) and optuna_seam.grace_period(storage)
    finally:
        rdb = optuna_seam.rdb_of(storage)
        assert rdb is not None
        rdb.engine.dispose()


# --------------------------------------------------------------------------- Optuna 5's API (item 6)

def test_a_constrained_study_runs_without_a_future_warning(tmp_path):
    """Under ``search.max_train_gflops`` each trial sets its constraint through
    ``Trial.set_constraint`` (no sampler gets the deprecated ``constraints_func=``): a run under
    ``python -W error::FutureWarning`` ends 0 with every trial complete and its constraint set."""
    spec = quick_spec(tmp_path / "c.yaml", max_train_gflops=1e-9, n_trials=2)
    url, name = f"sqlite:///{tmp_path}/c.db", study_name()
    cmd = run_cmd(spec, url, name, 2)
    proc = start([cmd[0], "-W", "error::FutureWarning", *cmd[1:]], tmp_path, PYTHONWARNINGS="error::FutureWarning")
    code, out, err = finish(proc)
    assert code == 0, out + err
    assert "FutureWarning" not in out + err
    done = trials(url, name)
    assert [t.state for t in done] == [TrialState.COMPLETE] * 2
    for t in done:  # over the cap: infeasible, as the samplers see it
        assert set(t.constraints) == {TRAIN_GFLOPS_CONSTRAINT}
        assert t.constraints[TRAIN_GFLOPS_CONSTRAINT] == pytest.approx(t.user_attrs["train_gflops"] - 1e-9)


@pytest.mark.parametrize("sampler", ["tpe", "gp", "nsga2", "random"])
def test_no_sampler_gets_a_deprecated_argument(tmp_path, sampler):
    spec = load_spec(quick_spec(tmp_path / "c.yaml", max_train_gflops=1.0, sampler=sampler))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        make_sampler(spec, seed=0)
