"""What the benchmarks share: a stand-in teacher checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from bkdsearch.zoo import create_model


def damped_teacher(arch: str, num_classes: int, folder: str | Path) -> str:
    """Write an untrained ``arch`` whose residual branches are damped (bn2 scale 0.2), so its
    logits stay in a trained network's range instead of growing with depth; return the path.

    Throughput does not depend on what the teacher knows, and this costs no training.
    """
    torch.manual_seed(1)
    teacher = create_model(arch, num_classes=num_classes)
    with torch.no_grad():
        for name, module in teacher.named_modules():
            if name.endswith("bn2"):
                module.weight.fill_(0.2)
    path = Path(folder) / f"{arch}-{num_classes}.pt"
    torch.save(teacher.state_dict(), path)
    return str(path)
