"""In-memory datasets: :class:`ArrayDataset`, the data error, and the seed derivation every
data module draws its random streams from."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "fashion_mnist", "imagefolder", "synthetic")
"""Names accepted by :func:`build_data`."""


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


ArraySource = Callable[[Path, str, bool, int, Any], ArrayDataset]
"""``source(root, split, download, seed, options) -> ArrayDataset``: one in-memory dataset."""

_SOURCES: dict[str, ArraySource] = {}
_DEFAULT_ROOT = "./data"


def register_source(name: str) -> Callable[[ArraySource], ArraySource]:
    """Decorator registering the in-memory dataset ``name``'s source function."""

    def wrap(source: ArraySource) -> ArraySource:
        _SOURCES[name] = source
        return source

    return wrap


def array_source(name: str) -> ArraySource:
    """Return the source of in-memory dataset ``name``.

    Raises:
        ValueError: ``name`` is not an in-memory dataset.
    """
    try:
        return _SOURCES[name]
    except KeyError:
        raise ValueError(f"{name!r} is not an in-memory dataset; known: {', '.join(sorted(_SOURCES))}") from None


def load_arrays(name: str, root: str | Path | None, split: str, *, download: bool = False, seed: int = 0,
                synthetic: Any = None) -> ArrayDataset:
    """Load one split of an in-memory dataset.

    Results are cached in-process by their arguments, so repeated calls (several trials in
    one worker) share the same CPU tensors.

    Args:
        name: ``cifar10``, ``cifar100``, ``fashion_mnist`` or ``synthetic``.
        root: data folder for the torchvision datasets (``./data`` when None); ignored for
            ``synthetic``. For ``fashion_mnist`` the idx files are searched in
            ``root/FashionMNIST/raw`` (torchvision's layout), ``root/fashion-mnist``,
            ``root/fashion_mnist`` and ``root``, then in Debian's
            ``/usr/share/datasets/fashion-mnist``.
        split: ``"train"`` or ``"test"``.
        download: let torchvision download CIFAR / Fashion-MNIST into ``root`` when absent.
        seed: generation seed of the synthetic dataset (ignored otherwise).
        synthetic: synthetic dataset parameters (a SyntheticConfig or a mapping; defaults
            when None).

    Returns:
        The split as an :class:`ArrayDataset` (uint8 NCHW on the CPU; Fashion-MNIST keeps
        its single 28x28 channel). ``mean``/``std`` are those of the training split.

    Raises:
        DataError: the data is missing (and ``download`` is off), the download failed, or a
            file is corrupt or truncated.
        ValueError: unknown ``name`` or ``split``; ``imagefolder`` (not an in-memory set).
    """
    _check_split(split)
    if isinstance(synthetic, Mapping):
        synthetic = tuple(sorted(synthetic.items()))
    path = Path(_DEFAULT_ROOT if root is None else root).expanduser().resolve()
    return _cached_load(name, path, split, bool(download), int(seed) if name == "synthetic" else 0,
                        synthetic if name == "synthetic" else None)


@functools.lru_cache(maxsize=8)
def _cached_load(name: str, root: Path, split: str, download: bool, seed: int, options: Any) -> ArrayDataset:
    return array_source(name)(root, split, download, seed, options)


def clear_cache() -> None:
    """Forget every dataset cached by :func:`load_arrays`."""
    _cached_load.cache_clear()
