"""Does the search pay? A real study on real data: search at a low fidelity, then `confirm`
the top 3 configurations and the baseline (the published Block-KD configuration, enqueued as
trial 0) with 3 fresh seeds each at the full preset recipe, and print (and write) the table:
baseline, winner, the difference with its 95% interval, and the CPU- or GPU-hours spent.

    python bench/search_value.py                       # cpu preset, ~30 min on 2 idle cores
    python bench/search_value.py --preset gpu          # a lent GPU, packed trials
    python bench/search_value.py --table-only          # the table of a finished (or running) study

Presets (resnet20 -> resnet8; the teacher is trained once with CE on the full recipe's data,
then given to every trial as its checkpoint, so search and confirmation distil from one teacher):

- ``cpu``: Fashion-MNIST (Debian's package), a class-stratified 10% of the 54,000 training
  images left after the 10% validation split (5,400); confirmations 1 epoch on all of them;
  search trials 1 epoch on 4% (2,160); 16 search trials; teacher 4 epochs; 2 trials at once
  in one worker. (One epoch keeps the whole run near 30 minutes on 2 idle cores: the 16,000
  validation and test images every run evaluates cost as much as its training.)
  Validation is the whole 6,000-image split, test the official 10,000.
- ``gpu``: all of Fashion-MNIST (or CIFAR-100 with resnet56 -> resnet20 when ``--cifar100-root``
  holds it); confirmations 30 epochs; search trials 8 epochs on 25%; 32 search trials;
  teacher 30 epochs; 4 trials per GPU on streams.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"train_fraction": 0.1, "epochs": 1, "search_epochs": 1, "search_fraction": 0.04, "n_trials": 16,
            "teacher_epochs": 4, "batch_size": 128, "devices": "cpu", "trials_per_device": 2},
    "gpu": {"train_fraction": 1.0, "epochs": 30, "search_epochs": 8, "search_fraction": 0.25, "n_trials": 32,
            "teacher_epochs": 30, "batch_size": 128, "devices": "auto", "trials_per_device": 4},
}

PUBLISHED = {"train.lr": 0.1, "blockkd.partition": "stage", "blockkd.order": "shallow_first",
             "blockkd.tau": 4.0, "blockkd.beta": 1.0, "blockkd.decay": 0.5}
"""The baseline, enqueued as trial 0: Block-KD's published configuration (stage-aligned,
shallow-first, tau 4, decay 1/2, alpha = beta = 1) at the preset's learning rate."""


def bench_spec(preset: dict[str, Any], name: str, teacher_checkpoint: str | None,
               cifar100_root: str | None) -> dict[str, Any]:
    """Return the study's spec for ``preset`` (``teacher_checkpoint``: None while the teacher
    is being trained)."""
    cifar = cifar100_root is not None
    teacher: dict[str, Any] = {"arch": "resnet56" if cifar else "resnet20",
                               "recipe": {"epochs": preset["teacher_epochs"], "lr": 0.1, "schedule": "cosine"}}
    if teacher_checkpoint:
        teacher["checkpoint"] = teacher_checkpoint
    return {
        "name": name, "seed": 0,
        "data": {"dataset": "cifar100" if cifar else "fashion_mnist", "root": cifar100_root or "./data",
                 "val_fraction": 0.1, "batch_size": preset["batch_size"],
                 "train_fraction": preset["train_fraction"]},
        "teacher": teacher,
        "student": {"arch": "resnet20" if cifar else "resnet8"},
        "method": "blockkd",
        "train": {"epochs": preset["epochs"], "schedule": "cosine",
                  "lr": {"float": [0.03, 0.3], "log": True, "default": 0.1}},
        "blockkd": {"partition": {"choice": ["stage", "fine"]},
                    "order": {"choice": ["shallow_first", "deep_first"]},
                    "tau": {"float": [1.0, 8.0], "default": 4.0},
                    "beta": {"float": [0.25, 4.0], "log": True, "default": 1.0},
                    "decay": {"choice": [0.5, 1.0]}},
        "partitions": {"stage": "stage_aligned", "fine": {"uniform": 4}},
        "search": {"n_trials": preset["n_trials"], "sampler": "tpe", "pruner": "none",
                   "fidelity": {"epochs": preset["search_epochs"], "train_fraction": preset["search_fraction"]},
                   "enqueue": [PUBLISHED], "confirm_top": 3, "confirm_seeds": 3},
    }


def _cli(args: list[str], cwd: Path, log: Path) -> str:
    """Run ``bkdsearch ARGS`` in ``cwd``, its output appended to ``log`` (and echoed); return
    the output. Raises SystemExit with its code when it fails."""
    proc = subprocess.Popen([sys.executable, "-m", "bkdsearch.cli", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    lines = []
    with log.open("a") as sink:
        for line in proc.stdout:
            print(line, end="", flush=True)
            sink.write(line)
            lines.append(line)
    if proc.wait() != 0:
        raise SystemExit(f"bkdsearch {' '.join(args)} failed with exit {proc.returncode}; see {log}")
    return "".join(lines)


def _teacher_path(spec_path: Path, work: Path) -> Path:
    """Where `bkdsearch teacher` (run in ``work``) cached the spec's CE-trained teacher.

    Raises:
        SystemExit: it is not there."""
    from bkdsearch.spec import Defaults, load_spec, resolve
    from bkdsearch.teacher import cached_teacher_path

    path = cached_teacher_path(resolve(load_spec(spec_path), Defaults()), work / "studies" / "teachers")
    if not path.is_file():
        raise SystemExit(f"no teacher at {path} after `bkdsearch teacher`")
    return path


def _gpus() -> int:
    """GPUs the workers used (``--devices auto``: every visible one)."""
    import torch

    return torch.cuda.device_count()


def _write_spec(path: Path, spec: dict[str, Any]) -> None:
    import yaml

    path.write_text(yaml.safe_dump(spec, sort_keys=False))


def table(storage: str, name: str) -> tuple[list[str], dict[str, Any]]:
    """Return the markdown table of a study's confirmations (every confirmed configuration:
    n, val and test mean ± std, training GFLOPs per image, s/epoch; then the gain lines) and
    the same as JSON."""
    from bkdsearch.search import load_study
    from bkdsearch.search.confirm import confirmed_configurations, cost_text, gain_of

    study = load_study(storage, name)
    configs = confirmed_configurations(study)
    gain = gain_of(study)
    lines = ["| configuration | n | val acc (%) | test acc (%) | train GFLOPs/img | s/epoch | params |",
             "|---|---:|---:|---:|---:|---:|---|"]
    rows = []
    for c in configs:
        val, test = list(c.val.values()), list(c.test.values())
        params = c.runs[0].params
        lines.append(f"| {c.label}{' **winner**' if gain and c is gain.winner else ''} | {c.n} | {_ms(val)} | "
                     f"{_ms(test)} | {_num(c.train_gflops, '.3f')} | {_num(c.epoch_s, '.1f')} | "
                     + ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in params.items()) + " |")
        rows.append({"origin": c.origin, "baseline": c.baseline, "val": c.val, "test": c.test,
                     "train_gflops": c.train_gflops, "epoch_s": c.epoch_s, "params": params, "cost": cost_text(c)})
    said = gain.lines() if gain is not None else ["no confirmed baseline yet"]
    intervals = {} if gain is None else {k: None if i is None else i.__dict__
                                         for k, i in (("val", gain.val), ("test", gain.test))}
    return [*lines, "", *said], {"configurations": rows, "gain": said, "intervals": intervals}


def _ms(values: list[float]) -> str:
    import statistics

    if not values:
        return "-"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--workdir", default=None, help="where the study, teacher and log go "
                        "(default: bench/results/search_value_<preset>)")
    parser.add_argument("--cifar100-root", default=None, help="gpu preset: CIFAR-100 here instead of Fashion-MNIST")
    parser.add_argument("--table-only", action="store_true", help="print the table of the study in --workdir")
    args = parser.parse_args(argv)

    preset = PRESETS[args.preset]
    work = Path(args.workdir or f"bench/results/search_value_{args.preset}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    name = f"search_value_{args.preset}"
    storage = f"sqlite:///{work}/studies/{name}.db"
    log, spec_path = work / "log.txt", work / "spec.yaml"
    if not args.table_only:
        t0 = time.perf_counter()
        # The teacher first, on the full recipe's data; then every trial takes it as its checkpoint.
        _write_spec(spec_path, bench_spec(preset, name, None, args.cifar100_root))
        said = _cli(["teacher", str(spec_path)] + (["--device", "cpu"] if args.preset == "cpu" else []), work, log)
        checkpoint = _teacher_path(spec_path, work)
        teacher_acc = re.search(r"^test accuracy ([0-9.]+)%", said, re.M)
        _write_spec(spec_path, bench_spec(preset, name, str(checkpoint), args.cifar100_root))
        devices = ["--devices", preset["devices"], "--trials-per-device", str(preset["trials_per_device"])]
        _cli(["run", str(spec_path), "--quiet", *devices], work, log)
        t_search = time.perf_counter() - t0
        _cli(["confirm", str(spec_path), "--quiet", *devices], work, log)
        wall = time.perf_counter() - t0
        used = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        cpu_s = sum(u.ru_utime + u.ru_stime for u in used)
        accounting = {"teacher_test_acc": float(teacher_acc.group(1)) if teacher_acc else None,
                      "wall_s": wall, "search_wall_s": t_search, "cpu_hours": cpu_s / 3600,
                      "gpu_hours": wall / 3600 * _gpus() if args.preset == "gpu" else 0.0,
                      "host_cpus": os.cpu_count()}
        (work / "accounting.json").write_text(json.dumps(accounting, indent=2))
    accounting_path = work / "accounting.json"
    accounting = json.loads(accounting_path.read_text()) if accounting_path.is_file() else {}
    lines, data = table(storage, name)
    if accounting:
        spent = (f"{accounting['gpu_hours']:.2f} GPU-hours" if accounting.get("gpu_hours")
                 else f"{accounting['cpu_hours']:.2f} CPU-hours")
        lines.append(f"spent: {spent} ({accounting['wall_s'] / 60:.1f} min wall, search "
                     f"{accounting['search_wall_s'] / 60:.1f} min incl. the teacher; {accounting['host_cpus']} CPUs)")
    print("\n".join(lines))
    (work / "table.md").write_text("\n".join(lines) + "\n")
    (work / "table.json").write_text(json.dumps({**data, "accounting": accounting, "preset": args.preset},
                                                indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
