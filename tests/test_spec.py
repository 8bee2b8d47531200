"""Spec validation, resolution to RunConfig, and the error messages users see."""

import copy
from pathlib import Path

import pytest
from conftest import TINY_SPEC

from bkdsearch.spec import Defaults, SpecError, parse_spec, resolve, searched

SPECS = sorted(Path(__file__).resolve().parent.parent.joinpath("specs").glob("*.yaml"))


def _yaml(spec: dict) -> str:
    import yaml

    return yaml.safe_dump(spec, sort_keys=False)


def test_every_ready_spec_validates():
    assert len(SPECS) >= 1
    for path in SPECS:
        spec = parse_spec(path.read_text(), str(path))
        resolve(spec, Defaults())


def test_resolution_takes_defaults_and_overrides():
    spec_dict = copy.deepcopy(TINY_SPEC)
    spec_dict["train"]["lr"] = {"float": [0.01, 0.1], "log": True, "default": 0.03}
    spec_dict["blockkd"] = {"order": {"choice": ["deep_first", "shallow_first"]},
                            "tau": {"float": [1, 9]}, "logit_loss": {"choice": ["kl", "dkd"]}}
    spec = parse_spec(_yaml(spec_dict))
    assert set(searched(spec)) == {"train.lr", "blockkd.order", "blockkd.tau", "blockkd.logit_loss"}
    cfg = resolve(spec, Defaults())
    assert cfg.train.lr == 0.03 and cfg.blockkd.order == "deep_first" and cfg.loss.tau == 5.0
    assert cfg.blockkd.partition.teacher == ["layer1.1", "layer2.1"]
    cfg = resolve(spec, Defaults({"blockkd.tau": 2.0, "blockkd.logit_loss": "dkd"}),
                  overrides={"train.epochs": 7})
    assert cfg.loss.tau == 2.0 and cfg.train.epochs == 7 and cfg.loss.logit_loss == "dkd"


def test_conditional_dkd_parameters():
    spec_dict = copy.deepcopy(TINY_SPEC)
    spec_dict["blockkd"] = {"logit_loss": {"choice": ["kl", "dkd"]}, "dkd_beta": {"float": [1, 8]}}
    spec = parse_spec(_yaml(spec_dict))
    asked = []

    def suggest(name, dist):
        asked.append(name)
        return "kl" if name == "blockkd.logit_loss" else dist.fallback()

    resolve(spec, suggest)
    assert "blockkd.dkd_beta" not in asked
    asked.clear()
    resolve(spec, lambda n, d: "dkd" if n == "blockkd.logit_loss" else (asked.append(n), d.fallback())[1])
    assert "blockkd.dkd_beta" in asked


def _errors(text: str) -> list[tuple[str, str, int | None]]:
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    return info.value.errors


def test_every_bad_field_reported_with_path_and_line():
    spec_dict = copy.deepcopy(TINY_SPEC)
    spec_dict["trian"] = {}  # typo'd key
    spec_dict["seed"] = "zero"  # wrong type
    spec_dict["train"]["lr"] = {"float": [0.5, 0.1]}  # inverted range
    spec_dict["blockkd"] = {"order": {"choice": []}}  # empty choice
    errors = _errors(_yaml(spec_dict))
    paths = {p for p, _, _ in errors}
    assert {"trian", "seed", "train.lr", "blockkd.order.choice"} <= paths, errors
    lines = {p: line for p, _, line in errors}
    text = _yaml(spec_dict).splitlines()
    assert text[lines["trian"] - 1].startswith("trian:")
    assert text[lines["seed"] - 1].startswith("seed:")
    msgs = {p: m for p, m, _ in errors}
    assert "unknown key" in msgs["trian"]
    assert "low < high" in msgs["train.lr"]


def test_unknown_model_and_impossible_partition():
    spec_dict = copy.deepcopy(TINY_SPEC)
    spec_dict["student"]["arch"] = "resnet9000"
    errors = _errors(_yaml(spec_dict))
    assert errors[0][0] == "student.arch" and "unknown model" in errors[0][1]
    spec_dict = copy.deepcopy(TINY_SPEC)
    spec_dict["partitions"] = {"stage": {"teacher": ["layer1.1"], "student": ["layer7.0"]}}
    errors = _errors(_yaml(spec_dict))
    assert errors[0][0] == "partitions.stage" and "layer7.0" in errors[0][1]


def test_malformed_yaml_and_wrong_top_level():
    errors = _errors("name: [unclosed\n")
    assert "malformed YAML" in errors[0][1] and errors[0][2] is not None
    assert "mapping" in _errors("- a\n- b\n")[0][1]


def test_yaml_never_runs_code():
    text = _yaml(TINY_SPEC) + "extra: !!python/object/apply:os.system ['echo pwned']\n"
    errors = _errors(text)
    assert "malformed YAML" in errors[0][1]


def test_dkd_warmup_is_resolved_with_the_dkd_loss_only():
    spec_dict = copy.deepcopy(TINY_SPEC)
    spec_dict["blockkd"] = {"logit_loss": {"choice": ["kl", "dkd"]}, "dkd_warmup": {"int": [0, 20], "default": 5}}
    spec = parse_spec(_yaml(spec_dict))
    assert "blockkd.dkd_warmup" in searched(spec)
    assert resolve(spec, Defaults()).loss.dkd_warmup == 0  # kl: no DKD terms to warm up
    assert resolve(spec, Defaults({"blockkd.logit_loss": "dkd"})).loss.dkd_warmup == 5
    spec_dict["method"] = "dkd"
    cfg = resolve(parse_spec(_yaml(spec_dict)), Defaults({"blockkd.dkd_warmup": 7}))
    assert cfg.loss.dkd_warmup == 7
    # Off unless asked for: a spec without it resolves as it always did.
    spec_dict["blockkd"] = {}
    assert resolve(parse_spec(_yaml(spec_dict)), Defaults()).loss.dkd_warmup == 0


def test_the_published_spec_warms_dkd_up_over_20_epochs():
    path = next(p for p in SPECS if p.name == "r110_r32.yaml")
    cfg = resolve(parse_spec(path.read_text(), str(path)), Defaults({"blockkd.logit_loss": "dkd"}))
    assert cfg.train.epochs == 240 and cfg.loss.dkd_warmup == 20


@pytest.mark.parametrize("value", [-1, {"int": [-2, 5]}, {"choice": [0, -3]}, {"choice": [0, "ten"]}, 2.5])
def test_negative_dkd_warmup_is_an_error_with_path_and_line(value):
    spec_dict = copy.deepcopy(TINY_SPEC)
    spec_dict["blockkd"] = {"logit_loss": "dkd", "dkd_warmup": value}
    text = _yaml(spec_dict)
    errors = _errors(text)
    assert [p for p, _, _ in errors] == ["blockkd.dkd_warmup"], errors
    line = errors[0][2]
    assert line is not None and "dkd_warmup" in text.splitlines()[line - 1]


def test_negative_dkd_warmup_override_is_refused():
    spec_dict = copy.deepcopy(TINY_SPEC)
    spec_dict["blockkd"] = {"logit_loss": "dkd"}
    spec = parse_spec(_yaml(spec_dict))
    with pytest.raises(SpecError, match="dkd_warmup"):
        resolve(spec, Defaults({"blockkd.dkd_warmup": -1}), overrides={"blockkd.dkd_warmup": -1})
