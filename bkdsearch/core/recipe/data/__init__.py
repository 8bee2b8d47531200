"""Datasets, validation split and device-resident loading.

Two kinds of data reach the engine:

* **In-memory arrays** (CIFAR-10/100, Fashion-MNIST, the built-in synthetic set): loaded once
  into an :class:`ArrayDataset` of uint8 images, copied to the training device once, and
  served by :class:`DeviceLoader`, which shuffles, augments (random crop with zero padding,
  horizontal flip) and normalises whole batches on the device. No worker processes, no
  per-image Python.
* **Image folders** (ImageNet-style ``root/train/<class>/*.jpg``, ``root/val/<class>/*.jpg``):
  decoded by a ``torch.utils.data.DataLoader`` (optionally with workers) and served by
  :class:`FolderLoader` with the same iteration interface.

Both loaders are reproducible: after ``set_epoch(e)`` the order and the augmentation of the
epoch are a pure function of ``(seed, e)``, so a run resumed at epoch ``e`` sees the batches
an uninterrupted run would have seen. Neither touches torch's global random state.

:func:`array_loaders` and ``folder.build_folder_data`` build a run's loaders; the names a
spec uses, the in-process cache and ``build_data`` (loaders by name) are the engine's
(:mod:`bkdsearch.core.engine.data`).

Modules: ``arrays`` (:class:`ArrayDataset`, seed derivation), ``synthetic`` (the built-in
synthetic set), ``sources`` (CIFAR, Fashion-MNIST idx files), ``splits`` (stratified
validation split), ``loader`` (:class:`DeviceLoader`), ``folder`` (image folders,
:class:`FolderLoader`) and ``build`` (:func:`array_loaders`, :class:`DataBundle`). Import
from ``bkdsearch.data``.
"""

from __future__ import annotations

from ..errors import DataError
from .arrays import ArrayDataset
from .build import DataBundle, array_loaders, as_cifar_input
from .folder import IMAGENET_MEAN, IMAGENET_STD, FolderLoader, build_folder_data, open_image_folder
from .loader import DeviceLoader
from .sources import DEBIAN_FASHION_MNIST_DIR, load_cifar10, load_cifar100, load_fashion_mnist, read_idx
from .splits import split_train_val, stratified_split_indices
from .synthetic import SyntheticConfig, load_synthetic, make_synthetic

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArrayDataset",
    "DataBundle",
    "DataError",
    "DeviceLoader",
    "FolderLoader",
    "SyntheticConfig",
    "array_loaders",
    "as_cifar_input",
    "build_folder_data",
    "load_cifar10",
    "load_cifar100",
    "load_fashion_mnist",
    "load_synthetic",
    "make_synthetic",
    "open_image_folder",
    "read_idx",
    "split_train_val",
    "stratified_split_indices",
]
