"""How fast, and in how little memory, bad input is refused (issue 25.3/25.8): each case runs the
real CLI in a fresh process and records its exit status, wall time, CPU time and peak RSS.

    python3 bench/refusals.py [--out refusals.json]

Every case must exit 2; the figures show that no size is allocated before the refusal (peak
RSS stays that of the interpreter and the spec's modules) and that ``run`` refuses as fast as
``validate`` (no torch import).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BASE = {
    "name": "refusals",
    "data": {"dataset": "synthetic", "synthetic": {"num_classes": 4, "train_size": 200, "test_size": 40}},
    "student": {"arch": "resnet8"},
    "method": "ce",
    "train": {"epochs": 1},
    "runtime": {"device": "cpu"},
}


def _spec(folder: Path, name: str, **synthetic: int) -> str:
    spec = {**BASE, "data": {**BASE["data"], "synthetic": {**BASE["data"]["synthetic"], **synthetic}}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def cases(folder: Path) -> list[tuple[str, list[str]]]:
    """(label, CLI arguments) of every refused input measured."""
    ok = _spec(folder, "ok")
    return [
        ("validate num_classes 1e9", ["validate", _spec(folder, "classes", num_classes=10**9)]),
        ("run num_classes 1e9", ["run", _spec(folder, "classes", num_classes=10**9)]),
        ("run train_size 1e12", ["run", _spec(folder, "size", train_size=10**12)]),
        ("run --devices 0-9999999", ["run", ok, "--devices", "0-9999999"]),
        ("run --set student.arch=resnet9999", ["run", ok, "--set", "student.arch=resnet9999"]),
        ("run --storage sqlite:///", ["run", ok, "--storage", "sqlite:///"]),
        ("run --timeout nan", ["run", ok, "--timeout", "nan"]),
        ("run --n-trials 1e12", ["run", ok, "--n-trials", str(10**12)]),
    ]


def measure(args: list[str], cwd: Path) -> dict[str, float | int]:
    """Run ``bkdsearch ARGS`` once; return its exit status, wall and CPU seconds, peak RSS (MB)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bkdsearch.cli", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own usage, peak RSS included
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"exit": proc.returncode, "wall_s": round(time.perf_counter() - started, 2),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    """Print one row per case (and write them as JSON with ``--out``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    options = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print("| input | exit | wall s | CPU s | peak RSS MB |\n|---|---:|---:|---:|---:|")
        for label, args in cases(folder):
            row = {"input": label, **measure(args, folder)}
            rows.append(row)
            print(f"| {label} | {row['exit']} | {row['wall_s']} | {row['cpu_s']} | {row['peak_rss_mb']} |", flush=True)
    if options.out:
        options.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
