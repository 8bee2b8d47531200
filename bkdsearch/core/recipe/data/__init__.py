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

:func:`build_data` is the one entry point; everything else is exposed for tests, benchmarks
and the exporter.

Modules: ``arrays`` (:class:`ArrayDataset`, :class:`DataError`, seed derivation),
``synthetic`` (the built-in synthetic set), ``sources`` (CIFAR, Fashion-MNIST idx files,
:func:`load_arrays` and its cache), ``splits`` (stratified validation split), ``loader``
(:class:`DeviceLoader`), ``folder`` (image folders, :class:`FolderLoader`) and ``build``
(:func:`build_data`, :class:`DataBundle`, :func:`dataset_info`). Import from
``bkdsearch.data``.
"""

from __future__ import annotations

from ..errors import DataError
from .arrays import DATASETS, ArrayDataset, array_source, clear_cache, load_arrays, register_source
from .build import (
    DataBundle,
    DatasetInfo,
    as_cifar_input,
    build_data,
    dataset_entry,
    dataset_info,
    input_size_of,
    register_bundle,
)
from .folder import IMAGENET_MEAN, IMAGENET_STD, FolderLoader, open_image_folder
from .loader import DeviceLoader
from .sources import DEBIAN_FASHION_MNIST_DIR, read_idx
from .splits import split_train_val, stratified_split_indices
from .synthetic import SyntheticConfig, make_synthetic

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArrayDataset",
    "DataBundle",
    "DataError",
    "DatasetInfo",
    "DeviceLoader",
    "FolderLoader",
    "SyntheticConfig",
    "array_source",
    "as_cifar_input",
    "build_data",
    "clear_cache",
    "dataset_entry",
    "dataset_info",
    "input_size_of",
    "load_arrays",
    "make_synthetic",
    "open_image_folder",
    "read_idx",
    "register_bundle",
    "register_source",
    "split_train_val",
    "stratified_split_indices",
]
