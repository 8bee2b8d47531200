"""Assembly: an in-memory dataset's train / validation / test loaders in a
:class:`DataBundle` (:func:`array_loaders`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..distributed import Ranks
from .arrays import ArrayDataset
from .loader import DeviceLoader, _EpochLoader
from .splits import keep_fraction, split_train_val


@dataclass
class DataBundle:
    """Everything a run needs from its data.

    Attributes:
        train: training loader (shuffled, augmented, full batches).
        val: loader of the validation split carved from the training set, or None.
        test: loader of the official test split (``root/val`` for image folders).
        num_classes: number of classes.
        input_size: (C, H, W) of a batch element.
        mean: per-channel normalisation mean (0..1 pixel units).
        std: per-channel normalisation std (0..1 pixel units).
        name: dataset name.
        classes: class names where the dataset has them (image folders), else None.
    """

    train: _EpochLoader
    val: _EpochLoader | None
    test: _EpochLoader
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    classes: tuple[str, ...] | None = field(default=None)


def as_cifar_input(ds: ArrayDataset) -> ArrayDataset:
    """Return 1x28x28 images zero-padded to 32x32 and repeated to 3 channels, so the CIFAR
    zoo models (3-channel stem, 8x8 final pooling) take them unchanged."""
    if ds.images.shape[1:] != (1, 28, 28):
        return ds
    images = F.pad(ds.images, (2, 2, 2, 2)).repeat(1, 3, 1, 1)
    return dataclasses.replace(ds, images=images, mean=ds.mean * 3, std=ds.std * 3)


def array_loaders(full: ArrayDataset, test: ArrayDataset, *, val_fraction: float, batch_size: int,
                  eval_batch_size: int, seed: int, device: str | torch.device, augment: bool = True,
                  crop_padding: int = 4, flip: bool = True, data_seed: int = 0, train_fraction: float = 1.0,
                  ranks: Ranks | None = None) -> DataBundle:
    """Return the loaders of an in-memory dataset: ``full`` (its training split) cut into
    train and validation (``val_fraction``, stratified by ``data_seed``), the train part cut to
    ``train_fraction``, and ``test``; ``flip``: random horizontal flips in training (with
    ``augment``).

    Raises:
        DataError: a training set that cannot fill one batch.
        ValueError: ``val_fraction`` outside [0, 1).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train, val = split_train_val(full, val_fraction, data_seed)
    train = keep_fraction(train, train_fraction, data_seed)
    train_loader = DeviceLoader(train, batch_size, device, train=True, seed=seed,
                                crop_padding=crop_padding if augment else 0, flip=flip and augment, ranks=ranks)

    def eval_loader(ds: ArrayDataset) -> DeviceLoader:
        return DeviceLoader(ds, eval_batch_size, device, train=False, seed=seed, ranks=ranks)

    return DataBundle(train=train_loader, val=eval_loader(val) if val is not None else None, test=eval_loader(test),
                      num_classes=full.num_classes, input_size=full.input_size, mean=full.mean, std=full.std,
                      name=full.name)
