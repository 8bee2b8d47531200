"""Connectors and stepping-stone networks (docs/design.md, "The method").

Stone i joins one network's first i blocks to the other's remaining blocks through
connector C_i.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .errors import PartitionError
from .partitions import Partition, Shape, cut_shapes, split_blocks
from .zoo.atoms import decompose

ORDERS = ("shallow_first", "deep_first")
CONNECTORS = ("conv1x1", "conv3x3", "identity")


def _resampler(src: Shape, dst: Shape) -> nn.Module | None:
    """Return a module taking src's spatial size to dst's, None when equal; raise otherwise."""
    (_, hs, ws), (_, hd, wd) = src, dst
    if (hs, ws) == (hd, wd):
        return None
    if hs % hd == 0 and ws % wd == 0 and hs // hd == ws // wd:
        return nn.AvgPool2d(hs // hd)
    if hd % hs == 0 and wd % ws == 0 and hd // hs == wd // ws:
        return nn.Upsample(scale_factor=hd // hs, mode="nearest")
    raise PartitionError(f"spatial size {hs}x{ws} cannot be resampled to {hd}x{wd} by an integer factor")


def make_connector(kind: str, src: Shape, dst: Shape) -> nn.Module:
    """Return a connector mapping features of shape ``src`` (C, H, W) to ``dst``.

    ``conv1x1``/``conv3x3``: optional resampling (average pooling down, nearest upsampling up)
    then conv + BN. ``identity``: only when the shapes already match.

    Raises:
        PartitionError: identity between different shapes, or spatial sizes that are not an
            integer factor apart; unknown kind.
    """
    if kind == "identity":
        if tuple(src) != tuple(dst):
            raise PartitionError(f"identity connector needs equal shapes, got {src} -> {dst}")
        return nn.Identity()
    if kind not in CONNECTORS:
        raise PartitionError(f"unknown connector {kind!r}; choose one of {', '.join(CONNECTORS)}")
    layers = [r] if (r := _resampler(src, dst)) is not None else []
    k = 1 if kind == "conv1x1" else 3
    layers += [nn.Conv2d(src[0], dst[0], k, padding=k // 2, bias=False), nn.BatchNorm2d(dst[0])]
    return nn.Sequential(*layers)


class StoneOutputs(NamedTuple):
    """Logits of one Block-KD forward: student, teacher (no grad) and active stones."""

    student: Tensor
    teacher: Tensor
    stones: list[Tensor]


class Stones(nn.Module):
    """Teacher, student and the connectors of the active stepping-stones; each order's subclass
    has the forward, which runs the student and the teacher once each (the teacher under
    ``no_grad``, its BN in eval mode) and every active stone on the features cached at its cut.

    The subclasses are :class:`ShallowFirstStones` and :class:`DeepFirstStones` (a run's
    method builds the one of its order), and :class:`SteppingStones` (either order).

    Raises (constructor):
        PartitionError: a cut whose features cannot be connected, or a stone index outside
            the order's range.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, partition: Partition, *,
                 order: str = "shallow_first", connector: str = "conv1x1", active: Sequence[int] | None = None,
                 input_size: Shape = (3, 32, 32)) -> None:
        super().__init__()
        if order not in ORDERS:
            raise PartitionError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
        if len(partition.teacher) != len(partition.student):
            raise PartitionError(f"teacher has {len(partition.teacher)} cuts but student {len(partition.student)}")
        self.order, self.num_blocks = order, partition.num_blocks
        self.teacher = teacher.requires_grad_(False).eval()
        self.student = student
        t_dec, s_dec = decompose(teacher), decompose(student)
        # Plain attributes, not submodules: blocks and heads are views over teacher/student.
        self._t_blocks = split_blocks(t_dec, partition.teacher, "teacher")
        self._s_blocks = split_blocks(s_dec, partition.student, "student")
        self._t_head, self._s_head = _View(t_dec.head), _View(s_dec.head)
        n = self.num_blocks
        possible = range(1, n + 1) if order == "shallow_first" else range(1, n)
        self.active = list(possible) if active is None else sorted(set(active))
        if bad := [i for i in self.active if i not in possible]:
            raise PartitionError(f"stones {bad} do not exist for {order} with {n} blocks (valid: {list(possible)})")
        # Per stone, the student's BatchNorms after its cut (plain lists, not submodules).
        self._s_norms = {i: [m for block in self._s_blocks[i:] for m in block.modules()
                             if isinstance(m, nn.modules.batchnorm._BatchNorm)] for i in self.active}
        t_shapes = cut_shapes(teacher, partition.teacher, input_size)
        s_shapes = cut_shapes(student, partition.student, input_size)
        src, dst = (s_shapes, t_shapes) if order == "shallow_first" else (t_shapes, s_shapes)
        cut_names = [*zip(partition.teacher, partition.student, strict=True), ("end", "end")]
        self.connectors = nn.ModuleDict()
        for i in self.active:
            try:
                self.connectors[str(i)] = make_connector(connector, src[i - 1], dst[i - 1])
            except PartitionError as exc:
                t_cut, s_cut = cut_names[i - 1]
                raise PartitionError(f"stone {i} ({order}): student cut {s_cut!r} {s_shapes[i - 1]} cannot be "
                                     f"connected to teacher cut {t_cut!r} {t_shapes[i - 1]}: {exc}") from None

    def train(self, mode: bool = True) -> Stones:
        """Set train mode on student and connectors; the teacher always stays in eval."""
        super().train(mode)
        self.teacher.eval()
        return self



class ShallowFirstStones(Stones):
    """Stone i runs the student's first i blocks, connector C_i, then the teacher's remaining
    blocks: its gradients flow *through* the frozen teacher's blocks into the student; the
    teacher's weights get none."""

    def forward(self, x: Tensor) -> StoneOutputs:
        """Return student, teacher and active-stone logits for the batch ``x``."""
        feats = _features(self._s_blocks, x)
        y_s = self._s_head(feats[-1])
        with torch.no_grad():
            y_t = self._t_head(_run(self._t_blocks, x))
        stones = [self._t_head(_run(self._t_blocks[i:], self.connectors[str(i)](feats[i - 1])))
                  for i in self.active]
        return StoneOutputs(y_s, y_t, stones)


class DeepFirstStones(Stones):
    """Stone i runs the frozen teacher's first i blocks, connector C_i, then the student's
    remaining blocks."""

    def forward(self, x: Tensor) -> StoneOutputs:
        """Return student, teacher and active-stone logits for the batch ``x``."""
        with torch.no_grad():
            feats = _features(self._t_blocks, x)
            y_t = self._t_head(feats[-1])
        y_s = self._s_head(_run(self._s_blocks, x))
        stones = []
        for i in self.active:
            # The student's later blocks see connected teacher features here: they normalise
            # with these batches' statistics but must not fold them into the running
            # statistics that evaluation uses (only the student's own forward does).
            with batch_stats_only(self._s_norms[i]):
                stones.append(self._s_head(_run(self._s_blocks[i:], self.connectors[str(i)](feats[i - 1]))))
        return StoneOutputs(y_s, y_t, stones)


class SteppingStones(Stones):
    """The stepping-stones of either order: the forward of :class:`ShallowFirstStones` or
    :class:`DeepFirstStones`, by ``order``."""

    def forward(self, x: Tensor) -> StoneOutputs:
        """Return student, teacher and active-stone logits for the batch ``x``."""
        kind = DeepFirstStones if self.order == "deep_first" else ShallowFirstStones
        return kind.forward(self, x)  # the order's forward, on this instance


@contextlib.contextmanager
def batch_stats_only(norms: Sequence[nn.Module]) -> Iterator[None]:
    """Within the block, BatchNorm layers ``norms`` that track running statistics normalise
    with the batch's statistics (in train mode) and leave their running statistics and
    ``num_batches_tracked`` untouched."""
    tracking = [m for m in norms if m.track_running_stats]
    for m in tracking:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in tracking:
            m.track_running_stats = True


def _run(blocks: Sequence[nn.Module], x: Tensor) -> Tensor:
    for block in blocks:
        x = block(x)
    return x


def _features(blocks: Sequence[nn.Module], x: Tensor) -> list[Tensor]:
    """The output of each block in turn (the last is the network body's)."""
    feats = []
    for block in blocks:
        x = block(x)
        feats.append(x)
    return feats


class _View:
    """Holds a module without registering it, so it adds nothing to state_dict()."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, x: Tensor) -> Tensor:
        return self.module(x)
