"""Issue 25.3, 25.4 and 25.8: every size is bounded before anything is allocated (the limit in
the schema and in the message); bad input is exit 2 before any trial whichever way it
arrives (spec file, --set, environment, options, the enqueue list); odd checkpoint paths are
named for what they are."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_SPEC, write_spec

from bkdsearch.cli import main
from bkdsearch.cli.workers import fixed_spec
from bkdsearch.preflight import PreflightError, parse_devices, preflight
from bkdsearch.spec import Spec, SpecError, load_spec, parse_spec, spec_json_schema
from bkdsearch.spec.resolution import override_spec
from bkdsearch.zoo import create_model

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

# Method ce on a small synthetic set: preflight builds it in a fraction of a second.
CE = {
    "name": "lim",
    "data": {"dataset": "synthetic", "val_fraction": 0.2, "batch_size": 32,
             "synthetic": {"num_classes": 4, "train_size": 200, "test_size": 40}},
    "student": {"arch": "resnet8"},
    "method": "ce",
    "train": {"epochs": 1, "lr": {"float": [0.01, 0.2], "log": True}},
    "runtime": {"device": "cpu"},
}


def _with(base: dict, path: str, value) -> dict:
    spec = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return spec


def _errors(data: dict) -> str:
    import yaml

    with pytest.raises(SpecError) as info:
        parse_spec(yaml.safe_dump(data))
    return str(info.value)


def _cli(*args: str, env: dict | None = None):
    return CliRunner(env=env).invoke(main, list(args))


# --------------------------------------------------------------------------- 25.3 every size bounded

# (path, the issue's or a typo's value, the limit the message names)
OVER_THE_LIMIT = [
    ("data.synthetic.num_classes", 1_000_000_000, "1000"),
    ("data.synthetic.train_size", 10**12, "200000"),
    ("data.synthetic.test_size", 10**9, "200000"),
    ("data.synthetic.image_size", 100_000, "256"),
    ("data.synthetic.modes_per_class", 10**6, "64"),
    ("data.batch_size", 10**9, "16384"),
    ("data.eval_batch_size", 10**9, "16384"),
    ("data.num_workers", 10**6, "256"),
    ("data.image_size", 10**6, "1024"),
    ("train.epochs", 10**9, "5000"),
    ("train.epochs", {"int": [1, 10**9]}, "5000"),
    ("train.warmup_epochs", 10**7, "5000"),
    ("train.lr", 1e308, "10"),
    ("train.lr", {"float": [0.01, 1e308]}, "10"),
    ("train.weight_decay", 1e9, "1"),
    ("blockkd.tau", 1e9, "100"),
    ("blockkd.beta", 1e300, "1000"),
    ("blockkd.dkd_warmup", 10**9, "5000"),
    ("search.n_trials", 10**12, "100000"),
    ("search.timeout", 1e300, "31536000"),
    ("search.fidelity", {"epochs": 10**9}, "5000"),
]


@pytest.mark.parametrize(("path", "value", "limit"), OVER_THE_LIMIT, ids=[f"{p}={v}" for p, v, _ in OVER_THE_LIMIT])
def test_sizes_over_their_limit_are_refused_naming_field_and_limit(path, value, limit):
    message = _errors(_with(CE, path, value))
    assert f"{path}" in message and limit in message.replace(",", ""), message


def test_the_teachers_recipe_is_bounded_too():
    spec = _with(TINY_SPEC, "teacher.recipe.epochs", 10**9)
    assert "teacher.recipe.epochs" in _errors(spec) and "5000" in _errors(spec)


def test_a_synthetic_set_too_large_as_a_whole_is_refused():
    spec = _with(CE, "data.synthetic", {"train_size": 200_000, "test_size": 200_000, "image_size": 256})
    message = _errors(spec)
    assert "data.synthetic" in message and "536,870,912" in message


def test_the_schema_states_the_limits():
    defs = spec_json_schema()["$defs"]
    assert defs["DataConfig"]["properties"]["batch_size"]["maximum"] == 16384
    assert defs["SearchSettings"]["properties"]["n_trials"]["maximum"] == 100_000
    assert defs["Recipe"]["properties"]["epochs"]["maximum"] == 5000
    timeout = defs["SearchSettings"]["properties"]["timeout"]
    assert any(option.get("maximum") == 365 * 24 * 3600 for option in timeout["anyOf"])


def test_a_huge_device_range_is_refused_without_listing_it():
    with pytest.raises(PreflightError, match="limit of a GPU index") as info:
        parse_devices("0-9999999")
    assert "1023" in str(info.value)
    with pytest.raises(PreflightError, match="over the limit"):
        parse_devices("99999")


@pytest.mark.parametrize("args", [("--devices", "0-9999999"), ("--n-trials", "1000000000000"),
                                  ("--timeout", "nan"), ("--timeout", "inf"), ("--timeout", "1e300"),
                                  ("--timeout", "-5")])
def test_run_options_over_their_limit_exit_2_before_any_study(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    write_spec(tmp_path / "s.yaml", CE)
    result = _cli("run", "s.yaml", "--quiet", *args)
    assert result.exit_code == 2, result.output
    assert args[0] in result.output and "Traceback" not in result.output
    assert not (tmp_path / "studies").exists()


# --------------------------------------------------------------------------- 25.4 bad input: exit 2, no trial


def test_set_goes_through_the_same_validation_as_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_spec(tmp_path / "s.yaml", CE)
    for command in ("run", "train", "flops"):
        result = _cli(command, "s.yaml", "--set", "student.arch=resnet9999")
        assert result.exit_code == 2, (command, result.output)
        assert "student.arch: unknown model 'resnet9999'" in result.output
    result = _cli("run", "s.yaml", "--set", "data.synthetic.num_classes=1000000000")
    assert result.exit_code == 2 and "data.synthetic.num_classes" in result.output
    assert not (tmp_path / "studies").exists()


def test_teacher_recipe_keys_are_set_like_any_other():
    spec = Spec.model_validate(TINY_SPEC)
    fixed = override_spec(spec, {"teacher.recipe.epochs": 1})
    assert fixed.teacher.recipe.epochs == 1 and fixed.teacher.recipe.lr == 0.1  # the spec's own lr kept
    bare = Spec.model_validate({**TINY_SPEC, "teacher": {"arch": "resnet14"}})
    fixed = override_spec(bare, {"teacher.recipe.epochs": 2, "teacher.recipe.schedule": "multistep"})
    recipe = fixed.teacher.recipe
    assert (recipe.epochs, recipe.lr, recipe.schedule) == (2, 0.05, "multistep")  # from the default recipe
    assert bare.teacher.recipe is None  # the spec itself is left as it was
    with pytest.raises(SpecError, match="teacher.recipe.epochs"):
        override_spec(spec, {"teacher.recipe.epochs": 0})
    # run --set takes them (they are no searched parameter), and the teacher command too.
    assert fixed_spec(spec, ("teacher.recipe.epochs=1",)).teacher.recipe.epochs == 1


def test_the_teacher_command_takes_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_spec(tmp_path / "s.yaml", TINY_SPEC)
    result = _cli("teacher", "s.yaml", "--set", "teacher.recipe.epochs=0")
    assert result.exit_code == 2 and "teacher.recipe.epochs" in result.output, result.output


def test_a_train_fraction_that_keeps_no_batch_names_its_own_field():
    spec = Spec.model_validate(_with(CE, "data.train_fraction", 1e-9))
    with pytest.raises(PreflightError) as info:
        preflight(spec, devices={}, search=True)
    fields = [field for field, _ in info.value.problems]
    assert fields == ["data.train_fraction"], info.value.problems
    assert "val_fraction" not in str(info.value)
    fidelity = Spec.model_validate(_with(CE, "search.fidelity", {"train_fraction": 0.01}))
    with pytest.raises(PreflightError, match="search.fidelity.train_fraction: 0.01 keeps 2 of the 160"):
        preflight(fidelity, devices={}, search=True)


ENQUEUE = {**CE, "method": "blockkd", "teacher": {"arch": "resnet32"}, "student": {"arch": "resnet20"},
           "blockkd": {"partition": {"choice": ["stage", "fine"]}, "tau": {"choice": [2, 4]},
                       "decay": {"float": [0.25, 1.0]}, "dkd_warmup": {"int": [0, 10], "step": 5}},
           "partitions": {"stage": "stage_aligned", "fine": {"per_stage": 2}}}


@pytest.mark.parametrize(("entry", "path", "message"), [
    ({"train.lr": 99}, "search.enqueue[0].train.lr", "99 is outside the searched range [0.01, 0.2]"),
    ({"train.lrr": 0.1}, "search.enqueue[0].train.lrr", "is no parameter"),
    ({"train.epochs": 3}, "search.enqueue[0].train.epochs", "is fixed by the spec, not searched"),
    ({"blockkd.partition": "coarse"}, "search.enqueue[0].blockkd.partition", "'coarse' is not one of the choices"),
    ({"blockkd.tau": 3}, "search.enqueue[0].blockkd.tau", "3 is not one of the choices [2, 4]"),
    ({"blockkd.dkd_warmup": 3}, "search.enqueue[0].blockkd.dkd_warmup", "not on the searched grid"),
    ({"blockkd.decay": "high"}, "search.enqueue[0].blockkd.decay", "is not a number"),
])
def test_enqueued_configurations_are_checked_against_the_search_space(entry, path, message):
    text = _errors(_with(ENQUEUE, "search.enqueue", [entry]))
    assert f"{path}: " in text and message in text, text


def test_valid_enqueued_configurations_pass():
    entries = [{"train.lr": 0.05, "blockkd.partition": "fine", "blockkd.tau": 4, "blockkd.dkd_warmup": 5},
               {"blockkd.decay": 0.5}]
    import yaml

    assert parse_spec(yaml.safe_dump(_with(ENQUEUE, "search.enqueue", entries))).search.enqueue == entries


def _teacher_spec(tmp_path: Path, checkpoint: str) -> Spec:
    return Spec.model_validate({**TINY_SPEC, "teacher": {"arch": "resnet14", "checkpoint": checkpoint}})


def test_a_teacher_with_nan_weights_is_refused_at_preflight(tmp_path):
    model = create_model("resnet14", num_classes=10)
    state = model.state_dict()
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = torch.full_like(state[first], float("nan"))
    torch.save({"model": state}, tmp_path / "nan.pt")
    with pytest.raises(PreflightError) as info:
        preflight(_teacher_spec(tmp_path, str(tmp_path / "nan.pt")), devices={}, search=True)
    assert info.value.problems[0][0] == "teacher.checkpoint"
    assert "non-finite weights" in str(info.value) and first in str(info.value)


@pytest.mark.parametrize("kind", ["directory", "fifo", "loop"])
def test_a_checkpoint_path_that_is_no_file_is_named_for_what_it_is(tmp_path, kind):
    path = tmp_path / "t.pt"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(tmp_path / "u.pt")
        (tmp_path / "u.pt").symlink_to(path)
    with pytest.raises(PreflightError) as info:
        preflight(_teacher_spec(tmp_path, str(path)), devices={}, search=True)
    expected = {"directory": "is a directory", "fifo": "is a FIFO", "loop": "is a symbolic link loop"}[kind]
    assert expected in str(info.value) and "not found" not in str(info.value)


@pytest.mark.parametrize("url", ["sqlite:///", "sqlite:///:memory:", "sqlite://"])
@pytest.mark.parametrize("command", ["run", "status"])
def test_sqlite_urls_without_a_file_exit_2(tmp_path, monkeypatch, url, command):
    monkeypatch.chdir(tmp_path)
    write_spec(tmp_path / "s.yaml", CE)
    result = _cli(command, "s.yaml", "--storage", url)
    assert result.exit_code == 2, result.output
    assert "give a file: sqlite:///studies/x.db" in result.output
    assert not (tmp_path / "studies").exists()
    assert "give a file" in _errors({**CE, "storage": url})


def test_an_unknown_mysql_charset_is_a_clear_refusal(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_spec(tmp_path / "s.yaml", CE)
    result = _cli("status", "--storage", "mysql+pymysql://root:pw@127.0.0.1:3306/test?charset=bogus")
    assert result.exit_code == 2, result.output
    assert "unknown charset 'bogus'" in result.output and "NoneType" not in result.output


def test_odd_digits_and_empty_lists_of_options_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_spec(tmp_path / "s.yaml", CE)
    result = _cli("export", "s.yaml", "--trial", "²", "-o", "x.py")
    assert result.exit_code == 2 and "best or a trial number" in result.output
    for methods in ("", " , ", "ce,bogus", "ce,ce"):
        result = _cli("compare", "s.yaml", "--methods", methods)
        assert result.exit_code == 2 and "--methods" in result.output, (methods, result.output)


@pytest.mark.parametrize(("name", "value"), [
    ("BKDSEARCH_KEEP_CHECKPOINTS", "²"), ("BKDSEARCH_KEEP_CHECKPOINTS", "-1"),
    ("BKDSEARCH_COLLECTIVE_TIMEOUT_S", "-1"), ("BKDSEARCH_COLLECTIVE_TIMEOUT_S", "abc"),
    ("BKDSEARCH_COLLECTIVE_TIMEOUT_S", "nan"), ("BKDSEARCH_HEARTBEAT_S", "inf"),
])
def test_bad_environment_settings_exit_2_before_any_study(tmp_path, monkeypatch, name, value):
    monkeypatch.chdir(tmp_path)
    write_spec(tmp_path / "s.yaml", CE)
    result = _cli("run", "s.yaml", "--quiet", "--devices", "cpu", env={name: value})
    assert result.exit_code == 2, result.output
    assert f"{name}=" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "studies" / "lim.db").exists()


# --------------------------------------------------------------------------- 25.8 run fails as fast as validate


def test_run_with_a_bad_spec_or_option_imports_no_torch(tmp_path):
    """What makes `run` slow to refuse (seconds of imports) is never loaded for bad input."""
    write_spec(tmp_path / "bad.yaml", _with(CE, "data.synthetic.num_classes", 10**9))
    write_spec(tmp_path / "s.yaml", CE)
    probe = ("import sys\nfrom bkdsearch.cli import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
             "print('exit', code, 'torch' in sys.modules, 'optuna' in sys.modules)\n")
    for args in (["run", "bad.yaml"], ["run", "s.yaml", "--devices", "0-9999999"],
                 ["run", "s.yaml", "--storage", "sqlite:///"], ["run", "s.yaml", "--set", "student.arch=x"]):
        r = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, env=ENV,
                           cwd=tmp_path, timeout=120)
        assert r.stdout.strip().splitlines()[-1] == "exit 2 False False", (args, r.stdout, r.stderr)


def test_load_spec_of_the_issue_values_is_refused(tmp_path):
    """The issue's three host-exhausting specs, as files."""
    for path, value in (("data.synthetic.num_classes", 1_000_000_000), ("data.synthetic.train_size", 10**12)):
        with pytest.raises(SpecError, match=path.split(".")[-1]):
            load_spec(write_spec(tmp_path / "s.yaml", _with(CE, path, value)))
