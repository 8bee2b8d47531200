"""`status` reads a study without importing torch (issue 26, item 9: under 2 s on 2 cores;
bench/status_latency.py measures it)."""

from __future__ import annotations

import subprocess
import sys

import optuna

PROBE = """
import sys
from bkdsearch.cli import main
try:
    main(["status", "--storage", sys.argv[1], "--study", "s"])
except SystemExit as exc:
    assert not exc.code, exc.code
print("torch imported:", "torch" in sys.modules)
"""


def test_status_of_a_study_imports_no_torch(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(storage=url, study_name="s", direction="maximize")
    dist = {"train.lr": optuna.distributions.FloatDistribution(0.01, 0.2)}
    for i in range(3):
        study.add_trial(optuna.trial.create_trial(value=50.0 + i, params={"train.lr": 0.05}, distributions=dist,
                                                  intermediate_values={1: 40.0, 2: 50.0 + i},
                                                  user_attrs={"test_acc": 49.0 + i, "flops": {"student": 1e6}}))
    done = subprocess.run([sys.executable, "-c", PROBE, url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "best trials by val_acc" in done.stdout and "52.00" in done.stdout
    assert done.stdout.strip().endswith("torch imported: False"), done.stdout
