"""One study, one configuration (issue 25.1): the first worker records the study's fixed
configuration (the spec after ``--set``, searched values and runtime settings aside); a worker
with another one is refused with exit 2 before any trial, naming each differing key with
both values, unless it says ``--allow-different-spec`` (then status and report flag the study
as mixed); the "next command" lines of ``run`` repeat the ``--set`` values."""

from __future__ import annotations

import copy
import json
import shlex

import optuna
import pytest
from click.testing import CliRunner
from conftest import write_spec

from bkdsearch.cli import main
from bkdsearch.errors import ConfigMismatch
from bkdsearch.search.study import open_study
from bkdsearch.spec import Spec
from bkdsearch.spec.fixed import SEARCHED, config_digest, fixed_configuration

# Method ce (no teacher to train), a small synthetic set: a trial takes about a second on a CPU.
CE_SPEC = {
    "name": "cfg",
    "seed": 0,
    "data": {"dataset": "synthetic", "val_fraction": 0.2, "batch_size": 64,
             "synthetic": {"num_classes": 4, "train_size": 256, "test_size": 64}},
    "student": {"arch": "resnet8"},
    "method": "ce",
    "train": {"epochs": 2, "lr": {"float": [0.01, 0.1], "log": True}, "schedule": "cosine"},
    "runtime": {"device": "cpu"},
}


def _spec(**changes) -> Spec:
    """CE_SPEC with dotted ``changes`` (``data__batch_size=32``)."""
    data = copy.deepcopy(CE_SPEC)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return Spec.model_validate(data)


def test_the_fixed_configuration_leaves_out_runtime_settings_and_marks_searched_values():
    base = fixed_configuration(_spec())
    assert base["train.lr"] == SEARCHED and base["data.batch_size"] == 64 and base["train.epochs"] == 2
    same = [_spec(runtime__device="auto"), _spec(storage="sqlite:///elsewhere.db"), _spec(name="other"),
            _spec(data__root="/mnt/data"), _spec(data__num_workers=4), _spec(search__n_trials=99),
            _spec(search__timeout=60.0), _spec(train__lr={"float": [0.001, 0.5]})]
    for spec in same:
        assert config_digest(fixed_configuration(spec)) == config_digest(base), spec
    different = [_spec(data__batch_size=32), _spec(train__epochs=1), _spec(data__train_fraction=0.4),
                 _spec(train__lr=0.05), _spec(seed=1), _spec(data__synthetic__num_classes=5),
                 _spec(search__fidelity={"epochs": 1})]
    digests = {config_digest(fixed_configuration(spec)) for spec in different}
    assert len(digests) == len(different) and config_digest(base) not in digests


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path, db_url):
    """A fresh storage: a SQLite file, or a database on the real PostgreSQL server."""
    return f"sqlite:///{tmp_path / 'studies' / 'cfg.db'}" if request.param == "sqlite" else db_url("postgresql")


def test_a_worker_with_another_configuration_is_refused_and_writes_nothing(storage_url):
    first = open_study(_spec(data__batch_size=32, train__epochs=1), storage_url, "m")
    recorded = dict(first.user_attrs)
    assert recorded["fixed_config"]["data.batch_size"] == 32
    assert recorded["fixed_config_digest"] == config_digest(recorded["fixed_config"])

    with pytest.raises(ConfigMismatch) as info:
        open_study(_spec(), storage_url, "m")
    message = str(info.value)
    assert "data.batch_size: 32 -> 64" in message and "train.epochs: 1 -> 2" in message
    assert "--set data.batch_size=32 --set train.epochs=1" in message and "--allow-different-spec" in message
    study = optuna.load_study(study_name="m", storage=storage_url)
    assert study.user_attrs == recorded and study.get_trials() == []  # nothing written

    # Runtime settings are no difference: the same configuration on another device joins.
    open_study(_spec(data__batch_size=32, train__epochs=1, runtime__device="auto"), storage_url, "m")
    # --allow-different-spec joins, and the study records that it is mixed.
    mixed = open_study(_spec(), storage_url, "m", allow_different_spec=True)
    assert sorted(mixed.user_attrs["mixed_configs"]) == sorted(
        [recorded["fixed_config_digest"], config_digest(fixed_configuration(_spec()))])


def _run(*args: str):
    return CliRunner().invoke(main, ["run", "s.yaml", "--quiet", "--devices", "cpu", *args])


def _to_train_more(stdout: str) -> list[str]:
    """The arguments of the "to train more" command the summary printed (``run`` and after)."""
    lines = stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("to train more"))
    words = shlex.split(lines[at + 1])
    return words[words.index("run"):]  # past the words that start the tool (summary.program)


def test_the_issue_scenario_run_with_set_then_without_is_refused_naming_the_keys(tmp_path, monkeypatch,
                                                                                    storage_url):
    monkeypatch.chdir(tmp_path)
    write_spec(tmp_path / "s.yaml", CE_SPEC)
    sets = ["--set", "train.epochs=1", "--set", "data.train_fraction=0.4", "--set", "data.batch_size=32"]
    first = _run("--storage", storage_url, "--study", "m", "--n-trials", "1", *sets)
    assert first.exit_code == 0, first.output
    again = _to_train_more(first.stdout)
    assert " ".join(sets) in " ".join(again)  # the printed command repeats every --set

    refused = _run("--storage", storage_url, "--study", "m", "--n-trials", "2")
    assert refused.exit_code == 2, refused.output
    assert "Traceback" not in refused.output
    for line in ("data.batch_size: 32 -> 64", "data.train_fraction: 0.4 -> 1.0", "train.epochs: 1 -> 2"):
        assert line in refused.stderr
    study = optuna.load_study(study_name="m", storage=storage_url)
    assert len(study.get_trials()) == 1  # no trial was written

    result = CliRunner().invoke(main, [*again, "--quiet", "--devices", "cpu"])
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="m", storage=storage_url).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert {t.user_attrs["run_config"]["data"]["batch_size"] for t in trials} == {32}
    assert len({t.user_attrs["config_digest"] for t in trials}) == 1

    status = CliRunner().invoke(main, ["status", "--storage", storage_url, "--study", "m", "--json"])
    assert json.loads(status.stdout)[0]["mixed"] == []
    mixed = _run("--storage", storage_url, "--study", "m", "--n-trials", "3", "--allow-different-spec")
    assert mixed.exit_code == 0, mixed.output
    assert "--allow-different-spec" in " ".join(_to_train_more(mixed.stdout))
    assert "the study is mixed" in mixed.stdout
    rows = json.loads(CliRunner().invoke(main, ["status", "--storage", storage_url, "--study", "m",
                                                "--json"]).stdout)
    assert len(rows[0]["mixed"]) == 2
    shown = CliRunner().invoke(main, ["status", "--storage", storage_url, "--study", "m"])
    assert "MIXED" in shown.stdout
    report = CliRunner().invoke(main, ["report", "--storage", storage_url, "--study", "m", "-o", "rep"])
    assert report.exit_code == 0, report.output
    assert "MIXED" in (tmp_path / "rep" / "summary.md").read_text()


def test_a_study_made_before_configurations_were_recorded_takes_the_first_joining_workers(tmp_path):
    """An older study (no fixed_config attr, trials already there): the first worker to join
    records its configuration, which binds the next ones."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = optuna.create_study(storage=url, study_name="old", direction="maximize")
    old.tell(old.ask(), 50.0)
    joined = open_study(_spec(train__epochs=1), url, "old")
    assert joined.user_attrs["fixed_config"]["train.epochs"] == 1
    with pytest.raises(ConfigMismatch, match="train.epochs: 1 -> 2"):
        open_study(_spec(), url, "old")
