"""In-memory datasets: :class:`ArrayDataset`, the data error, and the seed derivation every
data module draws its random streams from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A whole dataset held in memory.

    Attributes:
        images: uint8 tensor (N, C, H, W) on the CPU. Shared by caches and loaders: never
            modify it in place.
        labels: int64 tensor (N,) with values in ``[0, num_classes)``.
        num_classes: number of classes.
        mean: per-channel mean used for normalisation, in 0..1 pixel units.
        std: per-channel standard deviation used for normalisation, in 0..1 pixel units.
        name: dataset name (``cifar10``, ``synthetic``...).
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be int64 of shape ({images.shape[0]},), got {labels.dtype} "
                             f"{tuple(labels.shape)}")
        c = images.shape[1]
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"mean and std need {c} values (one per channel)")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        _, c, h, w = self.images.shape
        return (int(c), int(h), int(w))

    def subset(self, indices: torch.Tensor) -> ArrayDataset:
        """Return the samples at ``indices`` (int64 tensor), same metadata."""
        return ArrayDataset(
            images=self.images.index_select(0, indices),
            labels=self.labels.index_select(0, indices),
            num_classes=self.num_classes,
            mean=self.mean,
            std=self.std,
            name=self.name,
        )


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _derive_seed(*parts: int) -> int:
    """A 63-bit seed mixing ``parts``; neighbouring inputs give unrelated streams."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts])
    return int(state.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _cpu_generator(*parts: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(_derive_seed(*parts))
    return g


DEFAULT_ROOT = Path("./data")
"""Where the torchvision datasets are looked for (and downloaded to) when no root is set."""
