"""``bkdsearch validate`` without torch: the stored atom table matches the zoo, the torch-free
checks give the runtime's verdicts and messages, partition problems come with the schema's
errors in one pass, and validating the ready specs never imports torch."""

from __future__ import annotations

import copy
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import TINY_SPEC, write_spec
from pydantic import TypeAdapter

from bkdsearch.core.engine.data import input_size_of
from bkdsearch.core.engine.models import create_model, list_models
from bkdsearch.core.recipe.cuts import Cuts
from bkdsearch.core.recipe.data import SyntheticConfig
from bkdsearch.core.recipe.partitions import Partition, build_partition
from bkdsearch.core.recipe.stones import SteppingStones, make_connector
from bkdsearch.core.recipe.zoo import atom_shapes
from bkdsearch.errors import PartitionError
from bkdsearch.spec import SpecError, load_spec, parse_spec
from bkdsearch.spec import atom_table as table_module
from bkdsearch.spec.atom_table import (
    CIFAR_SIZE,
    REGENERATE,
    arch_facts,
    atoms,
    measure,
    measured_synthetic_defaults,
    model_input_size,
    render,
    size_key,
    stored_table,
)
from bkdsearch.spec.checks import _connector_problem, check_stones, synthetic_problem
from bkdsearch.spec.config import DataConfig
from bkdsearch.spec.resolution import candidate_partition
from bkdsearch.spec.schema import PartitionSpec

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
CANDIDATE = TypeAdapter(PartitionSpec)
STALE = f"the stored atom table is stale: run `{REGENERATE}` and keep bkdsearch/spec/atom_table.json"


# --------------------------------------------------------------------------- the table is the zoo's


@pytest.mark.parametrize("arch", list_models())
def test_the_stored_atoms_are_the_model_s(arch):
    assert stored_table()["models"].get(arch) == measure(arch), f"{arch}: {STALE}"


def test_the_table_lists_every_registered_model_and_the_synthetic_defaults():
    assert sorted(stored_table()["models"]) == list_models(), STALE
    assert stored_table()["synthetic_defaults"] == measured_synthetic_defaults(), STALE


def test_the_stored_file_is_rendered_json_of_the_table():
    assert json.loads(render(stored_table())) == stored_table()


def test_an_untabulated_input_size_or_model_is_measured_on_the_model(monkeypatch):
    size = (3, 64, 64)
    assert size_key(size) not in stored_table()["models"]["resnet18"]["atoms"]
    assert atoms("resnet18", size) == tuple(atom_shapes(create_model("resnet18", num_classes=10), size))
    without = {**stored_table(), "models": {k: v for k, v in stored_table()["models"].items() if k != "resnet8"}}
    monkeypatch.setattr(table_module, "stored_table", lambda: without)
    table_module._atoms.cache_clear()
    try:
        assert atoms("resnet8", CIFAR_SIZE) == tuple(atom_shapes(create_model("resnet8", num_classes=10), CIFAR_SIZE))
        assert arch_facts("resnet8") == ("cifar", CIFAR_SIZE)
    finally:
        table_module._atoms.cache_clear()


def test_generators_on_the_table_give_the_published_cuts():
    assert candidate_partition("resnet110", "resnet32", "stage_aligned", CIFAR_SIZE) == Cuts(
        ("layer1.17", "layer2.17"), ("layer1.4", "layer2.4"))
    with pytest.raises(PartitionError, match="resnet8 -> resnet110: a stage of 1 atoms cannot be cut into 2"):
        candidate_partition("resnet8", "resnet110", CANDIDATE.validate_python({"per_stage": 2}), CIFAR_SIZE)


# --------------------------------------------------------------------------- torch-free = runtime


_DATA = [
    *(load_spec(path).data for path in SPECS),
    DataConfig(dataset="synthetic", synthetic={"channels": 1, "image_size": 16}),
    DataConfig(dataset="synthetic", synthetic={"image_size": 64}),
    DataConfig(dataset="synthetic"),
    DataConfig(dataset="fashion_mnist"),
    DataConfig(dataset="imagefolder", root="/data"),
    SimpleNamespace(dataset="imagefolder", synthetic=None, image_size=160),
]


@pytest.mark.parametrize("data", _DATA, ids=lambda d: f"{d.dataset}-{getattr(d, 'synthetic', None)}")
def test_the_input_size_is_the_data_module_s(data):
    assert model_input_size(data) == input_size_of(data)


_SYNTHETIC_PROBES = {
    "num_classes": [1, 2], "image_size": [7, 8], "channels": [1, 2, 3], "train_size": [0, 1], "test_size": [0],
    "modes_per_class": [0, 1], "group_size": [0, 1, 10, 11], "sibling_gap": [-0.1, 0.0, 1.0, 1.1],
    "mix": [-0.1, 0.0, 0.99, 1.0], "class_tint": [-0.1, 0.0], "label_noise": [-0.01, 0.0, 0.99, 1.0],
    "clutter": [-1.0, 0.0], "pixel_noise": [-1.0, 0.0], "max_shift": [-0.1, 0.5, 0.6],
    "max_rotation": [-1.0, 180.0, 181.0],
}


def _synthetic_cases() -> list[dict]:
    cases = [{key: value} for key, values in _SYNTHETIC_PROBES.items() for value in values]
    return [*cases, {}, {"num_classes": 3, "group_size": 4}, {"mix": 1.0, "max_shift": 0.9}]


@pytest.mark.parametrize("options", _synthetic_cases(), ids=str)
def test_synthetic_options_are_refused_as_the_synthetic_config_refuses_them(options):
    try:
        SyntheticConfig.from_dict(options)
        expected = None
    except ValueError as exc:
        expected = str(exc)
    assert synthetic_problem(options) == expected


@pytest.mark.parametrize("kind", ["conv1x1", "conv3x3", "identity"])
def test_connector_refusals_are_make_connector_s(kind):
    shapes = [(16, 32, 32), (32, 32, 32), (16, 16, 16), (64, 8, 8), (16, 7, 7), (16, 32, 16)]
    for src, dst in itertools.product(shapes, repeat=2):
        try:
            make_connector(kind, src, dst)
            expected = None
        except PartitionError as exc:
            expected = str(exc)
        assert _connector_problem(kind, src, dst) == expected, (src, dst)


_PAIRS = {
    ("resnet56", "resnet20"): ["stage_aligned", {"uniform": 4}, {"per_stage": 2},
                               {"teacher": ["nope", "layer2.8"], "student": ["layer1.2", "layer2.2"]},
                               {"teacher": ["layer1.8", "layer2.8"], "student": ["layer2.2", "layer1.2"]},
                               {"teacher": ["layer1.8", "layer3.8"], "student": ["layer1.2", "layer2.2"]},
                               {"teacher": ["layer1.8", "layer2.8"], "student": ["layer1.2", "nope"]},
                               {"teacher": ["layer1.0"], "student": ["layer3.1"]}],
    ("resnet32x4", "ShuffleV2"): ["stage_aligned", {"uniform": 4}, {"teacher": ["stem"], "student": ["stem"]}],
    ("vgg13", "vgg8"): ["stage_aligned", {"uniform": 3}],
    ("wrn_40_2", "wrn_16_2"): [{"per_stage": 2}],
    ("resnet34", "resnet18"): ["stage_aligned", {"teacher": ["layer1.2"], "student": ["layer3.1"]}],
    ("resnet14", "MobileNetV2"): ["stage_aligned", {"uniform": 3}],
}


def _verdict(build, *args, **kwargs) -> str | None:
    """The message of the PartitionError ``build(*args, **kwargs)`` raises; None if none."""
    try:
        build(*args, **kwargs)
    except PartitionError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("pair", list(_PAIRS), ids="->".join)
def test_stone_checks_give_the_stepping_stones_verdicts(pair):
    t_arch, s_arch = pair
    teacher, student = create_model(t_arch, num_classes=10), create_model(s_arch, num_classes=10)
    t_atoms, s_atoms = atoms(t_arch, CIFAR_SIZE), atoms(s_arch, CIFAR_SIZE)
    refused = set()
    for candidate in _PAIRS[pair]:
        part = build_partition(teacher, student, candidate, CIFAR_SIZE)
        cuts = candidate_partition(t_arch, s_arch, CANDIDATE.validate_python(candidate), CIFAR_SIZE)
        assert Partition(*cuts) == part
        for order, connector, active in itertools.product(
                ["shallow_first", "deep_first"], ["conv1x1", "identity"], [None, [1], [part.num_blocks]]):
            settings = {"order": order, "connector": connector, "active": active}
            expected = _verdict(SteppingStones, teacher, student, part, input_size=CIFAR_SIZE, **settings)
            got = _verdict(check_stones, t_atoms, s_atoms, cuts, **settings)
            assert got == expected, (candidate, order, connector, active)
            refused.add(expected is not None)
    assert refused == {True, False}, "every pair should show both verdicts"


# --------------------------------------------------------------------------- one pass, no torch


def _errors(spec: dict) -> list[tuple[str, str, int | None]]:
    with pytest.raises(SpecError) as info:
        parse_spec(yaml.safe_dump(spec, sort_keys=False))
    return info.value.errors


def _with_bad_partition_and_lr() -> dict:
    spec = copy.deepcopy(TINY_SPEC)
    spec["train"]["lr"] = {"float": [0.2, 0.1]}
    spec["partitions"] = {"stage": {"teacher": ["layer1.1"], "student": ["layer7.0"]}}
    return spec


def test_partition_problems_come_with_the_schema_errors_elsewhere():
    errors = _errors(_with_bad_partition_and_lr())
    paths = {path: (message, line) for path, message, line in errors}
    assert set(paths) == {"train.lr", "partitions.stage"}
    assert "low < high" in paths["train.lr"][0]
    assert paths["partitions.stage"][0].startswith("student has no atom 'layer7.0'; its atoms are stem, layer1.0")
    assert paths["partitions.stage"][1] is not None


def test_stone_and_model_problems_come_with_the_schema_errors_once_each():
    spec = copy.deepcopy(TINY_SPEC)
    spec["search"] = {"n_trials": 0}
    spec["blockkd"] = {"stones": [7]}
    errors = _errors(spec)
    assert [path for path, _, _ in errors] == ["search.n_trials", "partitions.stage"]
    assert "stones [7] do not exist for shallow_first with 3 blocks" in errors[1][1]
    spec["student"]["arch"] = "resnet9000"
    errors = _errors(spec)
    assert [path for path, _, _ in errors] == ["search.n_trials", "student.arch"]


def test_a_broken_checked_section_skips_the_partition_checks():
    spec = _with_bad_partition_and_lr()
    spec["blockkd"] = {"tau": -1.0}
    assert {path for path, _, _ in _errors(spec)} == {"train.lr", "blockkd.tau"}


def test_validate_reports_both_in_one_run_without_torch(tmp_path):
    bad = write_spec(tmp_path / "bad.yaml", _with_bad_partition_and_lr())
    code = ("import sys\nfrom bkdsearch.cli import main\n"
            "for path in sys.argv[1:]:\n"
            "    try:\n"
            "        main(['validate', path], standalone_mode=False)\n"
            "    except SystemExit as exc:\n"
            "        assert path.endswith('bad.yaml') and exc.code == 2, (path, exc.code)\n"
            "assert 'torch' not in sys.modules, 'validate imported torch'\n")
    r = subprocess.run([sys.executable, "-c", code, *map(str, SPECS), bad], capture_output=True, text=True,
                       env={**ENV, "COLUMNS": "200"}, timeout=120, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines().count("ok") == len(SPECS), r.stdout
    assert "train.lr" in r.stderr and "partitions.stage" in r.stderr and "2 error(s) in" in r.stderr, r.stderr
