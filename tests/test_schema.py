"""The spec's JSON Schema (``bkdsearch schema``, editor completion): every property described,
``arch`` an enum of the zoo's names, typed ``search.enqueue`` and ``data.synthetic``,
``$schema``/``$id``, the ready specs pointing at it; and reading the schema without torch."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TINY_SPEC

import bkdsearch.spec as spec_package
from bkdsearch.core.engine.models import list_models
from bkdsearch.core.recipe.data import SyntheticConfig
from bkdsearch.spec import Defaults, RunConfig, SpecError, parse_spec, resolve, spec_json_schema
from bkdsearch.spec.arch_names import ARCH_NAMES
from bkdsearch.spec.config import SYNTHETIC_OPTIONS
from bkdsearch.spec.schema import SCHEMA_DIALECT, SCHEMA_ID

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
MODELINE = "# yaml-language-server: $schema=../spec.schema.json"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _undescribed(node: Any, where: str = "#") -> list[str]:
    """The JSON pointer of every property (of every object schema, ``$defs`` included) without a
    non-empty ``description``."""
    missing: list[str] = []
    if isinstance(node, dict):
        for name, prop in (node.get("properties") or {}).items():
            if not (isinstance(prop, dict) and str(prop.get("description", "")).strip()):
                missing.append(f"{where}/properties/{name}")
        for key, value in node.items():
            missing += _undescribed(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            missing += _undescribed(value, f"{where}/{i}")
    return missing


def _errors(spec: dict) -> list[tuple[str, str, int | None]]:
    with pytest.raises(SpecError) as info:
        parse_spec(yaml.safe_dump(spec, sort_keys=False))
    return info.value.errors


def _with_synthetic(**options: Any) -> dict:
    spec = copy.deepcopy(TINY_SPEC)
    spec["data"]["synthetic"] = options
    return spec


# --------------------------------------------------------------------------- 1. descriptions


@pytest.mark.parametrize("schema", [spec_json_schema(), RunConfig.model_json_schema(by_alias=True)],
                         ids=["spec", "run_config"])
def test_every_property_of_every_model_has_a_description(schema):
    assert len(schema["$defs"]) >= 8  # the walk reaches the nested models
    missing = _undescribed(schema)
    assert not missing, "properties without a description:\n" + "\n".join(missing)


# --------------------------------------------------------------------------- 2. arch names


def test_the_static_arch_names_are_the_registry_s():
    assert tuple(list_models()) == ARCH_NAMES, "register a model: add its name to bkdsearch/spec/arch_names.py"


def test_arch_fields_are_an_enum_of_the_registered_names():
    defs = spec_json_schema()["$defs"]
    for model in ("ModelConfig", "TeacherSpec"):  # student.arch, teacher.arch
        arch = defs[model]["properties"]["arch"]
        assert arch["type"] == "string" and arch["enum"] == list(list_models()), model


def test_unknown_archs_keep_the_clear_message_listing_the_known_ones():
    spec = copy.deepcopy(TINY_SPEC)
    spec["student"]["arch"], spec["teacher"]["arch"] = "resnet9000", "vgg99"
    errors = {path: message for path, message, _ in _errors(spec)}
    assert set(errors) == {"student.arch", "teacher.arch"}  # both in one pass
    known = ", ".join(sorted(list_models()))
    assert errors["student.arch"] == f"unknown model 'resnet9000'; known: {known}"
    assert errors["teacher.arch"] == f"unknown model 'vgg99'; known: {known}"


# --------------------------------------------------------------------------- 3. typed enqueue and synthetic


def test_enqueue_is_a_list_of_mappings_to_scalars_in_the_schema():
    enqueue = spec_json_schema()["$defs"]["SearchSettings"]["properties"]["enqueue"]
    assert enqueue["type"] == "array" and enqueue["items"]["type"] == "object"
    kinds = [form["type"] for form in enqueue["items"]["additionalProperties"]["anyOf"]]
    assert sorted(kinds) == ["boolean", "integer", "number", "string"]


def test_enqueued_values_keep_their_type_and_non_scalars_are_refused():
    spec = copy.deepcopy(TINY_SPEC)
    # Each enqueued parameter is searched (issue 25.4: a fixed one is refused).
    spec["train"].update(lr={"float": [0.01, 0.2]}, epochs={"int": [1, 5]}, nesterov={"choice": [True, False]})
    spec["blockkd"] = {"stones": {"choice": ["all", [1, 2]]}}
    spec["search"] = {"enqueue": [{"train.lr": 0.1, "train.epochs": 3, "train.nesterov": True,
                                   "blockkd.stones": "1,2"}]}
    [given] = parse_spec(yaml.safe_dump(spec)).search.enqueue
    assert {k: type(v) for k, v in given.items()} == {"train.lr": float, "train.epochs": int,
                                                      "train.nesterov": bool, "blockkd.stones": str}
    spec["search"] = {"enqueue": [{"train.lr": 0.1, "blockkd.stones": [1, 2]}]}
    [(path, message, line)] = _errors(spec)
    assert path == "search.enqueue[0].blockkd.stones" and "expected" in message and line is not None


def test_synthetic_options_are_the_fields_of_synthetic_config():
    fields = {f.name: f for f in dataclasses.fields(SyntheticConfig)}
    assert tuple(fields) == SYNTHETIC_OPTIONS
    schema = spec_json_schema()
    ref = next(form["$ref"] for form in schema["$defs"]["DataConfig"]["properties"]["synthetic"]["anyOf"]
               if "$ref" in form)
    options = schema["$defs"][ref.rsplit("/", 1)[-1]]
    assert options["type"] == "object" and options["additionalProperties"] is False
    assert "required" not in options and list(options["properties"]) == list(fields)
    for name, field in fields.items():
        prop = options["properties"][name]
        assert prop["type"] == {"int": "integer", "float": "number"}[str(field.type)], name
        assert prop["description"].endswith(f"(default {field.default}).")  # the documented default is the real one


def test_unknown_synthetic_options_are_refused_naming_the_known_ones():
    errors = _errors(_with_synthetic(num_classes=10, n_classes=4, colour=1))
    [(path, message, line)] = errors
    assert path == "data.synthetic" and line is not None
    assert "['colour', 'n_classes']" in message and f"known: {', '.join(SYNTHETIC_OPTIONS)}" in message


@pytest.mark.parametrize("option, value", [("num_classes", 2.5), ("num_classes", True), ("train_size", "100"),
                                           ("image_size", 32.0), ("mix", "0.5"), ("mix", False),
                                           ("clutter", float("nan")), ("label_noise", [0.1])])
def test_synthetic_options_of_the_wrong_type_are_refused_naming_the_option(option, value):
    paths = [path for path, _, _ in _errors(_with_synthetic(**{option: value}))]
    assert paths == [f"data.synthetic.{option}"]


def test_synthetic_stays_a_plain_dict_with_the_values_as_given():
    options = {"num_classes": 10, "train_size": 1200, "test_size": 320, "mix": 0, "class_tint": 1, "clutter": 0.25}
    cfg = resolve(parse_spec(yaml.safe_dump(_with_synthetic(**options))), Defaults())
    assert type(cfg.data.synthetic) is dict and cfg.data.synthetic == options
    assert [type(v) for v in cfg.data.synthetic.values()] == [type(v) for v in options.values()]  # 0 stays an int
    assert RunConfig.model_validate_json(cfg.model_dump_json()).digest() == cfg.digest()
    assert SyntheticConfig.from_dict(cfg.data.synthetic).mix == 0


# --------------------------------------------------------------------------- 4. $schema, $id, the ready specs


def test_the_schema_names_its_dialect_and_id_first():
    schema = spec_json_schema()
    assert list(schema)[:2] == ["$schema", "$id"]
    assert schema["$schema"] == SCHEMA_DIALECT == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == SCHEMA_ID and SCHEMA_ID.startswith("https://")
    assert schema["additionalProperties"] is False and "student" in schema["properties"]
    json.dumps(schema)  # plain JSON


def test_bkdsearch_schema_prints_spec_json_schema():
    from click.testing import CliRunner

    from bkdsearch.cli import main

    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == spec_json_schema()


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_ready_spec_points_at_the_schema_and_validates(path):
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == MODELINE
    parse_spec(text, str(path))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_ready_spec_validates_against_the_json_schema(path):
    import jsonschema  # a dev dependency: this check always runs
    schema = spec_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(path.read_text(encoding="utf-8")))


# --------------------------------------------------------------------------- 5. no torch for the schema


@pytest.mark.parametrize("code", [
    "import bkdsearch.spec.schema",
    "from bkdsearch.spec import Spec, SpecError, RunConfig, load_spec, parse_overrides, spec_json_schema",
    "from bkdsearch.cli import main; main(['schema'], standalone_mode=False)",
], ids=["schema", "package", "cli-schema"])
def test_the_schema_and_spec_loading_do_not_import_torch(code):
    check = f"import sys; {code}; assert 'torch' not in sys.modules, 'torch was imported'"
    r = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=ENV, timeout=120,
                       cwd=ROOT, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr


def test_the_lazy_package_resolves_every_public_name_to_its_module_s_object():
    import importlib

    for name in spec_package.__all__:
        value = getattr(spec_package, name)
        module = importlib.import_module(spec_package._WHERE[name])
        assert value is getattr(module, name), name
    assert set(spec_package.__all__) == set(spec_package._WHERE)
    assert set(spec_package.__all__) <= set(dir(spec_package))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        spec_package.nope  # noqa: B018


def test_importing_the_resolution_module_first_does_not_shadow_the_resolve_function():
    # The checks import the submodule bkdsearch.spec.resolution; Python sets the package's
    # attribute of that name to it, which must never be a public name of the package.
    code = ("import sys, types, bkdsearch.spec.checks\nfrom bkdsearch.spec import resolve\n"
            "import bkdsearch.spec as package\n"
            "assert callable(resolve) and not isinstance(resolve, types.ModuleType), resolve\n"
            "assert resolve is sys.modules['bkdsearch.spec.resolution'].resolve\n"
            "assert type(package) is types.ModuleType\n"
            "assert not set(package.__all__) & {m.rsplit('.', 1)[1] for m in sys.modules\n"
            "                                    if m.startswith('bkdsearch.spec.')}")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120,
                       cwd=ROOT, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr


def test_validate_reports_an_unknown_model_with_the_other_errors_in_one_pass() -> None:
    from bkdsearch.errors import SpecError
    from bkdsearch.spec import parse_spec

    text = ("name: bad\ndata: {dataset: synthetic, batch_size: 0}\nstudent: {arch: resnet9000}\n"
            "teacher: {arch: resnet14}\ntrain: {epochs: 2}\n")
    try:
        parse_spec(text)
    except SpecError as exc:
        paths = {(path, line) for path, _, line in exc.errors}
    else:
        raise AssertionError("a bad spec was accepted")
    assert {("data.batch_size", 2), ("student.arch", 3)} <= paths
