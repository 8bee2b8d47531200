"""Feature layouts at a cut and the connectors between any two of them (DESIGN.md, "Atoms
and partitions"): NCHW feature maps, NHWC feature maps (Swin, MambaOut) and token sequences
NLC (ViT, DeiT, LeViT), with or without prefix tokens (CLS, distillation).

A connector brings the source to a feature map, resamples it to the destination's grid,
maps channels with today's conv + BN (:func:`bkdsearch.core.recipe.stones.make_connector` when both
sides are NCHW) and lays the result out as the destination expects: for tokens, the
destination's prefix tokens are synthesised as learned parameters and a learned positional
embedding (zero at start) is added, since a student's feature map carries no position the
teacher's suffix can rely on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import PartitionError
from .stones import CONNECTORS, make_connector

__all__ = ["CONNECTABLE", "Layout", "LayoutConnector", "infer_layout", "make_layout_connector"]

CONNECTABLE = ("NCHW", "NHWC", "NLC")
_MAX_PREFIX = 8  # prefix tokens looked for when the model does not say (CLS, dist, registers)


@dataclass(frozen=True)
class Layout:
    """How a cut's tensor is laid out.

    Attributes:
        kind: ``NCHW``, ``NHWC``, ``NLC`` (tokens), or ``NC`` (flat) and ``5D``... (window
            partitions), which no connector maps.
        channels: the width (C).
        grid: the spatial size (H, W); for tokens the patch grid.
        prefix: tokens before the grid's (CLS, distillation); 0 for feature maps.
    """

    kind: str
    channels: int
    grid: tuple[int, int] = (1, 1)
    prefix: int = 0


def _grid_of(tokens: int, aspect: float) -> tuple[int, int] | None:
    """(h, w) with h * w == tokens and h / w closest to ``aspect``, None when none is near."""
    if tokens <= 0:
        return None
    h = max(1, round(math.sqrt(tokens * aspect)))
    for cand in (h, h - 1, h + 1):
        if cand > 0 and tokens % cand == 0 and abs(cand / (tokens // cand) - aspect) <= 0.5 * aspect:
            return cand, tokens // cand
    return None


def infer_layout(shape: Sequence[int], input_size: Sequence[int], prefix_tokens: int | None = None) -> Layout:
    """Return the layout of a tensor of ``shape`` (without batch) in a model fed inputs of
    ``input_size`` (C, H, W).

    Three dims: NCHW when the last two are the spatial pair (equal for a square input), NHWC
    when the first two are. Two dims: tokens (L, C); the grid is the largest part of L
    matching the input's aspect after ``prefix_tokens`` (the model's ``num_prefix_tokens``
    when it has one, else the fewest up to 8). One dim: flat.
    """
    aspect = input_size[-2] / input_size[-1]
    if len(shape) == 3:
        a, b, c = shape
        nchw_fits = abs(b / c - aspect) <= abs(a / b - aspect)
        if nchw_fits or a == b == c:
            return Layout("NCHW", a, (b, c))
        return Layout("NHWC", c, (a, b))
    if len(shape) == 2:
        length, channels = shape
        tries = ([prefix_tokens] if prefix_tokens is not None else []) + list(range(_MAX_PREFIX + 1))
        for prefix in tries:
            grid = _grid_of(length - prefix, aspect)
            if grid is not None:
                return Layout("NLC", channels, grid, prefix)
        return Layout("NLC", channels, (1, length), 0)
    if len(shape) == 1:
        return Layout("NC", int(shape[0]))
    return Layout(f"{len(shape) + 1}D", int(shape[-1]))


def _to_map(x: Tensor, layout: Layout) -> Tensor:
    """The grid part of ``x`` as an NCHW feature map (prefix tokens dropped)."""
    if layout.kind == "NCHW":
        return x
    if layout.kind == "NHWC":
        return x.permute(0, 3, 1, 2)
    grid = x[:, layout.prefix:]
    return grid.transpose(1, 2).reshape(x.shape[0], layout.channels, *layout.grid)


class _Resample(nn.Module):
    """Resamples a feature map to a fixed size: average pooling down, nearest up."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2] >= self.size[0] and x.shape[-1] >= self.size[1]:
            return F.adaptive_avg_pool2d(x, self.size)
        return F.interpolate(x, size=self.size, mode="nearest")


class LayoutConnector(nn.Module):
    """Maps features laid out as ``src`` onto what the cut ``dst`` carries.

    Learned parts: the conv + BN core and, for a token destination, its prefix tokens and a
    positional embedding.
    """

    def __init__(self, kind: str, src: Layout, dst: Layout) -> None:
        super().__init__()
        self.src, self.dst = src, dst
        if kind == "identity":
            self.core: nn.Module = nn.Identity()
        else:
            src_shape, dst_shape = (src.channels, *src.grid), (dst.channels, *dst.grid)
            try:
                self.core = make_connector(kind, src_shape, dst_shape)
            except PartitionError:
                # Non-integer factors (LeViT's 7 -> 4, a token grid onto a feature map):
                # resample to the exact size, then today's conv + BN.
                self.core = nn.Sequential(_Resample(dst.grid),
                                          make_connector(kind, (src.channels, *dst.grid), dst_shape))
        if dst.kind == "NLC":
            self.prefix_tokens = nn.Parameter(torch.zeros(1, dst.prefix, dst.channels))
            nn.init.trunc_normal_(self.prefix_tokens, std=0.02)
            self.pos_embed = nn.Parameter(torch.zeros(1, dst.prefix + dst.grid[0] * dst.grid[1], dst.channels))

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x`` (laid out as ``src``) mapped onto the destination's layout."""
        if self.src == self.dst and isinstance(self.core, nn.Identity):
            return x
        y = self.core(_to_map(x, self.src))
        if self.dst.kind == "NCHW":
            return y
        if self.dst.kind == "NHWC":
            return y.permute(0, 2, 3, 1)
        tokens = y.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.prefix_tokens.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return tokens + self.pos_embed


def make_layout_connector(kind: str, src: Layout, dst: Layout) -> nn.Module:
    """Return a connector from a cut laid out as ``src`` to one laid out as ``dst``: today's
    conv + BN connector for NCHW -> NCHW, a :class:`LayoutConnector` otherwise.

    Raises:
        PartitionError: unknown kind; ``identity`` between different layouts or shapes; a flat
            (NC) side, which has no spatial or token structure to connect.
    """
    if kind not in CONNECTORS:
        raise PartitionError(f"unknown connector {kind!r}; choose one of {', '.join(CONNECTORS)}")
    if bad := [side.kind for side in (src, dst) if side.kind not in CONNECTABLE]:
        raise PartitionError(f"cannot connect a {bad[0]} tensor ({src} -> {dst}): connectors map "
                             f"{', '.join(CONNECTABLE)}; cut where the features are a map or tokens")
    if kind == "identity" and src != dst:
        raise PartitionError(f"identity connector needs equal layouts, got {src} -> {dst}")
    if src.kind == dst.kind == "NCHW":
        return make_connector(kind, (src.channels, *src.grid), (dst.channels, *dst.grid))
    return LayoutConnector(kind, src, dst)
