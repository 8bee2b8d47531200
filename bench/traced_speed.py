"""Speed of a traced model in a Block-KD step: ``torchvision:resnet18`` (student) and
``torchvision:resnet34`` (teacher) cut by tracing vs the zoo's ``resnet18`` / ``resnet34`` cut
by their atom tables: same weights, same connectors, same batch, same stage-aligned cuts.

One step = the stones' forward (student, teacher, three shallow-first stones), the Block-KD
loss, backward and an SGD step. Prints the median time of each over the repeats and the
ratio zoo / traced (>= 0.95: the traced model trains at the module's speed), and checks that
both paths give the same loss. On the CPU the times are this process's CPU time (one thread),
so that other processes on a shared machine do not decide the ratio; on a GPU, wall time.

    python bench/traced_speed.py [--batch 16] [--size 112] [--steps 5] [--repeats 5] [--device cpu] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bkdsearch.core.recipe.losses import blockkd_loss, kd_loss, stone_weights  # noqa: E402
from bkdsearch.core.recipe.partitions import Partition  # noqa: E402
from bkdsearch.core.recipe.stones import SteppingStones  # noqa: E402
from bkdsearch.core.recipe.traced import trace  # noqa: E402
from bkdsearch.core.recipe.traced_stones import TracedStones  # noqa: E402
from bkdsearch.zoo import create_model  # noqa: E402

CUTS = Partition(("layer1.2", "layer2.3", "layer3.5"), ("layer1.1", "layer2.1", "layer3.1"))


def build(size: int, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The zoo's stones and the traced stones over copies of the same weights."""
    torch.manual_seed(0)
    zoo_t, zoo_s = create_model("resnet34", 100), create_model("resnet18", 100)
    tv_t, tv_s = create_model("torchvision:resnet34", 100), create_model("torchvision:resnet18", 100)
    tv_t.load_state_dict(zoo_t.state_dict())
    tv_s.load_state_dict(zoo_s.state_dict())
    zoo = SteppingStones(zoo_t, zoo_s, CUTS, input_size=(3, size, size))
    traced = TracedStones(trace(tv_t, (3, size, size), "torchvision:resnet34"),
                          trace(tv_s, (3, size, size), "torchvision:resnet18"), CUTS)
    traced.connectors.load_state_dict(zoo.connectors.state_dict())
    return zoo.to(device).train(), traced.to(device).train()


def step(stones: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """One Block-KD training step; returns the loss."""
    out = stones(x)
    weights = stone_weights("shallow_first", stones.active, stones.num_blocks, 0.5)
    loss = blockkd_loss(out.student, out.teacher, out.stones, weights, y, alpha=1.0, beta=1.0, gamma=1.0, tau=4.0,
                        logit_loss=lambda s, t, _y: kd_loss(s, t, 4.0))
    opt.zero_grad(set_to_none=True)
    loss.total.backward()
    opt.step()
    return loss.total.item()


def timed(stones: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int,
          device: torch.device) -> tuple[float, float]:
    """Seconds per step: (wall, this process's CPU time). On a shared CPU machine the CPU time
    is the figure to compare (one thread: it is the step's compute, whatever else runs)."""
    opt = torch.optim.SGD([p for p in stones.parameters() if p.requires_grad], lr=0.0)  # lr 0: same weights each time
    step(stones, opt, x, y)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step(stones, opt, x, y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out")
    args = parser.parse_args()
    device = torch.device(args.device)
    zoo, traced = build(args.size, device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device)
    y = torch.randint(0, 100, (args.batch,), generator=g).to(device)
    zoo_opt = torch.optim.SGD([p for p in zoo.parameters() if p.requires_grad], lr=0.0)
    traced_opt = torch.optim.SGD([p for p in traced.parameters() if p.requires_grad], lr=0.0)
    same_loss = step(zoo, zoo_opt, x, y) == step(traced, traced_opt, x, y)
    zoo_times, traced_times = [], []
    for _ in range(args.repeats):  # interleaved, so that a busy machine slows both alike
        zoo_times.append(timed(zoo, x, y, args.steps, device))
        traced_times.append(timed(traced, x, y, args.steps, device))
    # CPU time on the CPU (robust to other processes), wall time on a GPU.
    which = 1 if device.type == "cpu" else 0
    zoo_s = statistics.median(t[which] for t in zoo_times)
    traced_s = statistics.median(t[which] for t in traced_times)
    result = {"device": str(device), "torch": torch.__version__, "batch": args.batch, "size": args.size,
              "steps": args.steps, "repeats": args.repeats, "clock": "process_time" if which else "wall",
              "zoo_step_s": zoo_s, "traced_step_s": traced_s, "ratio_zoo_over_traced": zoo_s / traced_s,
              "same_loss": same_loss, "zoo_times_wall_cpu": zoo_times, "traced_times_wall_cpu": traced_times}
    print(f"zoo resnet34->resnet18 step {zoo_s * 1e3:.1f} ms, traced torchvision: {traced_s * 1e3:.1f} ms "
          f"({result['clock']}), speed ratio traced/zoo {zoo_s / traced_s:.3f} (target >= 0.95), "
          f"same loss: {same_loss}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
