"""CUDA-graph capture of a whole training step (forward, backward, optimizer)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch import nn

from ..recipe.optim import CapturableSGD

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
