"""Datasets by name: the recipe's data sources under the names a spec uses, cached in-process
(the trials of one worker share one copy of a dataset), :func:`build_data` (a dataset's
loaders by name) and the shape facts known without loading (:func:`dataset_info`,
:func:`input_size_of`)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..recipe.data import folder, sources
from ..recipe.data import synthetic as synthetic_set
from ..recipe.data.arrays import DEFAULT_ROOT, ArrayDataset, _check_split
from ..recipe.data.build import DataBundle, array_loaders, as_cifar_input
from ..recipe.data.synthetic import SyntheticConfig
from ..recipe.distributed import Ranks
from ..recipe.errors import DataError

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "fashion_mnist", "imagefolder", "synthetic")
"""Names accepted by :func:`build_data`."""

# Horizontal flips preserve the label of natural photos and of the synthetic set (it is
# generated mirror-symmetric); Fashion-MNIST's garments are centred and upright and are
# conventionally trained without flips.
_DEFAULT_FLIP = {"cifar10": True, "cifar100": True, "fashion_mnist": False, "synthetic": True}

ArraySource = Callable[[Path | None, str, bool, int, Any], ArrayDataset]
"""``source(root, split, download, seed, options) -> ArrayDataset``: one in-memory dataset;
``root`` is None when the user set none (the source then looks in its default places)."""

_SOURCES: dict[str, ArraySource] = {
    "cifar10": sources.load_cifar10, "cifar100": sources.load_cifar100,
    "fashion_mnist": sources.load_fashion_mnist, "synthetic": synthetic_set.load_synthetic,
}


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
        root: data folder for the torchvision datasets; ignored for ``synthetic``. For
            ``fashion_mnist`` the idx files are searched in ``root/FashionMNIST/raw``
            (torchvision's layout), ``root/fashion-mnist``, ``root/fashion_mnist`` and
            ``root``. When None: ``./data`` the same way, then (Fashion-MNIST) Debian's
            ``/usr/share/datasets/fashion-mnist``. A root that is set is never replaced
            by another folder.
        split: ``"train"`` or ``"test"``.
        download: let torchvision download CIFAR / Fashion-MNIST into ``root`` when absent.
        seed: generation seed of the synthetic dataset (ignored otherwise).
        synthetic: synthetic dataset parameters (a SyntheticConfig or a mapping; defaults
            when None).

    Returns:
        The split as an :class:`ArrayDataset` (uint8 NCHW on the CPU; Fashion-MNIST keeps
        its single 28x28 channel). ``mean``/``std`` are those of the training split.

    Raises:
        DataError: ``root`` is set but is not a folder (and ``download`` is off), the data
            is missing, the download failed, or a file is corrupt or truncated.
        ValueError: unknown ``name`` or ``split``; ``imagefolder`` (not an in-memory set).
    """
    _check_split(split)
    if isinstance(synthetic, Mapping):
        synthetic = tuple(sorted(synthetic.items()))
    path = None if root is None else Path(root).expanduser().resolve()
    if path is not None and name != "synthetic" and not download and not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        debian = ", then /usr/share/datasets/fashion-mnist" if name == "fashion_mnist" else ""
        defaults = f"{DEFAULT_ROOT.resolve()}{debian}"
        raise DataError(f"data root {path} {what}; fix data.root, remove it to read {name} from the default "
                        f"places ({defaults}), or pass download: true to fetch it into {path}")
    return _cached_load(name, path, split, bool(download), int(seed) if name == "synthetic" else 0,
                        synthetic if name == "synthetic" else None)


@functools.lru_cache(maxsize=8)
def _cached_load(name: str, root: Path | None, split: str, download: bool, seed: int, options: Any) -> ArrayDataset:
    return array_source(name)(root, split, download, seed, options)


def clear_cache() -> None:
    """Forget every dataset cached by :func:`load_arrays`."""
    _cached_load.cache_clear()


BundleBuilder = Callable[..., DataBundle]
"""``builder(root, *, val_fraction, batch_size, eval_batch_size, seed, device, augment,
num_workers, flip, data_seed, image_size, train_fraction, ranks, decode) -> DataBundle`` for a dataset
that is not in memory."""

_BUNDLES: dict[str, BundleBuilder] = {"imagefolder": folder.build_folder_data}


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
    return array_loaders(full, test, val_fraction=val_fraction, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         seed=seed, device=device, augment=augment, crop_padding=crop_padding,
                         flip=_DEFAULT_FLIP[name] if flip is None else flip,
                         data_seed=data_seed, train_fraction=train_fraction, ranks=ranks)


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
