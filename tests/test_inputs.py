"""Bad inputs are refused with a clear message (exit 2 through the CLI), never a traceback or a
hang: non-finite and out-of-range numbers (fixed or searched), bad seeds and device names,
duplicate YAML keys, spec paths that are not regular files or are too large; passwords of
storage URLs never shown; checkpoints that would run code refused without torch's advice
to load them unsafely."""

import copy
import os
import pickle
import random
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import TINY_SPEC, write_spec

from bkdsearch.cli import main
from bkdsearch.core.engine.weights import load_safely, unpickler_finding
from bkdsearch.errors import WeightsError
from bkdsearch.spec import Defaults, SpecError, load_spec, parse_overrides, parse_spec, resolve
from bkdsearch.spec.config import DEVICE_FORMS, check_device
from bkdsearch.spec.loading import MAX_SPEC_BYTES
from bkdsearch.urls import redact

NAN, INF = float("nan"), float("inf")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _with(path: str, value) -> dict:
    """TINY_SPEC with the value at dotted ``path`` replaced (made when missing)."""
    spec = copy.deepcopy(TINY_SPEC)
    *parents, last = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return spec


def _dump(spec: dict) -> str:
    return yaml.safe_dump(spec, sort_keys=False)


def _errors(text: str) -> list[tuple[str, str, int | None]]:
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    return info.value.errors


def _names(errors, path: str) -> bool:
    return any(p == path or p.startswith((path + ".", path + "[")) for p, _, _ in errors)


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def bkd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real CLI in a child process; a hang fails the test (TimeoutExpired)."""
    return subprocess.run([sys.executable, "-m", "bkdsearch.cli", *args], capture_output=True, text=True,
                          env=ENV, timeout=timeout, stdin=subprocess.DEVNULL)


# --------------------------------------------------------------------------- 1. strict numbers

# (field, bad value): every one must be refused, naming the field.
BAD_VALUES = [
    # epochs: whole numbers >= 1, fixed or searched
    ("train.epochs", 0), ("train.epochs", -1), ("train.epochs", NAN), ("train.epochs", INF),
    ("train.epochs", {"int": [0, 5]}), ("train.epochs", {"int": [-3, 2]}), ("train.epochs", {"choice": [0, 10]}),
    ("train.epochs", {"choice": [10, NAN]}), ("train.epochs", {"choice": [True, 5]}),
    ("teacher.recipe.epochs", 0), ("train.warmup_epochs", -1), ("train.warmup_epochs", {"int": [-1, 3]}),
    # lr > 0 and finite
    ("train.lr", 0), ("train.lr", -0.1), ("train.lr", NAN), ("train.lr", INF), ("train.lr", -INF),
    ("train.lr", {"float": [-1, 1]}), ("train.lr", {"float": [0, 1]}), ("train.lr", {"float": [NAN, 1]}),
    ("train.lr", {"float": [0.1, INF]}), ("train.lr", {"choice": [0.1, NAN]}), ("train.lr", {"choice": [0.1, -1]}),
    ("train.lr", {"float": [0.01, 0.1], "default": NAN}), ("train.lr", {"choice": [0.1, INF], "default": 0.1}),
    ("teacher.recipe.lr", NAN), ("teacher.recipe.lr", -1),
    # weight_decay >= 0, momentum in [0, 1), lr_decay in (0, 1]
    ("train.weight_decay", -1e-4), ("train.weight_decay", NAN), ("train.weight_decay", {"float": [-1, 0.1]}),
    ("train.momentum", 1.0), ("train.momentum", -0.1), ("train.momentum", NAN),
    ("train.momentum", {"float": [0.5, 1.0]}), ("train.momentum", {"choice": [0.9, 1.5]}),
    ("train.lr_decay", NAN), ("train.lr_decay", 0),
    # loss: tau > 0, weights >= 0, decay in (0, 1]
    ("blockkd.tau", 0), ("blockkd.tau", -1), ("blockkd.tau", INF), ("blockkd.tau", NAN),
    ("blockkd.tau", {"float": [0, 4]}), ("blockkd.tau", {"choice": [NAN]}), ("blockkd.tau", {"choice": [2, -INF]}),
    ("blockkd.alpha", -1), ("blockkd.beta", NAN), ("blockkd.gamma", {"float": [-0.5, 0.5]}),
    ("blockkd.decay", 0), ("blockkd.decay", {"choice": [0.5, 2]}), ("blockkd.dkd_beta", INF),
    # searched categorical values must be known ones
    ("blockkd.order", {"choice": ["shallow_first", "sideways"]}), ("method", {"choice": ["kd", "bogus"]}),
    ("train.optimizer", {"choice": ["sgd", "adam"]}),
    # int/float range bounds and defaults are finite numbers
    ("blockkd.alpha", {"float": [0, 1], "default": INF}), ("train.epochs", {"int": [1, 5], "default": 0}),
    # batches >= 1
    ("data.batch_size", 0), ("data.batch_size", -1), ("data.batch_size", NAN), ("data.eval_batch_size", 0),
    # seeds in [0, 2**32)
    ("seed", -1), ("seed", 2**32), ("seed", 2**64), ("seed", 10**30), ("seed", NAN), ("seed", 1e300),
    # study settings
    ("search.timeout", INF), ("search.timeout", NAN), ("search.max_train_gflops", INF),
    ("search.enqueue", [{"train.lr": NAN}]),
    # devices
    ("runtime.device", "gpu"), ("runtime.device", "cuda:"), ("runtime.device", "cuda:x"),
    ("runtime.device", "cuda:-1"), ("runtime.device", "CPU"), ("runtime.device", "mps"), ("runtime.device", ""),
    ("runtime.device", " cpu"), ("runtime.device", "cuda:0,1"), ("runtime.device", "0,1"),
    ("runtime.device", "cuda:99999"), ("runtime.device", "cuda:0\n"), ("runtime.device", "١"), ("runtime.device", 0),
]


@pytest.mark.parametrize("field, value", BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_bad_numbers_and_names_are_refused_naming_the_field(field, value):
    text = _dump(_with(field, value))
    errors = _errors(text)
    assert _names(errors, field), errors
    for path, message, line in errors:
        assert message and "Traceback" not in message
        if _names([(path, message, line)], field):  # its line is that of the key (or of an item under it)
            key = re.sub(r"\[\d+\]", "", path).split(".")[-1]
            assert line is not None and key in "\n".join(text.splitlines()[max(line - 3, 0):line]), errors


def test_non_finite_values_get_a_clear_message():
    [(path, message, _)] = _errors(_dump(_with("train.lr", NAN)))
    assert path == "train.lr" and "finite" in message and "nan" in message
    [(path, message, _)] = _errors(_dump(_with("train.lr", {"float": [NAN, 1]})))
    assert path == "train.lr.float[0]" and "finite" in message
    [(path, message, _)] = _errors(_dump(_with("train.lr", {"float": [-1, 1]})))
    assert "-1" in message and "greater than 0" in message
    [(path, message, _)] = _errors(_dump(_with("train.epochs", {"int": [0, 5]})))
    assert path == "train.epochs" and "0" in message and "greater than or equal to 1" in message


def test_bad_device_names_the_allowed_forms():
    [(path, message, _)] = _errors(_dump(_with("runtime.device", "gpu0")))
    assert path == "runtime.device" and "'gpu0'" in message and DEVICE_FORMS in message
    with pytest.raises(ValueError, match="cuda:N"):
        check_device("tpu")


GOOD_VALUES = [
    ("runtime.device", "auto"), ("runtime.device", "cpu"), ("runtime.device", "cuda"), ("runtime.device", "cuda:0"),
    ("runtime.device", "cuda:7"), ("runtime.device", "0"), ("runtime.device", "3"),
    ("seed", 0), ("seed", 2**32 - 1), ("train.epochs", {"int": [1, 5]}), ("train.epochs", {"choice": [1, 3]}),
    ("train.lr", {"float": [1e-4, 1.0], "log": True}), ("train.momentum", {"float": [0.0, 0.99]}),
    ("train.weight_decay", 0), ("blockkd.tau", {"choice": [1, 4.5]}), ("blockkd.gamma", {"float": [0, 1]}),
]


@pytest.mark.parametrize("field, value", GOOD_VALUES, ids=[f"{f}={v!r}" for f, v in GOOD_VALUES])
def test_valid_values_still_pass(field, value):
    resolve(parse_spec(_dump(_with(field, value))), Defaults())


@pytest.mark.parametrize("overrides, field", [
    ({"seed": 2**32}, "seed"), ({"seed": -1}, "seed"), ({"train.lr": NAN}, "train.lr"),
    ({"train.epochs": 0}, "train.epochs"), ({"blockkd.tau": INF}, "blockkd.tau"),
])
def test_bad_overrides_are_refused(overrides, field):
    spec = parse_spec(_dump(TINY_SPEC))
    with pytest.raises(SpecError) as info:
        resolve(spec, Defaults(overrides), overrides=overrides)
    assert field.split(".")[-1] in str(info.value)


@pytest.mark.parametrize("field, value", [("train.epochs", {"int": [0, 5]}), ("train.lr", NAN), ("seed", 2**32),
                                          ("runtime.device", "gpu"), ("blockkd.tau", {"float": [-1, 4]})])
def test_cli_validate_exits_2_naming_the_field(tmp_path, field, value):
    result = cli("validate", write_spec(tmp_path / "s.yaml", _with(field, value)))
    assert result.exit_code == 2, result.output
    assert field in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("setting", ["train.lr=.nan", "train.epochs=0", "seed=4294967296", "blockkd.tau=-.inf"])
def test_cli_bad_set_values_exit_2(tmp_path, setting):
    result = cli("flops", write_spec(tmp_path / "s.yaml", TINY_SPEC), "--set", setting)
    assert result.exit_code == 2, result.output
    assert setting.split("=")[0].split(".")[-1] in result.output and "Traceback" not in result.output


# --------------------------------------------------------------------------- 2. duplicate keys


def test_duplicate_keys_name_the_key_and_both_lines():
    text = _dump(TINY_SPEC)
    lines = text.splitlines()
    lr = next(i for i, line in enumerate(lines) if line.strip().startswith("lr: 0.1") and lines[i - 2] == "train:")
    lines.insert(lr + 2, "  lr: 0.5")  # train.lr again, two lines further down
    lines.append("name: other")  # and the top-level name
    errors = _errors("\n".join(lines) + "\n")
    by_path = {p: (m, line) for p, m, line in errors}
    assert set(by_path) == {"train.lr", "name"}, errors
    message, line = by_path["train.lr"]
    assert "duplicate key 'lr'" in message and f"line {lr + 1}" in message and f"line {lr + 3}" in message
    assert line == lr + 3
    message, _ = by_path["name"]
    assert "duplicate key 'name'" in message and "line 1" in message and f"line {len(lines)}" in message


@pytest.mark.parametrize("text, key", [
    ("name: a\ntrain: {lr: 1, lr: 2}\n", "lr"),
    ("name: a\npartitions:\n  - {x: 1}\n  - {y: 1, y: 2}\n", "y"),
    ("name: a\n1: x\n1.0: y\n", "1"),
    ("name: a\nsearch:\n  enqueue:\n    - a: 1\n      a: 2\n", "a"),
])
def test_duplicate_keys_anywhere_are_errors(text, key):
    errors = _errors(text)
    assert any(f"duplicate key {key}" in m or f"duplicate key '{key}'" in m for _, m, _ in errors), errors


def test_merge_keys_may_override_without_a_duplicate_error():
    spec = _dump(TINY_SPEC).replace("train:\n", "base: &b {lr: 0.2}\ntrain:\n  <<: *b\n", 1)
    errors = _errors(spec)  # base is an unknown key, but no key is a duplicate
    assert not any("duplicate" in m for _, m, _ in errors) and any(p == "base" for p, _, _ in errors)


def test_duplicate_keys_through_the_cli(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(_dump(TINY_SPEC) + "seed: 1\n")
    result = cli("validate", str(path))
    assert result.exit_code == 2 and "duplicate key 'seed'" in result.output, result.output
    assert "line 2" in result.output and "Traceback" not in result.output


def test_set_values_with_duplicate_keys_are_refused():
    with pytest.raises(SpecError, match="cannot parse value"):
        parse_overrides(["search.enqueue=[{a: 1, a: 2}]"])


@pytest.mark.parametrize("text, needle", [
    ("name: " + "[" * 3000 + "]" * 3000 + "\n", "nested more than 64 levels"),
    ("name: &x [*x]\n", "recursive"),
    ("name: a\x1bb\n", "malformed YAML"),
    ("name: [" + "1, " * 300_000 + "1]\n", "more than 20000 YAML values"),
    ("name: " + "{a: " * 100_000 + "\n", "nested more than 64 levels"),
    ("".join(" " * i + "a:\n" for i in range(200)), "nested more than 64 levels"),
    ("a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n" for p, n in zip("abcdef", "bcdefg", strict=True)), "aliases"),
])
def test_hostile_yaml_is_refused_quickly(text, needle):
    errors = _errors(text)
    assert any(needle in m for _, m, _ in errors), errors


# --------------------------------------------------------------------------- 3. spec files


def test_fifo_spec_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    r = bkd("validate", str(fifo))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "FIFO" in r.stderr and "not a regular file" in r.stderr and "Traceback" not in r.stderr


def test_endless_devices_are_refused_without_reading():
    devices = [d for d in ("/dev/zero", "/dev/urandom") if os.path.exists(d) and stat.S_ISCHR(os.stat(d).st_mode)]
    if not devices:
        pytest.skip("no /dev/zero or /dev/urandom here")
    # One child process for both (a reading loader would never end, or fill the memory).
    code = ("import sys\nfrom bkdsearch.spec import SpecError, load_spec\nfor d in sys.argv[1:]:\n"
            "    try:\n        load_spec(d)\n    except SpecError as e:\n        print(e)\n")
    r = subprocess.run([sys.executable, "-c", code, *devices], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    for device in devices:
        assert f"cannot read spec {device}: it is a character device, not a regular file" in r.stdout, r.stdout


def test_directory_and_null_device_are_refused(tmp_path):
    (tmp_path / "d.yaml").mkdir()
    with pytest.raises(SpecError, match="it is a directory, not a regular file"):
        load_spec(tmp_path / "d.yaml")
    if os.path.exists("/dev/null"):
        with pytest.raises(SpecError, match="character device"):
            load_spec("/dev/null")
    result = cli("validate", str(tmp_path / "d.yaml"))
    assert result.exit_code == 2 and "directory" in result.output


def test_spec_over_one_megabyte_is_refused_and_one_at_the_limit_is_read(tmp_path):
    text = _dump(TINY_SPEC)
    at_limit = tmp_path / "limit.yaml"
    at_limit.write_bytes((text + "#" * (MAX_SPEC_BYTES - len(text.encode()) - 1) + "\n").encode())
    assert at_limit.stat().st_size == MAX_SPEC_BYTES == 1_000_000
    assert load_spec(at_limit).name == "tiny"
    over = tmp_path / "big.yaml"
    over.write_bytes(at_limit.read_bytes() + b"#")
    with pytest.raises(SpecError, match="1000001 bytes, over the limit of 1000000"):
        load_spec(over)
    result = cli("validate", str(over))
    assert result.exit_code == 2 and "over the limit" in result.output


def test_missing_and_binary_specs_say_why(tmp_path):
    with pytest.raises(SpecError, match="cannot read spec .*No such file"):
        load_spec(tmp_path / "nope.yaml")
    (tmp_path / "bin.yaml").write_bytes(bytes(range(256)))
    with pytest.raises(SpecError, match="cannot read spec .*not UTF-8"):
        load_spec(tmp_path / "bin.yaml")


def test_a_utf8_bom_is_fine(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + _dump(TINY_SPEC).encode())
    assert load_spec(path).name == "tiny"


# --------------------------------------------------------------------------- 4. redaction

# Every password holds the marker SECRET in each of its pieces, so a partial leak shows too.
PASSWORDS = ["SECRETa SECRETb", "SECRETp@SECRETssw0rdX", "SECRETa:SECRETb:SECRETc", "SECRET100%", "SECRET%zz",
             "SECRETa/SECRETb", "SECRETa#SECRETb", "SECRETa?SECRETb", "SECRETa @:/%#?SECRETb", "@SECRETlead",
             "SECRETtrail@", "SECRETa@SECRETb@SECRETc", "SECRET&x=1", "SECRET'quote\""]


def _leaks(text: str) -> bool:
    return "SECRET" in text


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("encode", [False, True], ids=["raw", "url-encoded"])
def test_passwords_never_survive_redaction(password, encode):
    pw = quote(password, safe="") if encode else password
    for url in (f"postgresql+psycopg://postgres:{pw}@127.0.0.1:5432/test",
                f"mysql+pymysql://root:{pw}@db.example.org/bkd?charset=utf8mb4",
                f"postgresql://:{pw}@[::1]:5432/x", f"redis://u:{pw}@h"):
        for text in (url, f"  {url}\n", f"cannot connect to {url}: connection refused",
                     f"storage '{url}' is down", f"tried {url} then {url.replace('SECRET', 'SECRET2')} (both down)"):
            out = redact(text)
            assert not _leaks(out), (text, out)
            assert redact(out) == out  # idempotent
        assert "127.0.0.1" in redact(url) or "db.example.org" in redact(url) or "::1" in redact(url) \
            or redact(url).endswith("@h")


@pytest.mark.parametrize("password", PASSWORDS)
def test_query_passwords_never_survive(password):
    pw = quote(password, safe="")
    for key in ("password", "passwd", "pwd", "PASSWORD"):
        url = f"mysql+pymysql://root@db/x?charset=utf8&{key}={pw}&ssl=1"
        for text in (url, f"failed: {url} (timeout)", f"{url}; {url}"):
            assert not _leaks(redact(text)), text


def test_several_urls_in_one_line_keep_their_hosts():
    text = ("tried postgresql://a:SECRET1 x@host1/db1 and mysql://b:SECRET2@@host2:3306/db2, "
            "then sqlite:///studies/r.db")
    out = redact(text)
    assert not _leaks(out)
    # Unencoded ' ' and '@' in a password: where its userinfo ends is unsure, so none of it shows.
    assert out == ("tried postgresql://***@host1/db1 and mysql://***@host2:3306/db2, "
                   "then sqlite:///studies/r.db")


def test_the_published_leaks_are_closed():
    out = redact("postgresql+psycopg://postgres:my secret@host/db")
    assert out == "postgresql+psycopg://***@host/db"
    out = redact("postgresql+psycopg://postgres:p@ssw0rdX@127.0.0.1/test")
    assert "ssw0rdX" not in out and out.endswith("@127.0.0.1/test")
    assert redact("x a:p@ss@host") == "x a:p@ss@host"  # not a URL: nothing to find
    assert redact("postgresql://a:p@ss@host") == "postgresql://***@host"
    assert redact("postgresql://a:pw@host") == "postgresql://a:***@host"  # parsed for sure: the user shows


# Issue 25.6: unencoded passwords with '#', space, '/', '%', '?' and quotes (the 27-character
# one printed 19 of its characters), and a password split by '@' whose piece a driver quoted.
ISSUE_PASSWORDS = ["SECRET1@SECRET2/SECRET3%SECRET4:SECRET5?=\"'SECRET6#SECRET7 SECRET8",
                   "SECRETp@SECRETss SECRETw#SECRETrd/%", "SECRET1@SECRET2?SECRET3",
                   "SECRET1 SECRET2#SECRET3@SECRET4/x",
                   "SECRET1\"SECRET2'SECRET3@SECRET4", "SECRET%SECRET1%2"]


@pytest.mark.parametrize("password", ISSUE_PASSWORDS)
def test_unencoded_passwords_show_none_of_their_userinfo(password):
    from bkdsearch.search.storage import clean, url_secrets
    from bkdsearch.urls import storage_url_problem

    url = f"mysql+pymysql://USERNAME:{password}@127.0.0.1:3306/test"
    for text in (url, f"cannot open storage {url}: refused", f"tried {url} and {url}"):
        for out in (redact(text), clean(text, url_secrets(url))):
            assert not _leaks(out) and "USERNAME" not in out, out
            assert "mysql+pymysql://***@127.0.0.1:3306/test" in out
    refusal = storage_url_problem(url)  # refused before a driver could quote a piece of it
    assert refusal is not None and "percent-encoded" in refusal
    assert not _leaks(refusal) and "USERNAME" not in refusal


def test_a_short_password_is_masked_only_where_it_stands_alone():
    from bkdsearch.search.storage import clean, url_secrets

    url = "mysql+pymysql://root:p@127.0.0.1:3306/test"
    text = f"mysql+pymysql cannot open {url}: access denied for root with password p"
    assert clean(text, url_secrets(url)) == ("mysql+pymysql cannot open mysql+pymysql://root:***@127.0.0.1:3306/test:"
                                             " access denied for root with password ***")


def test_an_unencoded_password_is_refused_by_the_cli_without_a_piece_of_it(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", TINY_SPEC)
    url = "mysql+pymysql://root:SECRETp@SECRETss w#SECRETrd/%@127.0.0.1:3306/test"
    for args in (["run", spec, "--storage", url], ["status", "--storage", url]):
        r = bkd(*args)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert not _leaks(r.stdout + r.stderr) and "percent-encoded" in r.stderr


@pytest.mark.parametrize("text", [
    "", "no urls here", "sqlite:///studies/r110_r32.db", "sqlite:////abs/path.db", "user@example.com",
    "mysql+pymysql://root@127.0.0.1:3306/x", "postgresql://dbhost:5432/bkd", "a=b, c:d@e", "http://host:8080/x",
    "ratio 3:2 at 10:30", "trial 3 failed: CUDA out of memory (tried 2.0 GiB)",
])
def test_text_without_passwords_is_unchanged(text):
    assert redact(text) == text


def test_redaction_stays_linear_on_long_texts():
    import time

    texts = ["a" * 1_000_000 + "=1", "x://" * 200_000, "x://u:" + "@a" * 300_000,
             "\n".join(["pg://u:SECRET@h"] * 50_000), "a" * 500_000 + "://" + "b" * 500_000]
    started = time.perf_counter()
    outs = [redact(t) for t in texts]
    assert time.perf_counter() - started < 20  # quadratic scanning would take hours
    assert not _leaks(outs[3]) and outs[0] == texts[0]


# --------------------------------------------------------------------------- 5. unsafe checkpoints


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"echo hacked > {shlex.quote(str(self.marker))}",)


def _write_zip(path, evil):
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": evil}, path)


def _write_legacy(path, evil):
    torch.save({"x": evil}, path, _use_new_zipfile_serialization=False)


def _write_pickle(protocol):
    def write(path, evil):
        with open(path, "wb") as f:
            pickle.dump({"x": evil}, f, protocol=protocol)
    return write


def _write_random(seed):
    def write(path, evil):  # bytes from a seeded generator: the same in every run
        path.write_bytes(random.Random(seed).randbytes(4096))
    return write


ADVICE = ("weights_only=False", "weights_only set to False", "weights_only` set to `False", "Re-running",
          "re-running", "add_safe_globals")


@pytest.mark.parametrize("writer, code", [
    (_write_zip, True), (_write_legacy, True), (_write_pickle(2), True), (_write_pickle(4), False),
    *((_write_random(seed), False) for seed in range(6)),
], ids=["zip", "legacy", "pickle2", "pickle4", *(f"random{seed}" for seed in range(6))])
def test_unsafe_checkpoints_are_refused_without_unsafe_advice(tmp_path, writer, code):
    marker = tmp_path / "hacked"
    path = tmp_path / "evil.pt"
    writer(path, _Evil(marker))
    assert not marker.exists()
    with pytest.raises(WeightsError) as info:
        load_safely(path)
    message = str(info.value)
    assert not marker.exists(), "the file's code ran"
    assert str(path) in message
    assert "nothing was run" in message or message.startswith(f"cannot read {path}: corrupt or unreadable")
    assert not any(a in message for a in ADVICE), message
    assert "\n" not in message
    if code:  # the unpickler's finding names what the file would have run
        assert "would run code from the file" in message and "GLOBAL posix.system" in message, message


def test_plain_checkpoints_still_load(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"model": {"w": torch.ones(3)}}, path)
    assert torch.equal(load_safely(path)["model"]["w"], torch.ones(3))


@pytest.mark.parametrize("text, finding", [
    ("Weights only load failed. In PyTorch 2.6, we changed the default value of the `weights_only` argument in "
     "`torch.load` from `False` to `True`. Re-running `torch.load` with `weights_only` set to `False` will likely "
     "succeed, but it can result in arbitrary code execution. Do it only if you got the file from a trusted source.\n"
     "\n\nTrying to load unsupported GLOBAL posix.system whose module posix is blocked.\n\nCheck the documentation of "
     "torch.load to learn more about types accepted by default with weights_only https://pytorch.org/docs/.",
     "Trying to load unsupported GLOBAL posix.system whose module posix is blocked"),
    ("Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will likely succeed.\n"
     "Please file an issue with the following so that we can make `weights_only=True` compatible with your use "
     "case: WeightsUnpickler error: Unsupported global: GLOBAL builtins.exec was not an allowed global by default. "
     "Please use `torch.serialization.add_safe_globals([exec])` to allowlist this global if you trust this "
     "class/function.", "Unsupported global: GLOBAL builtins.exec was not an allowed global by default"),
    ("Weights only load failed. Re-running with weights_only=False will work.\nWeightsUnpickler error: \n\n"
     "Unsupported operand 149\n\nCheck the documentation", "Unsupported operand 149"),
    ("Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will likely succeed.",
     "UnpicklingError"),
])
def test_unpickler_findings_keep_only_the_finding(text, finding):
    assert unpickler_finding(pickle.UnpicklingError(text)) == finding
