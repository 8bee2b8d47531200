"""Assembly: :func:`build_data` (datasets → train / validation / test loaders in a
:class:`DataBundle`) and the shape facts known without loading (:func:`dataset_info`,
:func:`input_size_of`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..distributed import Ranks
from .arrays import DATASETS, ArrayDataset, array_source, load_arrays
from .loader import DeviceLoader, _EpochLoader
from .splits import keep_fraction, split_train_val
from .synthetic import SyntheticConfig


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


# Horizontal flips preserve the label of natural photos and of the synthetic set (it is
# generated mirror-symmetric); Fashion-MNIST's garments are centred and upright and are
# conventionally trained without flips.
_DEFAULT_FLIP = {"cifar10": True, "cifar100": True, "fashion_mnist": False, "synthetic": True}


BundleBuilder = Callable[..., "DataBundle"]
"""``builder(root, *, val_fraction, batch_size, eval_batch_size, seed, device, augment,
num_workers, flip, data_seed, image_size, train_fraction, ranks, decode) -> DataBundle`` for a dataset
that is not in memory."""

_BUNDLES: dict[str, BundleBuilder] = {}


def register_bundle(name: str) -> Callable[[BundleBuilder], BundleBuilder]:
    """Decorator registering the loader builder of dataset ``name`` (image folders)."""

    def wrap(builder: BundleBuilder) -> BundleBuilder:
        _BUNDLES[name] = builder
        return builder

    return wrap


def dataset_entry(name: str) -> Callable[..., Any]:
    """Return the function that serves dataset ``name``: its loader builder (image folders)
    or its in-memory source.

    Raises:
        ValueError: unknown ``name``.
    """
    return _BUNDLES[name] if name in _BUNDLES else array_source(name)


def as_cifar_input(ds: ArrayDataset) -> ArrayDataset:
    """Return 1x28x28 images zero-padded to 32x32 and repeated to 3 channels, so the CIFAR
    zoo models (3-channel stem, 8x8 final pooling) take them unchanged."""
    if ds.images.shape[1:] != (1, 28, 28):
        return ds
    images = F.pad(ds.images, (2, 2, 2, 2)).repeat(1, 3, 1, 1)
    return dataclasses.replace(ds, images=images, mean=ds.mean * 3, std=ds.std * 3)


def build_data(
    name: str,
    *,
    root: str | Path | None,
    download: bool = False,
    val_fraction: float = 0.1,
    batch_size: int = 64,
    eval_batch_size: int = 512,
    seed: int = 0,
    device: str | torch.device = "cpu",
    augment: bool = True,
    crop_padding: int = 4,
    num_workers: int = 0,
    synthetic: Any = None,
    flip: bool | None = None,
    data_seed: int = 0,
    image_size: int = 224,
    train_fraction: float = 1.0,
    ranks: Ranks | None = None,
    decode: str = "auto",
) -> DataBundle:
    """Load a dataset and build its train / validation / test loaders.

    Args:
        name: one of :data:`DATASETS`.
        root: data folder (``./data`` when None for the torchvision datasets; required for
            ``imagefolder``; ignored for ``synthetic``).
        download: let torchvision download CIFAR / Fashion-MNIST when absent.
        val_fraction: share of the training set held out for validation (0: no val loader).
        batch_size: training batch size (every training batch is full).
        eval_batch_size: batch size of the validation and test loaders.
        seed: the run's seed: training order and augmentation.
        device: where batches are produced (and in-memory images kept).
        augment: random crop + flip for training (False: shuffling only).
        crop_padding: zero padding of the random crop (in-memory datasets).
        num_workers: decoding processes for ``imagefolder``.
        synthetic: parameters of the synthetic dataset.
        flip: horizontal flips during training; None takes the dataset's convention (on for
            CIFAR, synthetic and image folders, off for Fashion-MNIST).
        data_seed: fixes the dataset itself: synthetic generation and the validation split.
            Kept apart from ``seed`` so every trial of a study validates on the same samples.
        image_size: crop size of ``imagefolder`` images.
        train_fraction: class-stratified share of the training split to train on (a search's
            lower fidelity).
        ranks: the run's processes: every loader yields this rank's shard of each batch
            (``batch_size`` and ``eval_batch_size`` stay the global batch sizes).
        decode: how ``imagefolder`` decodes: ``pil``, ``device`` or ``auto`` (see
            :class:`~bkdsearch.core.recipe.data.folder.FolderLoader`).

    Returns:
        A :class:`DataBundle`. Fashion-MNIST comes zero-padded to 3x32x32
        (:func:`as_cifar_input`), so the CIFAR zoo takes it unchanged.

    Raises:
        DataError: data missing, misplaced or corrupt (message says how to fix it).
        ValueError: unknown ``name`` or bad numeric arguments.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if name in _BUNDLES:
        return _BUNDLES[name](
            root,
            val_fraction=val_fraction,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            seed=seed,
            device=device,
            augment=augment,
            num_workers=num_workers,
            flip=flip,
            data_seed=data_seed,
            image_size=image_size,
            train_fraction=train_fraction,
            ranks=ranks,
            decode=decode,
        )
    full = load_arrays(name, root, "train", download=download, seed=data_seed, synthetic=synthetic)
    test = load_arrays(name, root, "test", download=download, seed=data_seed, synthetic=synthetic)
    if name == "fashion_mnist":
        full, test = as_cifar_input(full), as_cifar_input(test)
    train, val = split_train_val(full, val_fraction, data_seed)
    train = keep_fraction(train, train_fraction, data_seed)
    use_flip = _DEFAULT_FLIP[name] if flip is None else flip
    train_loader = DeviceLoader(
        train,
        batch_size,
        device,
        train=True,
        seed=seed,
        crop_padding=crop_padding if augment else 0,
        flip=use_flip and augment,
        ranks=ranks,
    )

    def eval_loader(ds: ArrayDataset) -> DeviceLoader:
        return DeviceLoader(ds, eval_batch_size, device, train=False, seed=seed, ranks=ranks)

    return DataBundle(
        train=train_loader,
        val=eval_loader(val) if val is not None else None,
        test=eval_loader(test),
        num_classes=full.num_classes,
        input_size=full.input_size,
        mean=full.mean,
        std=full.std,
        name=name,
    )


# --------------------------------------------------------------------------------------
# Metadata without loading
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """Shape facts of a dataset, known without reading any file.

    Attributes:
        num_classes: number of classes; None for ``imagefolder`` (depends on the folder).
        input_size: (C, H, W) of a batch element.
    """

    num_classes: int | None
    input_size: tuple[int, int, int]


def dataset_info(
    name: str, *, synthetic: SyntheticConfig | None = None, image_size: int = 224
) -> DatasetInfo:
    """Return the class count and input size of ``name`` (for FLOP tables, spec checks).

    Raises:
        ValueError: unknown ``name``.
    """
    if name == "cifar10":
        return DatasetInfo(10, (3, 32, 32))
    if name == "cifar100":
        return DatasetInfo(100, (3, 32, 32))
    if name == "fashion_mnist":  # served padded to 3x32x32 by build_data
        return DatasetInfo(10, (3, 32, 32))
    if name == "synthetic":
        cfg = synthetic or SyntheticConfig()
        return DatasetInfo(cfg.num_classes, (cfg.channels, cfg.image_size, cfg.image_size))
    if name == "imagefolder":
        return DatasetInfo(None, (3, image_size, image_size))
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


def input_size_of(data_cfg: Any) -> tuple[int, int, int]:
    """Return the (C, H, W) the models see for a run's data section.

    ``data_cfg`` needs ``dataset`` and ``synthetic`` (a mapping or None) attributes; an
    ``image_size`` attribute, where present, sets the crop size of image folders.

    Raises:
        ValueError: unknown dataset, or bad synthetic options.
    """
    synthetic = SyntheticConfig.from_dict(data_cfg.synthetic) if data_cfg.dataset == "synthetic" else None
    image_size = getattr(data_cfg, "image_size", None) or 224
    return dataset_info(data_cfg.dataset, synthetic=synthetic, image_size=image_size).input_size
