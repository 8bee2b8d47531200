"""CUDA-graph capture of a whole training step (forward, backward, optimizer), and the
optimisers such a step can hold (their learning rate a device tensor)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..recipe import optim

# One CUDA graph capture at a time in the process (torch documents that only one may be
# underway): several runs may train in threads of one process, and torch.cuda.graph() starts
# with a device-wide synchronize and empty_cache, which must not land inside another
# thread's capture.
_CAPTURE_LOCK = threading.Lock()


class GraphedStep:
    """A whole training step (forward, backward, optimizer) captured once in a CUDA graph.

    Capture needs warm-up iterations, which would change the weights: the state of the
    method and optimizer is snapshotted before and restored after, so the first replayed
    step starts exactly where the eager path would. Inputs are copied into static buffers;
    the learning rate is read from the optimizer's device tensor at each replay.
    """

    def __init__(self, step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], method: nn.Module,
                 optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, warmup: int = 3) -> None:
        self.static_x = x.clone()
        self.static_y = y.clone()
        # Optimizer state (momentum buffers) must exist before capture so it is not
        # allocated inside the graph's private pool.
        for group in optimizer.param_groups:
            for p in group["params"]:
                if isinstance(optimizer, CapturableSGD) and group["momentum"]:
                    optimizer.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
        saved_model = {k: v.clone() for k, v in method.state_dict().items()}
        saved_opt = {p: {k: v.clone() for k, v in st.items() if isinstance(v, torch.Tensor)}
                     for p, st in optimizer.state.items()}
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                step(self.static_x, self.static_y)
        torch.cuda.current_stream().wait_stream(side)
        optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        # Other runs of this process keep training in their threads meanwhile. Without
        # ``stream``, torch.cuda.graph captures on one class-wide stream shared by every
        # thread; with the default "global" error mode, any thread's synchronising call
        # (an ``.item()`` at another run's epoch end) invalidates this capture, while
        # "thread_local" only forbids such calls in this thread. The lock keeps two
        # captures from overlapping.
        with _CAPTURE_LOCK, torch.cuda.graph(self.graph, stream=side, capture_error_mode="thread_local"):
            self.static_loss = step(self.static_x, self.static_y)
        with torch.no_grad():
            for k, v in method.state_dict().items():
                v.copy_(saved_model[k])
            for p, st in optimizer.state.items():
                before = saved_opt.get(p)
                for k, v in st.items():
                    if isinstance(v, torch.Tensor):
                        # State born during warm-up (AdamW's moments and step) restarts at zero.
                        v.copy_(before[k]) if before is not None else v.zero_()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Copy the batch in, replay the step, return the loss (valid until the next call)."""
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.graph.replay()
        return self.static_loss.clone()


def make_optimizer(recipe: optim.Recipe, params: list[nn.Parameter], capturable: bool = False) -> torch.optim.Optimizer:
    """Return the recipe's optimiser over ``params`` (:func:`bkdsearch.core.recipe.optim.make_optimizer`)
    or, when ``capturable``, the same update with its learning rate in a device tensor and no
    host synchronisation in its step, so a CUDA graph can capture it and replay it with a
    changing learning rate."""
    if not capturable:
        return optim.make_optimizer(recipe, params)
    device = params[0].device if params else torch.device("cpu")
    lr = torch.tensor(recipe.lr, device=device)
    if recipe.optimizer == "sgd":
        return CapturableSGD(params, lr=lr, momentum=recipe.momentum,
                             nesterov=recipe.nesterov and recipe.momentum > 0, weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=recipe.weight_decay, capturable=True)


class CapturableSGD(torch.optim.SGD):
    """torch.optim.SGD's update (dampening 0), written with foreach ops that read the
    learning rate from a device tensor, so the step can live inside a CUDA graph.

    State (``momentum_buffer``) has the same layout as torch.optim.SGD's, so checkpoints are
    interchangeable.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> None:  # type: ignore[override]
        """Apply one update to every parameter with a gradient."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            if wd:
                grads = torch._foreach_add(grads, params, alpha=wd)
            if momentum:
                bufs = []
                for p in params:
                    state = self.state[p]
                    if "momentum_buffer" not in state or state["momentum_buffer"] is None:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    bufs.append(state["momentum_buffer"])
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, grads)
                grads = torch._foreach_add(grads, bufs, alpha=momentum) if group["nesterov"] else bufs
            if isinstance(lr, torch.Tensor):
                torch._foreach_sub_(params, torch._foreach_mul(grads, lr))
            else:
                torch._foreach_add_(params, grads, alpha=-lr)
