"""Fuzzing: specs (random YAML, and TINY_SPEC mutated: keys deleted, values replaced, types
changed, junk inserted) through the loader, and random command lines through the CLI.
Only a clean result or a clear error is allowed, never another exception or a traceback."""

import copy
import itertools
import os
import re

import pytest
import yaml
from click.testing import CliRunner
from conftest import TINY_SPEC, write_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bkdsearch.cli import main
from bkdsearch.errors import PartitionError
from bkdsearch.spec import Defaults, Spec, SpecError, parse_spec, resolve


def fast(n: int) -> settings:
    """Deterministic examples (the same in every CI run); BKDSEARCH_FUZZ_SCALE=20 fuzzes 20x
    longer with fresh random examples."""
    scale = int(os.environ.get("BKDSEARCH_FUZZ_SCALE", "1"))
    return settings(deadline=None, max_examples=n * scale, derandomize=scale == 1, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# Text a command line can carry (no NUL, no lone surrogates).
TEXT = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=30)
WORDS = ["train", "data", "teacher", "student", "blockkd", "search", "partitions", "float", "int",
         "choice", "log", "default", "stage", "stage_aligned", "resnet8", "resnet14", "layer1.0",
         "layer2.1", "layer3.0", "cifar100", "synthetic", "epochs", "lr", "tau", "per_stage", "uniform"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.integers(), st.floats(allow_nan=True),
    st.sampled_from([0, 1, -1, 0.5, 1e300, "", "auto", "all", "nan", "inf"]), st.sampled_from(WORDS), TEXT,
    # what the spec refuses by value: non-finite, negative, zero, seeds past 2**32, unknown devices
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, -1e-9, 2**32, 2**64, -(2**63), 10**30,
                     "cuda:", "cuda:x", "gpu", "mps", "cuda:0,1", "CPU"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(WORDS), TEXT), inner, max_size=3),
        st.builds(lambda a, b: {"float": [a, b]}, inner, inner),
        st.builds(lambda a, b: {"int": [a, b], "step": b}, inner, inner),
        st.builds(lambda xs: {"choice": xs}, st.lists(inner, max_size=3)),
    ),
    max_leaves=8,
)


def _paths(node, prefix=()):
    """Every (path, value) in a nested dict/list."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _set(root, path, value):
    parent = root
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value


def _with(spec, path, value):
    """A copy of ``spec`` with ``value`` at ``path`` (a tuple of keys; missing sections made)."""
    spec = copy.deepcopy(spec)
    parent = spec
    for key in path[:-1]:
        parent = parent.setdefault(key, {})
    parent[path[-1]] = value
    return spec


# data.synthetic is left alone: its options are not validated with the spec (see
# test_bad_synthetic_options_give_a_spec_error); mutating them would only find that bug again.


@st.composite
def mutated_specs(draw):
    spec = copy.deepcopy(TINY_SPEC)
    spec["train"]["lr"] = {"float": [0.01, 0.2], "log": True}
    spec["blockkd"] = {"tau": {"choice": [2.0, 4.0]}, "order": {"choice": ["shallow_first", "deep_first"]}}
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p, _ in _paths(spec) if p and p[:2] != ("data", "synthetic")]
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["delete", "replace", "retype", "junk", "swap"]))
        parent = spec
        for key in path[:-1]:
            parent = parent[key]
        old = parent[path[-1]]
        if op == "delete":
            del parent[path[-1]]
        elif op == "replace":
            _set(spec, path, draw(VALUES))
        elif op == "retype":
            _set(spec, path, draw(st.sampled_from([str(old), [old], {"choice": [old]}, {"float": [old, old]},
                                                   {"value": old}, None, -1, True])))
        elif op == "junk" and isinstance(old, dict):
            old[draw(st.one_of(st.sampled_from(WORDS), TEXT))] = draw(VALUES)
        elif op == "swap":
            other = draw(st.sampled_from(paths))
            with_value = next(v for p, v in _paths(spec) if p == other) if other != path else old
            _set(spec, path, copy.deepcopy(with_value))
        if not isinstance(spec, dict) or not spec:
            break
    return spec


EDIT_BASE = copy.deepcopy(TINY_SPEC)
del EDIT_BASE["data"]["synthetic"]  # (see mutated_specs)
EDITS = ["", ":", " ", "\n", "- ", "{", "[", "'", "&a", "*a", "!!python/object/apply:os.system [ls]", "\t",
         "  x: 1\n"]


def _check(text: str) -> None:
    try:
        spec = parse_spec(text)
    except SpecError as exc:
        assert exc.errors and all(isinstance(m, str) and m for _, m, _ in exc.errors)
        assert str(exc)
        return
    assert isinstance(spec, Spec)
    try:  # a valid spec resolves to its default run, or says why not
        resolve(spec, Defaults())
    except (SpecError, PartitionError) as exc:
        assert str(exc)


def _dump(spec) -> str:
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)


def test_the_unmutated_spec_is_valid():
    assert isinstance(parse_spec(_dump(TINY_SPEC)), Spec)


@fast(150)
@given(mutated_specs())
def test_mutated_specs_give_a_spec_or_a_spec_error(spec):
    _check(_dump(spec))


@fast(150)
@given(st.one_of(TEXT, st.text(max_size=300), VALUES.map(lambda v: yaml.safe_dump(v, allow_unicode=True))))
def test_random_yaml_gives_a_spec_error(text):
    _check(text)


@fast(100)
@given(st.data())
def test_edited_yaml_text_gives_a_spec_or_a_spec_error(data):
    text = _dump(EDIT_BASE)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 20)))
        piece = data.draw(st.sampled_from(EDITS) | TEXT)
        text = text[:i] + piece + text[j:]
    _check(text)


@pytest.mark.parametrize("options", [
    {"num_classes": "10"}, {"mix": True}, {"mix": 2.0}, {"clutter": {"a": 1}}, {"max_rotation": "x"},
    {"colour": 1},
])
def test_bad_synthetic_options_give_a_spec_error(options):
    spec = copy.deepcopy(TINY_SPEC)
    spec["data"]["synthetic"].update(options)
    with pytest.raises(SpecError, match="data.synthetic"):
        parse_spec(_dump(spec))


# --------------------------------------------------------------------------- values refused by range

NON_FINITE = st.sampled_from([float("nan"), float("inf"), float("-inf")])

# field -> (integer?, lowest valid, is the lowest itself valid, highest valid or None, is the highest valid)
NUMERIC_FIELDS = {
    ("train", "epochs"): (True, 1, True, None, False), ("train", "warmup_epochs"): (True, 0, True, None, False),
    ("train", "lr"): (False, 0, False, None, False), ("train", "weight_decay"): (False, 0, True, None, False),
    ("train", "momentum"): (False, 0, True, 1, False), ("blockkd", "tau"): (False, 0, False, None, False),
    ("blockkd", "alpha"): (False, 0, True, None, False), ("blockkd", "gamma"): (False, 0, True, None, False),
    ("blockkd", "decay"): (False, 0, False, 1, True), ("blockkd", "dkd_beta"): (False, 0, True, None, False),
    ("data", "batch_size"): (True, 1, True, None, False), ("teacher", "recipe", "epochs"): (True, 1, True, None, False),
    ("teacher", "recipe", "lr"): (False, 0, False, None, False), ("seed",): (True, 0, True, 2**32, False),
}
SEARCHED = {path for path in NUMERIC_FIELDS if path[0] in ("train", "blockkd")}


@st.composite
def out_of_range(draw):
    """A field and a value it may not take: fixed, as a range end, or among choices."""
    path = draw(st.sampled_from(sorted(NUMERIC_FIELDS)))
    integer, low, low_ok, high, high_ok = NUMERIC_FIELDS[path]
    below = st.integers(low - 10**6, low - (1 if low_ok else 0)) if integer else st.floats(
        low - 1e6, low - (1e-9 if low_ok else 0), allow_nan=False)
    above = (st.integers(high if not high_ok else high + 1, high + 10**20) if integer else st.floats(
        high, high + 1e6, exclude_min=high_ok, allow_nan=False)) if high is not None else st.nothing()
    bad = draw(st.one_of(below, above, NON_FINITE, st.just(low - 1)))
    good = low + 1 if integer else (low + (high if high is not None else 2)) / 2
    if path in SEARCHED:
        kind = "int" if integer else "float"
        form = draw(st.sampled_from(["fixed", "low", "high", "choice", "default"]))
        bad = {"fixed": bad, "low": {kind: [bad, good]}, "high": {kind: [good, bad]},
               "choice": {"choice": [good, bad]}, "default": {kind: [good, good + 1], "default": bad}}[form]
    return path, bad


@fast(120)
@given(out_of_range())
def test_values_out_of_range_are_refused_naming_the_field(case):
    path, value = case
    text = _dump(_with(EDIT_BASE, path, value))
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    field = ".".join(path)
    assert any(p == field or p.startswith((field + ".", field + "[")) for p, _, _ in info.value.errors), (
        value, info.value.errors)


@fast(60)
@given(st.data())
def test_a_key_given_twice_is_refused_naming_it(data):
    lines = _dump(EDIT_BASE).splitlines()
    keyed = [i for i, line in enumerate(lines) if re.match(r"^ *[A-Za-z_][\w.]*: \S", line)]
    i = data.draw(st.sampled_from(keyed))
    key = lines[i].split(":")[0].strip()
    value = data.draw(st.sampled_from(["1", "x", "[1]", "{a: 1}", lines[i].split(":", 1)[1].strip()]))
    extra = f"{lines[i].split(':')[0]}: {value}"  # the same key, at the same indentation, on the next line
    at = i + 1
    text = "\n".join([*lines[:at], extra, *lines[at:]]) + "\n"
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert any(f"duplicate key {key!r}" in m and f"line {i + 1}" in m and f"line {at + 1}" in m
               for _, m, _ in info.value.errors), info.value.errors


_DEVICE_OK = re.compile(r"auto|cpu|cuda|(?:cuda:)?[0-9]{1,3}")


@fast(150)
@given(st.one_of(TEXT, st.sampled_from(["auto", "cpu", "cuda", "cuda:0", "7", "cuda:", "gpu", "cuda:1234", "0,1"]),
                 st.integers(-5, 2000).map(str), st.integers(-5, 2000).map("cuda:{}".format)))
def test_device_names_other_than_the_allowed_forms_are_refused(device):
    from bkdsearch.spec.config import RuntimeConfig

    if _DEVICE_OK.fullmatch(device):
        assert RuntimeConfig(device=device).device == device
        return
    with pytest.raises(SpecError) as info:
        parse_spec(_dump(_with(EDIT_BASE, ("runtime", "device"), device)))
    assert [p for p, _, _ in info.value.errors] == ["runtime.device"]
    assert "auto, cpu, cuda, cuda:N" in info.value.errors[0][1]


@fast(100)
@given(st.one_of(st.integers(), st.integers(-3, 3), st.integers(2**32 - 3, 2**32 + 3)))
def test_seeds_outside_0_to_2_to_the_32_are_refused(seed):
    spec = _with(EDIT_BASE, ("seed",), seed)
    if 0 <= seed < 2**32:
        assert Spec.model_validate(spec).seed == seed
        return
    with pytest.raises(SpecError) as info:
        parse_spec(_dump(spec))
    assert [p for p, _, _ in info.value.errors] == ["seed"]


# --------------------------------------------------------------------------- command lines


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzzcli")
    spec = copy.deepcopy(TINY_SPEC)
    bad = copy.deepcopy(TINY_SPEC)
    bad["train"]["epochs"] = "many"
    (tmp / "binary.yaml").write_bytes(bytes(range(256)))
    (tmp / "dir.yaml").mkdir()
    (tmp / "big.yaml").write_text(yaml.safe_dump(spec) + "#" * 1_000_000)
    (tmp / "dup.yaml").write_text(yaml.safe_dump(spec, sort_keys=False) + "name: again\n")
    (tmp / "deep.yaml").write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
    bad_numbers = [write_spec(tmp / f"num{i}.yaml", _with(spec, path, value)) for i, (path, value) in enumerate([
        (("train", "epochs"), 0), (("train", "lr"), float("nan")), (("train", "epochs"), {"int": [0, 5]}),
        (("blockkd", "tau"), {"float": [-1, 4]}), (("seed",), 2**32), (("runtime", "device"), "gpu")])]
    # A FIFO or /dev/zero is left out here (in-process, a regression would hang the suite, not fail
    # it): test_inputs.py runs those through a child process with a timeout.
    return {
        "tmp": tmp,
        "specs": [write_spec(tmp / "ok.yaml", spec), write_spec(tmp / "bad.yaml", bad),
                  str(tmp / "dir.yaml"), str(tmp / "missing.yaml"), str(tmp / "binary.yaml"),
                  str(tmp / "big.yaml"), str(tmp / "dup.yaml"), str(tmp / "deep.yaml"), *bad_numbers],
        "storages": [f"sqlite:///{tmp}/s.db", "sqlite:///relative.db", "nosuchdb://x", "sqlite://", "",
                     "postgresql+psycopg://postgres:pw@127.0.0.1:1/test", "mysql+pymysql://root@127.0.0.1:1/x",
                     "sqlite:////proc/x/y.db", f"sqlite:///{tmp}/dir.yaml"],
    }


SET_KEYS = ["train.lr", "train.epochs", "train.schedule", "blockkd.tau", "blockkd.gamma", "method", "train.lrr", "",
            "seed", "blockkd.partition", "blockkd.order", "blockkd.connector", "blockkd.stones", "train.momentum",
            "train.weight_decay", "train.warmup_epochs", "blockkd.decay", "blockkd.dkd_warmup"]
SET_VALUES = ["0.1", "-1", "nan", "[1, 2]", "{a: 1}", "deep_first", "kd", "", "1e999", ".nan", "-.inf", ".inf", "0",
              "-0.0", "4294967296", "18446744073709551616", "1.0", "yes", "{a: 1, a: 2}", "[" * 100]


def _tokens(files):
    spec = st.one_of(st.sampled_from(files["specs"]), TEXT)
    storage = st.one_of(st.sampled_from(files["storages"]), TEXT)
    sets = st.lists(st.builds(lambda k, v: f"{k}={v}", st.one_of(st.sampled_from(
        SET_KEYS), TEXT),
        st.one_of(st.sampled_from(SET_VALUES), TEXT)),
        max_size=3)
    out = st.one_of(st.just(str(files["tmp"] / "out.py")), st.just(str(files["tmp"] / "dir.yaml")), TEXT)
    flags = ["--json", "--help", "-h", "--nope", "--storage", "--study", "--"]
    junk = st.lists(st.one_of(TEXT, st.sampled_from(flags)), max_size=2)
    return st.one_of(
        st.tuples(st.just(["validate"]), spec.map(lambda s: [s]), junk),
        st.tuples(st.just(["schema"]), junk),
        st.tuples(st.just(["status"]), st.lists(st.one_of(
            storage.map(lambda u: ["--storage", u]), TEXT.map(lambda n: ["--study", n]),
            st.just(["--json"]), spec.map(lambda s: [s])), max_size=3).map(
                lambda xs: list(itertools.chain.from_iterable(xs))), junk),
        st.tuples(st.just(["export"]), storage.map(lambda u: ["--storage", u]),
                  st.one_of(TEXT, st.just("tiny")).map(lambda n: ["--study", n]),
                  st.one_of(TEXT, st.sampled_from(["best", "0", "-1", "99"])).map(lambda t: ["--trial", t]),
                  out.map(lambda o: ["-o", o]), junk),
        st.tuples(st.just(["flops"]), st.just([files["specs"][0]]), sets.map(
            lambda xs: list(itertools.chain.from_iterable(["--set", x] for x in xs))), junk),
        st.tuples(st.just(["train"]), spec.map(lambda s: [s]), sets.map(
            lambda xs: list(itertools.chain.from_iterable(["--set", x] for x in xs)))),
        st.lists(TEXT, max_size=3).map(lambda xs: (xs,)),
    )


@fast(120)
@given(data=st.data())
def test_random_command_lines_exit_0_or_2_without_traceback(files, monkeypatch, data):
    monkeypatch.chdir(files["tmp"])
    parts = data.draw(_tokens(files))
    args = list(itertools.chain.from_iterable(parts))
    if args[:1] == ["train"]:
        args += ["--set", "train.lrr=1"]  # never actually train: an unknown key stops it
    result = CliRunner().invoke(main, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exc_info)
    assert result.exit_code in (0, 2), (args, result.exit_code, result.output)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert result.output.strip(), args  # a message says why



@pytest.mark.parametrize("command", ["validate", "train"])
def test_binary_spec_file_exits_2(tmp_path, command):
    path = tmp_path / "binary.yaml"
    path.write_bytes(bytes(range(256)))
    result = CliRunner().invoke(main, [command, str(path)])
    assert result.exit_code == 2, result.output
    assert "cannot read spec" in result.output


@pytest.mark.parametrize("setting", ["seed=abc", "seed={a: 1}", "blockkd.partition=nope", "blockkd.order=abc",
                                     "blockkd.connector=", "blockkd.stones=abc", "blockkd.stones=-1"])
def test_bad_set_values_exit_2(tmp_path, setting):
    result = CliRunner().invoke(main, ["flops", write_spec(tmp_path / "s.yaml", TINY_SPEC), "--set", setting])
    assert result.exit_code == 2, result.output
    assert setting.split("=")[0] in result.output and "Traceback" not in result.output
