"""How long `bkdsearch status` takes on a 100-trial study (issue 26: under 2 s on 2 cores).

Builds a SQLite study shaped like a finished search (per-epoch values, the user attrs a
trial records: run_config, flops, loss terms, test accuracy, wall time), then times the
command as a person runs it: a fresh process each time, imports included. Prints the median
and the slowest wall time of ``--repeats`` runs, the median CPU time (user + system: the
figure that holds on a loaded machine), and whether torch was imported on the way.

    python bench/status_latency.py --trials 100 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna


def build_study(path: Path, trials: int, epochs: int) -> str:
    """Write a ``trials``-trial study of ``epochs`` epochs each into ``path``; return its URL."""
    url = f"sqlite:///{path}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=url, study_name="bench", direction="maximize")
    dist = {"train.lr": optuna.distributions.FloatDistribution(0.01, 0.2, log=True),
            "blockkd.tau": optuna.distributions.FloatDistribution(1, 8),
            "blockkd.partition": optuna.distributions.CategoricalDistribution(["stage", "fine"])}
    run_config = {"name": "bench", "train": {"epochs": epochs, "lr": 0.05, "milestones": [150, 180, 210]},
                  "data": {"dataset": "cifar100", "root": "/data/cifar", "batch_size": 64},
                  "blockkd": {"cuts": {"teacher": ["layer1.17", "layer2.17"], "student": ["layer1.4", "layer2.4"]}}}
    for i in range(trials):
        acc = 60 + (i * 37 % 100) / 10
        curve = {e: acc * e / epochs for e in range(1, epochs + 1)}
        state = optuna.trial.TrialState.COMPLETE if i % 5 else optuna.trial.TrialState.PRUNED
        study.add_trial(optuna.trial.create_trial(
            state=state, value=acc if state == optuna.trial.TrialState.COMPLETE else None,
            params={"train.lr": 0.05, "blockkd.tau": 1 + i % 7, "blockkd.partition": "stage"}, distributions=dist,
            intermediate_values=curve,
            user_attrs={"run_config": run_config, "flops": {"student": 12_680_000, "train_step": 3.1e9},
                        "loss_terms": {f"stone{k}_kd": [1.0 / e for e in range(1, epochs + 1)] for k in range(3)},
                        "test_acc": acc - 0.5, "wall_time_s": 600.0, "worker": "host:1234"}))
    return url


def _children_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process's finished children: on a
    shared machine the honest cost of a command, whatever the others run meanwhile."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def main() -> None:
    """Build the study, time the command, print the figures (JSON with --out)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = build_study(Path(tmp) / "bench.db", args.trials, args.epochs)
        command = [sys.executable, "-m", "bkdsearch", "status", "--storage", url, "--study", "bench"]
        times, cpu = [], []
        for _ in range(args.repeats):
            start, used = time.perf_counter(), _children_cpu_s()
            subprocess.run(command, check=True, capture_output=True, env={**os.environ, "COLUMNS": "80"})
            times.append(time.perf_counter() - start)
            cpu.append(_children_cpu_s() - used)
        probe = subprocess.run([sys.executable, "-c", "import sys\nfrom bkdsearch.cli import main\n"
                                "try:\n    main(['status', '--storage', sys.argv[1], '--study', 'bench'])\n"
                                "except SystemExit:\n    pass\nprint('TORCH', 'torch' in sys.modules)", url],
                               check=True, capture_output=True, text=True)
    figures = {"trials": args.trials, "epochs": args.epochs, "median_s": round(statistics.median(times), 2),
               "max_s": round(max(times), 2), "median_cpu_s": round(statistics.median(cpu), 2),
               "load_1min": round(os.getloadavg()[0], 1), "torch_imported": probe.stdout.strip().endswith("True"),
               "cpus": os.cpu_count()}
    print(json.dumps(figures))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
