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
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import math
import random
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

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
    "as_cifar_input",
    "build_data",
    "clear_cache",
    "dataset_info",
    "input_size_of",
    "load_arrays",
    "make_synthetic",
    "open_image_folder",
    "read_idx",
    "split_train_val",
    "stratified_split_indices",
]

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "fashion_mnist", "imagefolder", "synthetic")
"""Names accepted by :func:`build_data`."""

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the idx files."""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Per-channel statistics of the training splits (0..1 pixel units), the values the CIFAR
# distillation literature normalises with; test splits are normalised with the same numbers.
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}

_DEFAULT_ROOT = "./data"


class DataError(Exception):
    """Missing, misplaced or corrupt data (the CLI reports it and exits with code 2).

    The message says what was looked for, where, and how to fix it.
    """


# --------------------------------------------------------------------------------------
# In-memory datasets
# --------------------------------------------------------------------------------------


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
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be a uint8 (N, C, H, W) tensor, got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must be int64 of shape ({self.images.shape[0]},), got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )
        c = self.images.shape[1]
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


def _root_path(root: str | Path | None) -> Path:
    return Path(_DEFAULT_ROOT if root is None else root).expanduser().resolve()


def load_arrays(
    name: str,
    root: str | Path | None,
    split: str,
    *,
    download: bool = False,
    seed: int = 0,
    synthetic: SyntheticConfig | None = None,
) -> ArrayDataset:
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
        synthetic: synthetic dataset parameters (defaults when None).

    Returns:
        The split as an :class:`ArrayDataset` (uint8 NCHW on the CPU; Fashion-MNIST keeps
        its single 28x28 channel). ``mean``/``std`` are those of the training split.

    Raises:
        DataError: the data is missing (and ``download`` is off), the download failed, or a
            file is corrupt or truncated.
        ValueError: unknown ``name`` or ``split``; ``imagefolder`` (not an in-memory set).
    """
    _check_split(split)
    if name == "imagefolder":
        raise ValueError("imagefolder is not an in-memory dataset; use build_data()")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if name == "synthetic":
        return _load_synthetic_cached(synthetic or SyntheticConfig(), int(seed), split)
    return _load_torchvision_cached(name, str(_root_path(root)), split, bool(download))


@functools.lru_cache(maxsize=6)
def _load_torchvision_cached(name: str, root: str, split: str, download: bool) -> ArrayDataset:
    if name in ("cifar10", "cifar100"):
        images, labels, num_classes = _load_cifar(name, Path(root), split, download)
    else:
        images, labels = _load_fashion_mnist(Path(root), split, download)
        num_classes = 10
    mean, std = _STATS[name]
    return ArrayDataset(images, labels, num_classes, mean, std, name)


def clear_cache() -> None:
    """Forget every dataset cached by :func:`load_arrays`."""
    _load_torchvision_cached.cache_clear()
    _load_synthetic_cached.cache_clear()


def _load_cifar(name: str, root: Path, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    pretty = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    folder = root / cls.base_folder
    try:
        ds = cls(str(root), train=(split == "train"), download=download)
    except RuntimeError as exc:
        # torchvision says "not found or corrupted" after an md5 check of every batch file.
        if download:
            raise DataError(
                f"{pretty}: download into {root} failed or gave a corrupt copy ({exc}); "
                f"delete {folder} and retry, or copy {cls.base_folder}/ there by hand"
            ) from exc
        where = "is incomplete or corrupt" if folder.exists() else "does not exist"
        hint = (
            "delete it and pass download: true to fetch a fresh copy"
            if folder.exists()
            else "pass download: true to fetch it (needs network), or set root to a folder "
            f"containing {cls.base_folder}/"
        )
        raise DataError(f"{pretty} not found: {folder} {where}; {hint}") from exc
    except (OSError, EOFError, ValueError, KeyError, zlib.error) as exc:
        action = "download into" if download else "read from"
        raise DataError(
            f"{pretty}: could not {action} {root}: {exc}. With download: true a network "
            f"connection is needed; otherwise put {cls.base_folder}/ under root"
        ) from exc
    except Exception as exc:  # unpickling garbage can raise almost anything
        raise DataError(
            f"{pretty}: files under {folder} are unreadable ({type(exc).__name__}: {exc}); "
            "delete the folder and pass download: true"
        ) from exc
    data = np.asarray(ds.data, dtype=np.uint8)
    images = torch.from_numpy(np.ascontiguousarray(data.transpose(0, 3, 1, 2)))
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return images, labels, len(ds.classes)


# ---- idx files (MNIST / Fashion-MNIST) ------------------------------------------------

_IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (the MNIST format), gzip-compressed or not.

    Returns:
        The array, uint8, with the shape the header declares.

    Raises:
        DataError: unreadable, not an idx file, an element type other than unsigned byte,
            or a payload that does not match the header (truncated or padded).
    """
    path = Path(path)
    fix = "replace the file (Debian: apt-get install --reinstall dataset-fashion-mnist)"
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # decide by content, not by the file name
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read idx file {path}: {exc}; {fix}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an idx file (bad magic number); {fix}")
    type_code, ndim = raw[2], raw[3]
    if type_code != 0x08:
        raise DataError(f"{path}: idx element type 0x{type_code:02x} unsupported (want 0x08)")
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated idx header; {fix}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = math.prod(dims)
    if len(raw) - header != count:
        raise DataError(
            f"{path}: header declares {count} bytes of data for shape {dims}, file holds "
            f"{len(raw) - header} (truncated or corrupt); {fix}"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=count, offset=header).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _fashion_mnist_dirs(root: Path) -> list[Path]:
    return [
        root / "FashionMNIST" / "raw",
        root / "fashion-mnist",
        root / "fashion_mnist",
        root,
        DEBIAN_FASHION_MNIST_DIR,
    ]


def _load_fashion_mnist(root: Path, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    img_stem, lbl_stem = _IDX_NAMES[split]
    for folder in _fashion_mnist_dirs(root):
        img_path, lbl_path = _find_idx(folder, img_stem), _find_idx(folder, lbl_stem)
        if img_path is None and lbl_path is None:
            continue
        if img_path is None or lbl_path is None:
            missing = img_stem if img_path is None else lbl_stem
            raise DataError(
                f"Fashion-MNIST in {folder} is incomplete: {missing}[.gz] is missing; "
                "add it or remove the folder"
            )
        return _fashion_from_idx(img_path, lbl_path)
    if download:
        return _download_fashion_mnist(root, split)
    looked = ", ".join(str(d) for d in _fashion_mnist_dirs(root))
    raise DataError(
        f"Fashion-MNIST not found: looked for {img_stem}[.gz] and {lbl_stem}[.gz] in {looked}. "
        "Install Debian's package (apt-get install dataset-fashion-mnist) or pass "
        "download: true"
    )


def _fashion_from_idx(img_path: Path, lbl_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(img_path)
    labels = read_idx(lbl_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{img_path}: expected 28x28 images, header says {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{lbl_path}: {labels.shape[0] if labels.ndim == 1 else labels.shape} labels for "
            f"{images.shape[0]} images in {img_path}"
        )
    if labels.size and int(labels.max()) > 9:
        raise DataError(f"{lbl_path}: label {int(labels.max())} outside 0..9 (corrupt file)")
    return (
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
    )


def _download_fashion_mnist(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision import datasets

    try:
        ds = datasets.FashionMNIST(str(root), train=(split == "train"), download=True)
    except Exception as exc:  # network errors come in many types (URLError, HTTPError...)
        raise DataError(
            f"Fashion-MNIST download into {root} failed ({type(exc).__name__}: {exc}); "
            "without network install Debian's dataset-fashion-mnist package instead"
        ) from exc
    return ds.data.to(torch.uint8).unsqueeze(1).contiguous(), ds.targets.to(torch.int64)


# --------------------------------------------------------------------------------------
# Synthetic dataset
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the built-in synthetic image-classification task.

    Each class owns ``modes_per_class`` **motifs**: small, windowed, coloured random
    textures with an oriented grating through them. Classes come in groups of
    ``group_size`` siblings whose motifs are perturbations of shared group motifs, with one
    colour per group, so telling siblings apart takes fine detail. A sample is one motif of
    its class placed at a random position, rotation, scale and mirroring on smooth clutter,
    often with a fainter **distractor** motif of another class (a sibling half of the
    time) elsewhere in the image, plus a global tint of its group's colour, colour jitter
    and pixel noise. The tint is learnt within a few hundred steps (short runs get well
    above chance); beyond it, remembering many random motifs rewards capacity, and sibling
    similarity and distractors make a trained teacher's soft labels informative.

    Attributes:
        num_classes: number of classes (>= 2).
        image_size: height and width in pixels (>= 8).
        channels: 1 (grey) or 3 (colour).
        train_size: samples in the training split.
        test_size: samples in the test split.
        modes_per_class: motifs per class.
        group_size: classes per sibling group (1: no groups).
        sibling_gap: how far a class's motifs stray from its group's shared ones (0: siblings
            identical, 1: as different as unrelated motifs).
        mix: largest contrast of a distractor relative to the labelled motif, in [0, 1).
        class_tint: strength of the group's global colour tint (0: motifs alone identify
            the class).
        label_noise: fraction of training labels replaced by a random other class; test
            labels are always clean, so test accuracy measures the signal.
        clutter: amplitude of the class-independent smooth background.
        pixel_noise: standard deviation of per-pixel Gaussian noise.
        max_shift: largest translation of a motif, as a fraction of the image size.
        max_rotation: largest rotation in degrees.
    """

    num_classes: int = 10
    image_size: int = 32
    channels: int = 3
    train_size: int = 5000
    test_size: int = 1000
    modes_per_class: int = 4
    group_size: int = 2
    sibling_gap: float = 0.6
    mix: float = 0.7
    class_tint: float = 0.6
    label_noise: float = 0.05
    clutter: float = 0.5
    pixel_noise: float = 0.3
    max_shift: float = 0.25
    max_rotation: float = 15.0

    def __post_init__(self) -> None:
        checks = [
            (self.num_classes >= 2, "num_classes must be >= 2"),
            (self.image_size >= 8, "image_size must be >= 8"),
            (self.channels in (1, 3), "channels must be 1 or 3"),
            (self.train_size >= 1 and self.test_size >= 1, "split sizes must be >= 1"),
            (self.modes_per_class >= 1, "modes_per_class must be >= 1"),
            (1 <= self.group_size <= self.num_classes, "group_size must be in 1..num_classes"),
            (0.0 <= self.sibling_gap <= 1.0, "sibling_gap must be in [0, 1]"),
            (0.0 <= self.mix < 1.0, "mix must be in [0, 1)"),
            (self.class_tint >= 0, "class_tint must be >= 0"),
            (0.0 <= self.label_noise < 1.0, "label_noise must be in [0, 1)"),
            (self.clutter >= 0 and self.pixel_noise >= 0, "noise levels must be >= 0"),
            (0.0 <= self.max_shift <= 0.5, "max_shift must be in [0, 0.5]"),
            (0.0 <= self.max_rotation <= 180.0, "max_rotation must be in [0, 180]"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"SyntheticConfig: {msg}")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> SyntheticConfig:
        """Build a config from a spec's ``data.synthetic`` mapping (None: defaults).

        Raises:
            ValueError: an unknown key (the message lists the known ones) or a bad value.
        """
        values = dict(values or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown synthetic option(s) {unknown}; known: {', '.join(known)}")
        return cls(**values)


def _derive_seed(*parts: int) -> int:
    """A 63-bit seed mixing ``parts``; neighbouring inputs give unrelated streams."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts])
    return int(state.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _cpu_generator(*parts: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(_derive_seed(*parts))
    return g


def _smooth_basis(size: int, grid: int) -> torch.Tensor:
    """(size, grid) Gaussian bumps centred on a coarse grid, rows normalised to unit norm."""
    pos = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    basis = torch.exp(-0.5 * ((pos[:, None] - centres[None, :]) * grid / 0.8) ** 2)
    return basis / basis.norm(dim=1, keepdim=True)


def _smooth_field(n: int, channels: int, size: int, grid: int, g: torch.Generator) -> torch.Tensor:
    """Random smooth fields (n, channels, size, size), roughly unit variance.

    A separable sum of Gaussian bumps with random weights, computed as one GEMM with the
    Kronecker basis: much cheaper than upsampling, and smooth by construction.
    """
    coarse = torch.randn(n * channels, grid * grid, generator=g)
    basis = _smooth_basis(size, grid)
    return (coarse @ torch.kron(basis, basis).T).view(n, channels, size, size)


def _unit_colours(n: int, channels: int, g: torch.Generator) -> torch.Tensor:
    if channels == 1:
        return torch.where(torch.rand(n, 1, generator=g) < 0.5, -1.0, 1.0)
    c = torch.randn(n, channels, generator=g)
    return c / c.norm(dim=1, keepdim=True).clamp_min(1e-6) * math.sqrt(channels)


_TAG_PROTOTYPES, _TAG_TRAIN, _TAG_TEST = 0x5EED, 0x7A1, 0x7E5
_MOTIF_SIGMA = 0.16  # window width, as a fraction of the image size
_TEXTURE_GRID = 6  # texture detail: bumps across the image


def _motif_parts(n: int, cfg: SyntheticConfig, colour: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(n, C, S, S) unwindowed motif content: a coloured texture plus a coloured grating."""
    c, s = cfg.channels, cfg.image_size
    texture = _smooth_field(n, c, s, _TEXTURE_GRID, g)
    theta = torch.rand(n, generator=g) * math.pi
    freq = 2.0 + 3.0 * torch.rand(n, generator=g)  # cycles per image
    phase = 2 * math.pi * torch.rand(n, generator=g)
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s - 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    proj = xx * torch.cos(theta).view(n, 1, 1) + yy * torch.sin(theta).view(n, 1, 1)
    grating = torch.cos(2 * math.pi * freq.view(n, 1, 1) * proj + phase.view(n, 1, 1))
    return texture + grating[:, None] * colour.view(n, c, 1, 1)


def _prototypes(cfg: SyntheticConfig, seed: int) -> torch.Tensor:
    """(num_classes * modes, C, S, S) centred motifs of unit RMS, shared by both splits.

    Motif ``y * modes + m`` is mode ``m`` of class ``y``.
    """
    g = _cpu_generator(seed, _TAG_PROTOTYPES)
    k, m, c, s = cfg.num_classes, cfg.modes_per_class, cfg.channels, cfg.image_size
    n_groups = math.ceil(k / cfg.group_size)
    group = torch.arange(k) // cfg.group_size
    colour = _unit_colours(n_groups, c, g)
    # Siblings start from their group's motifs and each strays by sibling_gap.
    shared = _motif_parts(n_groups * m, cfg, colour.repeat_interleave(m, 0), g).view(n_groups, m, c, s, s)
    own = _motif_parts(k * m, cfg, colour[group].repeat_interleave(m, 0), g).view(k, m, c, s, s)
    gap = cfg.sibling_gap
    motifs = math.sqrt(1 - gap**2) * shared[group] + gap * own
    # A global tint per group: an easy, early-learned cue that narrows a sample down to its
    # siblings and leaves the finer motif detail to separate them.
    tint = _unit_colours(n_groups, c, g)[group]
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s - 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    window = torch.exp(-(xx**2 + yy**2) / (2 * _MOTIF_SIGMA**2))
    motifs = motifs.reshape(k * m, c, s, s) * window
    rms = motifs.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-6)
    # Unit RMS over the window's footprint rather than the whole canvas.
    return motifs / rms * window.mean().sqrt(), tint


def _affine_grid(n: int, cfg: SyntheticConfig, g: torch.Generator) -> torch.Tensor:
    """(n, S, S, 2) sampling grids of random rotations, scalings, shifts and mirrorings."""
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(cfg.max_rotation)
    scale = torch.exp((torch.rand(n, generator=g) * 2 - 1) * 0.15)
    mirror = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * (2 * cfg.max_shift)  # grid units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    s = cfg.image_size
    coords = (torch.arange(s, dtype=torch.float32) * 2 + 1) / s - 1
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    xx, yy = xx.reshape(1, s * s) - shift[:, :1], yy.reshape(1, s * s) - shift[:, 1:]
    # Output (x, y) reads the motif at the inverse transform of (x, y) - shift.
    src_x = mirror[:, None] * (cos[:, None] * xx - sin[:, None] * yy)
    src_y = sin[:, None] * xx + cos[:, None] * yy
    return torch.stack([src_x, src_y], dim=-1).view(n, s, s, 2)


def _place(motifs: torch.Tensor, cfg: SyntheticConfig, g: torch.Generator) -> torch.Tensor:
    grid = _affine_grid(motifs.shape[0], cfg, g)
    return F.grid_sample(motifs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def make_synthetic(cfg: SyntheticConfig, seed: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate one split of the synthetic dataset.

    Deterministic: the same ``(cfg, seed, split)`` gives identical tensors. Both splits share
    the motifs (drawn from ``seed``) and differ in their samples (independent streams).

    Returns:
        ``(images, labels)``: uint8 (N, C, S, S) and int64 (N,), N = ``train_size`` or
        ``test_size``.

    Raises:
        ValueError: ``split`` is not ``"train"`` or ``"test"``.
    """
    _check_split(split)
    motifs, tint = _prototypes(cfg, seed)
    k, m, c, s = cfg.num_classes, cfg.modes_per_class, cfg.channels, cfg.image_size
    n = cfg.train_size if split == "train" else cfg.test_size
    g = _cpu_generator(seed, _TAG_TRAIN if split == "train" else _TAG_TEST)
    chunks_x, chunks_y = [], []
    # Chunks bound the memory of the float intermediates for large configurations.
    chunk = max(1, 2_000_000 // (c * s * s))
    gs = cfg.group_size
    for start in range(0, n, chunk):
        b = min(chunk, n - start)
        y = torch.randint(0, k, (b,), generator=g)
        x = _place(motifs.index_select(0, y * m + torch.randint(0, m, (b,), generator=g)), cfg, g)

        # A fainter distractor from another class: a sibling half of the time.
        anyone = (y + 1 + torch.randint(0, k - 1, (b,), generator=g)) % k
        if gs > 1:
            base = (y // gs) * gs
            size = torch.clamp(k - base, max=gs)
            step = 1 + (torch.rand(b, generator=g) * (size - 1)).long()
            sibling = base + (y - base + step) % size
            other = torch.where(torch.rand(b, generator=g) < 0.5, sibling, anyone)
        else:
            other = anyone
        weight = cfg.mix * torch.rand(b, generator=g) * (torch.rand(b, generator=g) < 0.75)
        distractor = _place(
            motifs.index_select(0, other * m + torch.randint(0, m, (b,), generator=g)), cfg, g
        )
        x = x.add_(distractor.mul_(weight.view(b, 1, 1, 1)))

        contrast = torch.exp(0.25 * torch.randn(b, 1, 1, 1, generator=g))
        gain = 1 + 0.25 * torch.randn(b, c, 1, 1, generator=g)
        bias = 0.3 * torch.randn(b, c, 1, 1, generator=g) + cfg.class_tint * tint[y].view(b, c, 1, 1)
        clutter = _smooth_field(b, c, s, 4, g)
        noise = torch.randn(b, c, s, s, generator=g)
        # Fold the 0..255 mapping into the per-image factors to save full-size passes.
        x = x.mul_(contrast * gain * 48.0).add_(bias * 48.0 + 127.5)
        x = x.add_(clutter, alpha=48.0 * cfg.clutter).add_(noise, alpha=48.0 * cfg.pixel_noise)
        chunks_x.append(x.round_().clamp_(0, 255).to(torch.uint8))

        if split == "train" and cfg.label_noise > 0:
            flip = torch.rand(b, generator=g) < cfg.label_noise
            wrong = (y + 1 + torch.randint(0, k - 1, (b,), generator=g)) % k
            y = torch.where(flip, wrong, y)
        chunks_y.append(y.to(torch.int64))
    return torch.cat(chunks_x), torch.cat(chunks_y)


@functools.lru_cache(maxsize=8)
def _load_synthetic_cached(cfg: SyntheticConfig, seed: int, split: str) -> ArrayDataset:
    images, labels = make_synthetic(cfg, seed, split)
    train_images = images if split == "train" else _load_synthetic_cached(cfg, seed, "train").images
    # Normalise both splits with the training split's statistics, like the real datasets.
    as_float = train_images.to(torch.float32) / 255.0
    mean = tuple(float(v) for v in as_float.mean(dim=(0, 2, 3)))
    std = tuple(max(float(v), 1e-3) for v in as_float.std(dim=(0, 2, 3)))
    return ArrayDataset(images, labels, cfg.num_classes, mean, std, "synthetic")


# --------------------------------------------------------------------------------------
# Validation split
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Device-resident loader
# --------------------------------------------------------------------------------------


def _resolve_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


class DeviceLoader:
    """Batches of an :class:`ArrayDataset` made entirely on the training device.

    The uint8 images are copied to ``device`` once. Each batch is gathered, augmented
    (training only: random crop after zero padding by ``crop_padding`` pixels, a different
    offset per image, then a random horizontal flip) and normalised there, as
    ``(x / 255 - mean) / std``: the arithmetic of torchvision's ``ToTensor`` + ``Normalize``
    (bit for bit on the CPU; within 1e-6 on CUDA, where PyTorch divides by a scalar through
    its reciprocal). Zero padding pads black pixels (0 before normalisation), like
    ``transforms.RandomCrop(size, padding)`` on uint8/PIL images.

    Reproducibility: epoch ``e`` (set by :meth:`set_epoch`, otherwise counted up by each
    ``iter()``) draws its permutation, offsets and flips from a ``torch.Generator`` on the
    device seeded from ``(seed, e)``; nothing else is random and the global RNG is untouched.
    Streams are device-specific: a CPU and a CUDA loader with the same seed differ.

    Every batch is a fresh tensor (float32 (B, C, H, W), labels int64 (B,)) on the device;
    the engine may copy it into static buffers for CUDA graphs. With ``drop_last`` (the
    default for training) every batch has exactly ``batch_size`` samples.

    Attributes:
        num_samples: samples in the dataset.
        batch_size: samples per batch.
        device: where the batches live.
        train: shuffle and augment.
        drop_last: whether a final partial batch is dropped.
    """

    def __init__(
        self,
        ds: ArrayDataset,
        batch_size: int,
        device: str | torch.device,
        *,
        train: bool,
        seed: int,
        crop_padding: int = 4,
        flip: bool = True,
        drop_last: bool | None = None,
    ) -> None:
        """Copy ``ds`` to ``device`` and prepare the loader.

        Raises:
            ValueError: non-positive ``batch_size`` or negative ``crop_padding``.
            DataError: ``drop_last`` with fewer samples than one batch (no batch at all).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        self.device = _resolve_device(device)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.crop_padding = int(crop_padding) if train else 0
        self.flip = bool(flip) and self.train
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.num_samples = len(ds)
        self.num_classes = ds.num_classes
        self.input_size = ds.input_size
        self.mean, self.std = ds.mean, ds.std
        if self.drop_last and self.num_samples < self.batch_size:
            raise DataError(
                f"{ds.name}: {self.num_samples} samples cannot fill one batch of "
                f"{self.batch_size}; lower batch_size"
            )
        self._images = ds.images.to(self.device).contiguous()
        self._labels = ds.labels.to(self.device)
        c, h, w = self.input_size
        self._mean = torch.tensor(ds.mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self._std = torch.tensor(ds.std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self._rows = torch.arange(h, device=self.device)
        self._cols = torch.arange(w, device=self.device)
        self._epoch = 0
        if self.device.type == "cuda":
            # The copies ran on the constructing thread's current stream; the loader may be
            # iterated on another one (one stream per trial), so finish them here, once.
            torch.cuda.current_stream(self.device).synchronize()

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` will produce."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` produce epoch ``epoch`` (order and augmentation)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._epoch
        self._epoch += 1
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, bs, dev = self.num_samples, self.batch_size, self.device
        augment = self.crop_padding > 0 or self.flip
        if self.train:
            # All randomness of the epoch up front, from one generator: the epoch is a pure
            # function of (seed, epoch) however the batches are consumed.
            g = torch.Generator(device=dev)
            g.manual_seed(_derive_seed(self.seed, epoch))
            order = torch.randperm(n, generator=g, device=dev)
            p = self.crop_padding
            shifts = torch.randint(-p, p + 1, (n, 2), generator=g, device=dev)
            flips = torch.randint(0, 2, (n,), generator=g, device=dev).bool()
        else:
            order = torch.arange(n, device=dev)
        for b in range(len(self)):
            sl = slice(b * bs, min((b + 1) * bs, n))
            idx = order[sl]
            x = self._images.index_select(0, idx)
            if augment:
                x = self._augment(x, shifts[sl], flips[sl])
            yield self._normalise(x), self._labels.index_select(0, idx)

    def _augment(self, x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Crop-after-zero-padding and flip a uint8 batch with one gather."""
        bsz, c, h, w = x.shape
        # Output pixel (i, j) reads source pixel (i + dy, j + dx); out-of-range reads are the
        # zero padding. Flipping reverses the column map after the crop.
        rows = self._rows[None, :] + shifts[:, :1]
        cols = self._cols[None, :] + shifts[:, 1:]
        if self.flip:
            cols = torch.where(flips[:, None], cols.flip(1), cols)
        if self.crop_padding == 0:
            valid = None
        else:
            valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
            rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
        index = (rows[:, :, None] * w + cols[:, None, :]).view(bsz, 1, h * w).expand(bsz, c, h * w)
        out = x.view(bsz, c, h * w).gather(2, index).view(bsz, c, h, w)
        if valid is not None:
            out = out * valid[:, None]
        return out

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32).div_(255.0).sub_(self._mean).div_(self._std)


# --------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------

_LAYOUT = "expected layout: root/train/<class>/*.jpg and root/val/<class>/*.jpg"


def open_image_folder(root: str | Path, split: str) -> Any:
    """Index ``root/<split>/<class>/<image>`` with ``torchvision.datasets.ImageFolder``.

    Only the file list is built; images are decoded by :class:`FolderLoader`.

    Returns:
        The ``ImageFolder`` (``samples``, ``targets``, ``classes``).

    Raises:
        DataError: ``root`` or ``root/<split>`` missing, no class folders, or no images.
    """
    from torchvision import datasets

    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder root {root} does not exist; {_LAYOUT}")
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"{folder} does not exist; {_LAYOUT}")
    try:
        return datasets.ImageFolder(str(folder), loader=_load_rgb)
    except (FileNotFoundError, RuntimeError, OSError) as exc:
        raise DataError(f"no usable images in {folder} ({exc}); {_LAYOUT}") from exc


def _load_rgb(path: str) -> Any:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:  # PIL signals broken files these ways
        raise DataError(f"cannot decode image {path} ({exc}); remove or replace the file") from exc


def _random_resized_crop_box(
    width: int, height: int, rng: random.Random, scale: tuple[float, float] = (0.08, 1.0)
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of an Inception-style random crop: random area and aspect ratio."""
    area = width * height
    log_lo, log_hi = math.log(3 / 4), math.log(4 / 3)
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    # Fall back to the largest centred crop with a permissible aspect ratio.
    ratio = width / height
    if ratio < 3 / 4:
        w, h = width, round(width / (3 / 4))
    elif ratio > 4 / 3:
        h, w = height, round(height * (4 / 3))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class _FolderSamples(torch.utils.data.Dataset):
    """Decodes and transforms ``(index, augmentation_seed)`` items into uint8 CHW tensors.

    The seed travels with the index (from :class:`_EpochSampler`), so augmentation does not
    depend on worker count or on torch's global RNG.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        augment: bool,
        flip: bool,
        image_size: int,
        resize_size: int,
    ) -> None:
        self.samples = list(samples)
        self.augment = augment
        self.flip = flip
        self.image_size = image_size
        self.resize_size = resize_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        index, aug_seed = item
        path, target = self.samples[index]
        img = _load_rgb(path)
        size = [self.image_size, self.image_size]
        if self.augment:
            rng = random.Random(aug_seed)
            top, left, h, w = _random_resized_crop_box(img.width, img.height, rng)
            img = TF.resized_crop(
                img,
                top,
                left,
                h,
                w,
                size,
                interpolation=InterpolationMode.BILINEAR,
                antialias=True,
            )
            if self.flip and rng.random() < 0.5:
                img = TF.hflip(img)
        else:
            img = TF.resize(img, self.resize_size, antialias=True)
            img = TF.center_crop(img, size)
        return TF.pil_to_tensor(img), target


class _EpochSampler(torch.utils.data.Sampler):
    """Yields ``(index, augmentation_seed)``; order and seeds are a function of (seed, epoch)."""

    def __init__(self, n: int, shuffle: bool, seed: int) -> None:
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = _cpu_generator(self.seed, self.epoch)
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        seeds = torch.randint(0, 2**62, (self.n,), generator=g)
        return iter(zip(order.tolist(), seeds.tolist(), strict=True))


class FolderLoader:
    """Batches decoded from an image folder, with the usual ImageNet transforms.

    Training: random resized crop to ``image_size`` (area 8-100 %, aspect 3/4-4/3) and a
    random horizontal flip; evaluation: resize the short side to ``resize_size`` then centre
    crop ``image_size``. Decoding runs in ``num_workers`` processes (0: in this process);
    batches travel as uint8 (pinned when the device is CUDA) and are normalised on the device.
    Same interface and reproducibility contract as :class:`DeviceLoader`.

    Attributes:
        num_samples: samples in the (sub)set.
        classes: class names (folder names), in label order.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        batch_size: int,
        device: str | torch.device,
        *,
        train: bool,
        seed: int,
        image_size: int = 224,
        resize_size: int | None = None,
        num_workers: int = 0,
        drop_last: bool | None = None,
        augment: bool | None = None,
        flip: bool = True,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        """Prepare a loader over ``samples`` (``(path, class_index)`` pairs).

        ``augment`` (default: ``train``) selects the training transforms; ``flip`` adds the
        horizontal flip to them. A ``train`` loader without ``augment`` only shuffles.

        Raises:
            ValueError: non-positive ``batch_size`` or ``image_size``, negative workers.
            DataError: no samples, or ``drop_last`` with fewer samples than one batch.
        """
        if batch_size < 1 or image_size < 1 or num_workers < 0:
            raise ValueError("batch_size and image_size must be >= 1, num_workers >= 0")
        self.device = _resolve_device(device)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.classes = tuple(classes)
        self.num_classes = len(self.classes)
        self.num_samples = len(samples)
        self.input_size = (3, image_size, image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        if self.num_samples == 0 or (self.drop_last and self.num_samples < self.batch_size):
            raise DataError(
                f"{self.num_samples} images cannot fill one batch of {self.batch_size}; add "
                "images or lower batch_size"
            )
        resize = resize_size if resize_size is not None else round(image_size * 256 / 224)
        augment = self.train if augment is None else bool(augment)
        self._dataset = _FolderSamples(samples, augment, bool(flip), image_size, resize)
        self._sampler = _EpochSampler(self.num_samples, self.train, self.seed)
        self._loader = torch.utils.data.DataLoader(
            self._dataset,
            batch_size=self.batch_size,
            sampler=self._sampler,
            drop_last=self.drop_last,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
        )
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._epoch = 0

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` will produce."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` produce epoch ``epoch`` (order and augmentation)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._epoch
        self._epoch += 1
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._sampler.epoch = epoch
        non_blocking = self.device.type == "cuda"
        for x, y in self._loader:
            x = x.to(self.device, non_blocking=non_blocking)
            x = x.to(torch.float32).div_(255.0).sub_(self._mean).div_(self._std)
            yield x, y.to(self.device, non_blocking=non_blocking)


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------

Loader = DeviceLoader | FolderLoader


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

    train: Loader
    val: Loader | None
    test: Loader
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
    synthetic: SyntheticConfig | None = None,
    flip: bool | None = None,
    data_seed: int = 0,
    image_size: int = 224,
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
    if name == "imagefolder":
        return _build_folder(
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
        )
    full = load_arrays(name, root, "train", download=download, seed=data_seed, synthetic=synthetic)
    test = load_arrays(name, root, "test", download=download, seed=data_seed, synthetic=synthetic)
    if name == "fashion_mnist":
        full, test = as_cifar_input(full), as_cifar_input(test)
    train, val = split_train_val(full, val_fraction, data_seed)
    use_flip = _DEFAULT_FLIP[name] if flip is None else flip
    train_loader = DeviceLoader(
        train,
        batch_size,
        device,
        train=True,
        seed=seed,
        crop_padding=crop_padding if augment else 0,
        flip=use_flip and augment,
    )

    def eval_loader(ds: ArrayDataset) -> DeviceLoader:
        return DeviceLoader(ds, eval_batch_size, device, train=False, seed=seed)

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


def _build_folder(
    root: str | Path | None,
    *,
    val_fraction: float,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    device: str | torch.device,
    augment: bool,
    num_workers: int,
    flip: bool | None,
    data_seed: int,
    image_size: int,
) -> DataBundle:
    if root is None:
        raise DataError(f"imagefolder needs root (a folder); {_LAYOUT}")
    train_folder = open_image_folder(root, "train")
    test_folder = open_image_folder(root, "val")
    if list(test_folder.classes) != list(train_folder.classes):
        only_train = sorted(set(train_folder.classes) - set(test_folder.classes))
        only_val = sorted(set(test_folder.classes) - set(train_folder.classes))
        raise DataError(
            f"class folders of {Path(root) / 'train'} and {Path(root) / 'val'} differ "
            f"(only in train: {only_train[:5]}, only in val: {only_val[:5]}); {_LAYOUT}"
        )
    samples = list(train_folder.samples)
    val_samples: list[tuple[str, int]] | None = None
    if val_fraction > 0:
        train_idx, val_idx = stratified_split_indices(train_folder.targets, val_fraction, data_seed)
        val_samples = [samples[i] for i in val_idx.tolist()]
        samples = [samples[i] for i in train_idx.tolist()]
    classes = tuple(train_folder.classes)
    common = {"device": device, "seed": seed, "image_size": image_size, "num_workers": num_workers}
    train_loader = FolderLoader(
        samples,
        classes,
        batch_size,
        train=True,
        augment=augment,
        flip=flip is not False,
        **common,
    )
    return DataBundle(
        train=train_loader,
        val=(
            FolderLoader(val_samples, classes, eval_batch_size, train=False, **common)
            if val_samples is not None
            else None
        ),
        test=FolderLoader(test_folder.samples, classes, eval_batch_size, train=False, **common),
        num_classes=len(classes),
        input_size=(3, image_size, image_size),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        name="imagefolder",
        classes=classes,
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
