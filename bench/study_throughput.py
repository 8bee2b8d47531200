"""Study throughput: K trials per device in one worker process vs K worker processes.

Each measurement runs a real study through the command line, on a fresh SQLite storage in a
fresh folder: ``bkdsearch run --trials-per-device K`` (one process, K trial threads, each on
its own CUDA stream on a GPU) beside K ``bkdsearch run`` processes sharing the study. Every
trial is the same Block-KD configuration (fixed partition and order, random temperature, no
pruner), so the work per trial is equal; the study's cap is K x ``--rounds`` trials.

Figures per (mode, K), median over ``--repeats``:

- ``trial_epochs_per_h``: finished trial-epochs per hour of wall clock, launch to exit
  (imports, data, FLOP count, graph capture and evaluation included);
- ``aggregate_img_s``: training images of all trials / the training window (first epoch
  start to last epoch end over all trials), the rate the device sustains;
- ``speedup``: ``aggregate_img_s`` over one trial's (K = 1).

    python bench/study_throughput.py --preset cpu [--ks 1,2,4] [--repeats 1] [--out FILE]
    python bench/study_throughput.py --preset gpu [--ks 1,2,4,8] [--out FILE]

The ``gpu`` preset is the scale issue's setting: resnet110 -> resnet32, 100 classes, batch
64, bf16, each trial's whole step in a CUDA graph. The teacher is an untrained stand-in
(throughput does not depend on what it knows).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import damped_teacher  # noqa: E402

PRESETS: dict[str, dict[str, Any]] = {
    # CPU-sized: minutes for K = 1, 2, 4 on two shared cores.
    "cpu": {"teacher": "resnet14", "student": "resnet8", "classes": 10, "batch": 64,
            "train_size": 704, "epochs": 3, "devices": "cpu"},
    # 200 steps of 64 per epoch: the capture (first step) is amortised, the run stays short.
    "gpu": {"teacher": "resnet110", "student": "resnet32", "classes": 100, "batch": 64,
            "train_size": 13440, "epochs": 3, "devices": "0"},
}
VAL_FRACTION = 1 / 21  # 640 of 13440 (gpu), 33 of 704 (cpu): validation stays a small part


def write_spec(folder: Path, name: str, preset: dict[str, Any], n_trials: int, teacher: str) -> Path:
    """Write the benchmark's spec into ``folder``; return its path."""
    spec = {
        "name": name, "seed": 0,
        "data": {"dataset": "synthetic", "val_fraction": VAL_FRACTION, "batch_size": preset["batch"],
                 "synthetic": {"num_classes": preset["classes"], "train_size": preset["train_size"],
                               "test_size": 256}},
        "teacher": {"arch": preset["teacher"], "checkpoint": teacher},
        "student": {"arch": preset["student"]},
        "method": "blockkd",
        "train": {"epochs": preset["epochs"], "lr": 0.05, "schedule": "cosine", "weight_decay": 5e-4},
        "blockkd": {"partition": "stage", "order": "shallow_first", "tau": {"float": [2.0, 6.0]},
                    "decay": 0.5},
        "partitions": {"stage": "stage_aligned"},
        "search": {"n_trials": n_trials, "sampler": "random", "pruner": "none"},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_study(mode: str, k: int, preset: dict[str, Any], rounds: int, teacher: str) -> dict[str, Any]:
    """Run one study (``threads``: one process with K trial threads; ``processes``: K
    processes with one each) in a fresh folder; return its figures.

    Raises:
        RuntimeError: a worker exited non-zero or a trial did not complete.
    """
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{mode}-k{k}-"))
    name = f"bench-{mode}-k{k}"
    spec = write_spec(folder, name, preset, k * rounds, teacher)
    storage = f"sqlite:///{folder / 'study.db'}"
    cli = [sys.executable, "-m", "bkdsearch.cli", "run", str(spec), "--storage", storage, "--quiet",
           "--devices", preset["devices"]]
    commands = [cli + ["--trials-per-device", str(k)]] if mode == "threads" else [cli] * k
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                                        os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    workers = [subprocess.Popen(c, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for c in commands]
    outputs = [w.communicate()[0] for w in workers]
    wall = time.perf_counter() - t0
    for w, text in zip(workers, outputs, strict=True):
        if w.returncode != 0:
            raise RuntimeError(f"{mode} K={k}: a worker exited {w.returncode}:\n{text[-3000:]}")
    study = optuna.load_study(study_name=name, storage=storage)
    trials = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    if len(trials) != k * rounds:
        raise RuntimeError(f"{mode} K={k}: {len(trials)} of {k * rounds} trials completed")
    rows = []
    for t in trials:
        metrics = folder / "studies" / name / f"trial-{t.number}" / "metrics.jsonl"
        rows += [r for r in map(json.loads, metrics.read_text().splitlines()) if "epoch" in r]
    images = sum(r["images_per_s"] * r["epoch_s"] for r in rows)
    window = max(r["time"] for r in rows) - min(r["time"] - r["epoch_s"] for r in rows)
    return {"mode": mode, "k": k, "trials": len(trials), "trial_epochs": len(rows), "wall_s": wall,
            "trial_epochs_per_h": len(rows) * 3600 / wall, "aggregate_img_s": images / window,
            "end_to_end_img_s": images / wall,
            "per_trial_img_s": statistics.median(t.user_attrs["images_per_s"] for t in trials)}


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over repeated runs of one (mode, K)."""
    row = dict(runs[0])
    for key in ("wall_s", "trial_epochs_per_h", "aggregate_img_s", "end_to_end_img_s", "per_trial_img_s"):
        row[key] = statistics.median(r[key] for r in runs)
    row["repeats"] = len(runs)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="gpu" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--ks", default="1,2,4,8")
    ap.add_argument("--modes", default="threads,processes")
    ap.add_argument("--rounds", type=int, default=1, help="trials per slot: the cap is K x rounds")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=None, help="override the preset's epochs per trial")
    ap.add_argument("--out", default=None, help="write the figures as JSON")
    args = ap.parse_args()
    preset = dict(PRESETS[args.preset])
    if args.epochs:
        preset["epochs"] = args.epochs
    device = torch.cuda.get_device_name(0) if preset["devices"] != "cpu" else f"cpu ({os.cpu_count()} cores)"
    result: dict[str, Any] = {"device": device, "torch": torch.__version__, "optuna": optuna.__version__,
                              "preset": preset, "rounds": args.rounds, "command": " ".join(sys.argv), "rows": []}
    print(f"{device}, torch {torch.__version__}, preset {args.preset}: {preset}", flush=True)
    teacher = damped_teacher(preset["teacher"], preset["classes"], tempfile.mkdtemp())
    for k in [int(v) for v in args.ks.split(",")]:
        for mode in args.modes.split(","):
            if k == 1 and mode == "processes" and "threads" in args.modes:
                continue  # one process with one trial either way
            row = median_row([run_study(mode, k, preset, args.rounds, teacher) for _ in range(args.repeats)])
            result["rows"].append(row)
            print(json.dumps({key: round(v, 1) if isinstance(v, float) else v for key, v in row.items()}),
                  flush=True)
            if args.out:  # after every row: a run cut short by a time limit keeps what it measured
                Path(args.out).write_text(json.dumps(result, indent=1))
    base = next(r["aggregate_img_s"] for r in result["rows"] if r["k"] == 1)
    print(f"\n{'mode':<10}{'K':>3}{'trial-epochs/h':>16}{'aggregate img/s':>17}{'speedup':>9}{'wall s':>8}")
    for r in result["rows"]:
        r["speedup"] = r["aggregate_img_s"] / base
        print(f"{r['mode']:<10}{r['k']:>3}{r['trial_epochs_per_h']:>16.0f}{r['aggregate_img_s']:>17.1f}"
              f"{r['speedup']:>8.2f}x{r['wall_s']:>8.0f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
