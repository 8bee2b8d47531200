"""Validation split: stratified by class, deterministic by seed."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .arrays import ArrayDataset, _cpu_generator


def stratified_split_indices(
    labels: torch.Tensor | Sequence[int], val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split sample indices into train and validation parts, stratified by class.

    The validation part holds ``round(N * val_fraction)`` samples, shared among classes in
    proportion to their sizes (largest remainders); which samples go where is a pure
    function of ``(labels, val_fraction, seed)``.

    Returns:
        ``(train_idx, val_idx)``: sorted int64 tensors, disjoint, together ``0..N-1``.

    Raises:
        ValueError: ``val_fraction`` not in (0, 1), or a split that would come out empty.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
    n = labels.numel()
    n_val = round(n * val_fraction)
    if n_val < 1 or n_val >= n:
        raise ValueError(f"val_fraction {val_fraction} of {n} samples leaves an empty train or val split")
    classes, counts = torch.unique(labels, return_counts=True)
    quota = counts.double() * (n_val / n)
    take = quota.floor().long()
    remainder = n_val - int(take.sum())
    if remainder:
        # Largest remainders first; ties broken by class order, so the result is stable.
        order = torch.argsort(quota - take.double(), descending=True, stable=True)
        take[order[:remainder]] += 1
    # A random order, then a stable sort by class: each class's members end up contiguous
    # and randomly ordered, and the first take[class] of them go to validation.
    g = _cpu_generator(seed, 0x5B117)
    shuffled = torch.randperm(n, generator=g)
    by_class = shuffled[torch.argsort(labels[shuffled], stable=True)]
    cls_index = torch.searchsorted(classes, labels[by_class])
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - start[cls_index]
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[by_class[rank < take[cls_index]]] = True
    return torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten()


def split_train_val(
    ds: ArrayDataset, val_fraction: float, seed: int
) -> tuple[ArrayDataset, ArrayDataset | None]:
    """Carve a validation set out of a training set (stratified, deterministic by ``seed``).

    Returns:
        ``(train, val)``; ``(ds, None)`` when ``val_fraction`` is 0. Both keep the original
        sample order, the dataset's mean/std and name.

    Raises:
        ValueError: ``val_fraction`` not in [0, 1), or too small/large for the dataset.
    """
    if val_fraction == 0:
        return ds, None
    train_idx, val_idx = stratified_split_indices(ds.labels, val_fraction, seed)
    return ds.subset(train_idx), ds.subset(val_idx)


def keep_fraction(ds: ArrayDataset, fraction: float, seed: int) -> ArrayDataset:
    """Return a class-stratified ``fraction`` of ``ds`` (all of it at 1), deterministic by
    ``seed``: a search's lower-fidelity training set.

    Raises:
        ValueError: ``fraction`` not in (0, 1], or too small to keep a sample.
    """
    if fraction == 1.0:
        return ds
    _, kept = stratified_split_indices(ds.labels, fraction, _FIDELITY_SALT ^ seed)
    return ds.subset(kept)


_FIDELITY_SALT = 0x7F1D
