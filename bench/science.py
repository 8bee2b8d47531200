"""Evidence on real data: `bkdsearch compare` on Fashion-MNIST (Debian's offline package) with
one fixed teacher, ce / kd / dkd / blockkd x 3 seeds, each method at its default (published)
configuration. The table goes into bench/README.md, whatever it shows.

    python bench/science.py                   # CPU-sized: 20% of the training split, 2 epochs
    python bench/science.py --preset gpu      # full data, 30 epochs (a lent GPU)

Presets (the teacher, resnet20, is trained once with CE on the same data and cached):

- ``cpu``: 10,800 training images (a stratified 20% of the 54,000 left after a 10% validation
  split), student resnet8 for 2 epochs (cosine, lr 0.1), teacher 4 epochs.
- ``gpu``: all 54,000 training images, student 30 epochs, teacher 30 epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

PRESETS = {
    "cpu": {"train_fraction": 0.2, "epochs": 2, "teacher_epochs": 4, "batch_size": 128},
    "gpu": {"train_fraction": 1.0, "epochs": 30, "teacher_epochs": 30, "batch_size": 128},
}


def science_spec(preset: dict, device: str) -> dict:
    """Return the spec of the comparison for ``preset``."""
    return {
        "name": f"science_fashion_{'full' if preset['train_fraction'] == 1 else 'subset'}",
        "seed": 0,
        "data": {"dataset": "fashion_mnist", "val_fraction": 0.1,
                 "batch_size": preset["batch_size"], "train_fraction": preset["train_fraction"]},
        "teacher": {"arch": "resnet20",
                    "recipe": {"epochs": preset["teacher_epochs"], "lr": 0.1, "schedule": "cosine"}},
        "student": {"arch": "resnet8"},
        "method": "blockkd",
        "train": {"epochs": preset["epochs"], "lr": 0.1, "schedule": "cosine"},
        "runtime": {"device": device},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default="ce,kd,dkd,blockkd")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--studies", default="studies", help="where runs and the cached teacher go")
    parser.add_argument("--out", default=None, help="JSON results file")
    args = parser.parse_args(argv)

    import yaml

    from bkdsearch.compare import comparison_markdown, run_comparison
    from bkdsearch.spec import load_spec

    preset = PRESETS[args.preset]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "science.yaml"
        path.write_text(yaml.safe_dump(science_spec(preset, args.device), sort_keys=False))
        spec = load_spec(path)
    methods = [m for m in args.methods.split(",") if m]
    t0 = time.perf_counter()
    results = run_comparison(spec, methods, list(range(args.seeds)), studies_dir=Path(args.studies),
                             device=None if args.device == "auto" else args.device,
                             log=lambda m: print(m, flush=True))
    elapsed = time.perf_counter() - t0
    title = (f"Fashion-MNIST, resnet20 -> resnet8, {args.preset} preset "
             f"({preset['train_fraction']:.0%} of the training split, {preset['epochs']} epochs), "
             f"{args.seeds} seeds")
    print(comparison_markdown(results, title))
    print(f"wall time {elapsed / 60:.1f} min")
    if args.out:
        Path(args.out).write_text(json.dumps({"title": title, "preset": args.preset, "wall_s": elapsed,
                                              "host_cpus": os.cpu_count(),
                                              "methods": [r.__dict__ for r in results]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
