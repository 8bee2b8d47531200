"""Folding a trial's fixed configuration into its script: the ``if`` chains it decides."""

from __future__ import annotations

import ast
import importlib.util
import sys
import textwrap
from pathlib import Path

from bkdsearch.export import fixed_config, render_script
from bkdsearch.export.fold import fixed_values, folds
from bkdsearch.export.script import FLAG_KEYS
from bkdsearch.spec import load_spec, resolve
from bkdsearch.spec.resolution import Defaults

SPECS = Path(__file__).resolve().parent.parent / "specs"


def _folded(source: str, fixed: dict) -> str:
    """``source`` with every fold applied as the exporter applies it (lines rewritten from
    the last fold up)."""
    source = textwrap.dedent(source).strip("\n")
    lines = source.splitlines()
    cuts = [f.cut for f in folds(ast.parse(source), lines, fixed)]
    for start, end, rewrite in sorted(cuts, key=lambda c: c[:2], reverse=True):
        lines[start:end] = rewrite(lines[start:end])
    return "\n".join(lines)


FIXED = {"method": "blockkd", "runtime.sync_bn": False, "runtime.compile": False, "teacher": {"arch": "r"},
         "loss.logit_loss": "kl"}


def test_a_chain_keeps_the_branch_the_fixed_values_take() -> None:
    got = _folded('''
        def f(cfg: RunConfig, x):
            if cfg.runtime.sync_bn and x:
                a = 1
            elif cfg.method == "ce":
                a = 2
            else:
                # why three
                a = 3
            if cfg.teacher is not None or x:
                b = 1
            if not cfg.runtime.compile:
                with x:
                    c = 1
            return a, b, c
    ''', FIXED)
    assert got == textwrap.dedent('''\
        def f(cfg: RunConfig, x):
            # why three
            a = 3
            b = 1
            with x:
                c = 1
            return a, b, c''')


def test_an_undecided_elif_stays_and_becomes_the_first_test() -> None:
    got = _folded('''
        def f(cfg: RunConfig, x):
            if cfg.method in ("ce", "kd"):
                a = 1
            elif x > 2:
                a = 2
            else:
                a = 3
            if x:
                a = 4
            if cfg.runtime.device == "cpu":
                a = 5
            return a
    ''', FIXED)
    assert got == textwrap.dedent('''\
        def f(cfg: RunConfig, x):
            if x > 2:
                a = 2
            else:
                a = 3
            if x:
                a = 4
            if cfg.runtime.device == "cpu":
                a = 5
            return a''')


def test_only_a_typed_run_config_is_folded() -> None:
    source = '''
        def untyped(cfg, x):
            if cfg.method == "ce":
                return 1
            return x

        def rebound(cfg: RunConfig, x):
            cfg = x
            if cfg.method == "ce":
                return 1
            return x

        def alone(cfg: RunConfig):
            if cfg.runtime.sync_bn:
                return 1
    '''
    assert _folded(source, FIXED) == textwrap.dedent(source).strip("\n")  # nothing decided may be cut
    held = _folded('''
        class T:
            def __init__(self, cfg: RunConfig) -> None:
                self.cfg = cfg

            def go(self, x):
                if self.cfg.runtime.sync_bn:
                    return 1
                return x
    ''', FIXED)
    assert "sync_bn" not in held and "return x" in held


def test_fixed_values_leave_out_what_a_flag_sets() -> None:
    config = {"train": {"epochs": 3, "lr": 0.1}, "data": {"root": "a"}, "seed": 1}
    assert fixed_values(config, {"train.epochs", "data.root"}) == {"train.lr": 0.1, "seed": 1}


def test_the_script_flags_set_only_the_flag_keys(tmp_path: Path) -> None:
    cfg = resolve(load_spec(SPECS / "r110_r32.yaml"), Defaults())
    script = tmp_path / "train.py"
    script.write_text(render_script(cfg, {"study": "test", "trial": 0}))
    spec = importlib.util.spec_from_file_location("exported_for_flags", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script loads
    spec.loader.exec_module(module)
    teacher = tmp_path / "t.pt"
    teacher.write_bytes(b"")
    _, changed = module.parse_args(["--epochs", "7", "--milestones", "2,4", "--data", "elsewhere",
                                    "--val-fraction", "0.3", "--device", "cpu", "--teacher-checkpoint", str(teacher)])
    fixed, old, new = fixed_config(cfg), fixed_values(cfg.model_dump(mode="json"), set()), fixed_values(changed, set())
    assert {k for k in fixed if new.get(k) != fixed[k]} == set()
    assert {k for k in FLAG_KEYS if new[k] != old[k]} == set(FLAG_KEYS)
    # What the fixed values decided is gone from the script: this run has no SyncBN and a KL loss.
    text = script.read_text()
    assert "GlobalBatchNorm" not in text and "def dkd_loss" not in text and "def kd_loss" in text
