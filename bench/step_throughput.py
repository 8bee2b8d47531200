"""Train-step throughput of ce, kd and blockkd (resnet110 -> resnet32, 32x32), eager vs optimised.

Optimised = the engine's default GPU path (whole step captured in a CUDA graph, bf16 autocast,
channels_last). On CPU only the eager path exists; the figures of interest are the ratios
blockkd/kd and blockkd/ce. On a GPU the script first checks that the graphed path gives the
eager path's per-step losses over two epochs with a changing learning rate.

    python bench/step_throughput.py [--batches 64,128,512] [--steps 30] [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import damped_teacher  # noqa: E402

from bkdsearch.core.engine.trainer import Trainer  # noqa: E402
from bkdsearch.spec import (  # noqa: E402
    BlockKDConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    PartitionConfig,
    Recipe,
    RunConfig,
    RuntimeConfig,
)

PARTITION = PartitionConfig(name="stage", teacher=["layer1.17", "layer2.17"], student=["layer1.4", "layer2.4"])


def config(method: str, batch: int, graph: bool, device: str, epochs: int = 1) -> RunConfig:
    return RunConfig(
        name="bench", seed=0, method=method,
        data=DataConfig(dataset="synthetic", val_fraction=0.0, batch_size=batch,
                        synthetic={"num_classes": 100, "train_size": max(batch * 8, 2048), "test_size": 256}),
        teacher=ModelConfig(arch="resnet110"), student=ModelConfig(arch="resnet32"),
        train=Recipe(epochs=epochs, lr=0.05, schedule="cosine", weight_decay=5e-4, warmup_epochs=1),
        loss=LossConfig(tau=4.0, alpha=1.0, beta=1.0, gamma=0.0, decay=0.5),
        blockkd=BlockKDConfig(partition=PARTITION) if method == "blockkd" else None,
        runtime=RuntimeConfig(device=device, cuda_graph="on" if graph else "off",
                              amp="auto" if device != "cpu" else "off"),
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(cfg: RunConfig, teacher: str, steps: int, repeats: int) -> float:
    trainer = Trainer(cfg, tempfile.mkdtemp(), teacher_weights=teacher)
    loader = trainer.data.train
    loader.set_epoch(0)
    batches = [b for _, b in zip(range(steps), loader, strict=False)]
    trainer.method.train()
    for x, y in batches[:3]:  # warm-up (and capture, for the graphed path)
        trainer.train_step(x, y)
    sync(trainer.device)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x, y in batches:
            trainer.train_step(x, y)
        sync(trainer.device)
        rates.append(len(batches) * cfg.data.batch_size / (time.perf_counter() - t0))
    return statistics.median(rates)


def exactness(teacher: str, device: str) -> dict[str, float]:
    """Per-step losses of eager vs graphed blockkd over 2 epochs (lr changes every step)."""
    losses = {}
    for graph in (False, True):
        cfg = config("blockkd", 64, graph, device, epochs=2)
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"synthetic": {
            "num_classes": 100, "train_size": 640, "test_size": 64}})})
        trainer = Trainer(cfg, tempfile.mkdtemp(), teacher_weights=teacher)
        trace = []
        from bkdsearch.core.recipe.optim import lr_at

        steps = len(trainer.data.train)
        trainer.method.train()
        for epoch in range(2):
            trainer.data.train.set_epoch(epoch)
            for i, (x, y) in enumerate(trainer.data.train):
                trainer._set_lr(lr_at(cfg.train, epoch, i, steps))
                trace.append(trainer.train_step(x, y)[0].item())
        losses[graph] = trace
    diffs = [abs(a - b) / max(abs(a), 1e-6) for a, b in zip(losses[False], losses[True], strict=True)]
    return {"steps": len(diffs), "max_rel_diff": max(diffs), "first_eager": losses[False][:3],
            "first_graph": losses[True][:3], "last_eager": losses[False][-1], "last_graph": losses[True][-1]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batches", default="64,128,512")
    ap.add_argument("--methods", default="ce,kd,blockkd")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    result = {"device": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "command": " ".join(sys.argv), "rows": []}
    print(f"device {name}, torch {torch.__version__}", flush=True)
    teacher = damped_teacher("resnet110", 100, tempfile.mkdtemp())
    if device.startswith("cuda"):
        result["exactness"] = exactness(teacher, device)
        print("exactness", result["exactness"], flush=True)
    modes = [False, True] if device.startswith("cuda") else [False]
    for batch in [int(b) for b in args.batches.split(",")]:
        for method in args.methods.split(","):
            row = {"batch": batch, "method": method}
            for graph in modes:
                rate = throughput(config(method, batch, graph, device), teacher, args.steps, args.repeats)
                row["graphed" if graph else "eager"] = round(rate, 1)
            result["rows"].append(row)
            print(row, flush=True)
    for batch in {r["batch"] for r in result["rows"]}:
        by = {r["method"]: r for r in result["rows"] if r["batch"] == batch}
        key = "graphed" if device.startswith("cuda") else "eager"
        if {"blockkd", "kd", "ce"} <= by.keys():
            print(f"batch {batch}: blockkd/kd {by['blockkd'][key] / by['kd'][key]:.3f}, "
                  f"blockkd/ce {by['blockkd'][key] / by['ce'][key]:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
