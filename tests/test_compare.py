"""`bkdsearch compare`: methods at their published defaults, several seeds each, one teacher,
a mean ± std table written as markdown and JSON."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import TINY_SPEC, write_spec

from bkdsearch.compare import comparison_configs
from bkdsearch.spec import Spec

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def test_comparison_configs_use_published_defaults_and_fresh_seeds() -> None:
    configs = comparison_configs(Spec.model_validate(TINY_SPEC), ["ce", "kd", "dkd"], [0, 1])
    assert [(c.method, c.seed) for c in configs] == [("ce", 0), ("ce", 1), ("kd", 0), ("kd", 1),
                                                     ("dkd", 0), ("dkd", 1)]
    kd = configs[2]
    assert (kd.loss.alpha, kd.loss.beta) == (0.1, 0.9)
    assert configs[0].digest() != configs[1].digest()  # each seed is its own run
    from bkdsearch.teacher import cached_teacher_path

    assert len({cached_teacher_path(c, "cache") for c in configs if c.method != "ce"}) == 1  # one teacher


def test_compare_runs_each_method_with_each_seed_and_writes_the_table(tmp_path: Path, teacher_ckpt: str) -> None:
    spec = copy.deepcopy(TINY_SPEC)
    spec["teacher"]["checkpoint"] = teacher_ckpt
    spec["train"]["epochs"] = 1
    path = write_spec(tmp_path / "s.yaml", spec)
    r = subprocess.run([sys.executable, "-m", "bkdsearch.cli", "compare", path, "--methods", "ce,kd", "--seeds", "2",
                        "--device", "cpu", "-o", str(tmp_path / "cmp")], capture_output=True, text=True, env=ENV,
                       cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "| ce | 2 |" in r.stdout and "| kd | 2 |" in r.stdout and "±" in r.stdout
    data = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    by_method = {m["method"]: m for m in data["methods"]}
    assert by_method["ce"]["seeds"] == [0, 1] and len(by_method["kd"]["test_acc"]) == 2
    assert (tmp_path / "cmp" / "comparison.md").read_text().startswith("### tiny: ce, kd x 2 seeds")
    # A second comparison reuses the finished runs (their folders are keyed by configuration).
    again = subprocess.run([sys.executable, "-m", "bkdsearch.cli", "compare", path, "--methods", "ce", "--seeds", "2",
                            "--device", "cpu", "-o", str(tmp_path / "cmp2")], capture_output=True, text=True,
                           env=ENV, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "cmp2" / "comparison.json").read_text())["methods"][0]["test_acc"] == \
        by_method["ce"]["test_acc"]
