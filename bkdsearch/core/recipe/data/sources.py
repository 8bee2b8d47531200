"""Reading the in-memory datasets: CIFAR-10/100 through torchvision, Fashion-MNIST from idx
files (Debian's package, torchvision's layout, or a download), the synthetic set; cached
in-process by :func:`bkdsearch.core.recipe.data.arrays.load_arrays`."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .arrays import DEFAULT_ROOT, ArrayDataset

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the idx files."""

# Per-channel statistics of the training splits (0..1 pixel units), the values the CIFAR
# distillation literature normalises with; test splits are normalised with the same numbers.
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}


def load_cifar10(root: Path | None, split: str, download: bool, seed: int, options: Any) -> ArrayDataset:
    """Return CIFAR-10's ``split`` from ``root`` (torchvision's layout; downloaded when allowed)."""
    images, labels, classes = _load_cifar("cifar10", root, split, download)
    return ArrayDataset(images, labels, classes, *_STATS["cifar10"], "cifar10")


def load_cifar100(root: Path | None, split: str, download: bool, seed: int, options: Any) -> ArrayDataset:
    """Return CIFAR-100's ``split`` from ``root`` (torchvision's layout; downloaded when allowed)."""
    images, labels, classes = _load_cifar("cifar100", root, split, download)
    return ArrayDataset(images, labels, classes, *_STATS["cifar100"], "cifar100")


def load_fashion_mnist(root: Path | None, split: str, download: bool, seed: int, options: Any) -> ArrayDataset:
    """Return Fashion-MNIST's ``split`` (1x28x28) from idx files under ``root`` or Debian's package."""
    images, labels = _load_fashion_mnist(root, split, download)
    return ArrayDataset(images, labels, 10, *_STATS["fashion_mnist"], "fashion_mnist")


def _load_cifar(name: str, root: Path | None, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    from torchvision import datasets

    root = DEFAULT_ROOT if root is None else root
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    pretty = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    folder = root / cls.base_folder
    try:
        ds = cls(str(root), train=(split == "train"), download=download)
    except RuntimeError as exc:
        # torchvision says "not found or corrupted" after an md5 check of every batch file.
        if download:
            raise DataError(f"{pretty}: download into {root} failed or gave a corrupt copy ({exc}); "
                            f"delete {folder} and retry, or copy {cls.base_folder}/ there by hand") from exc
        if folder.exists():
            raise DataError(f"{pretty} not found: {folder} is incomplete or corrupt; delete it and pass "
                            "download: true to fetch a fresh copy") from exc
        raise DataError(f"{pretty} not found: {folder} does not exist; pass download: true to fetch it (needs "
                        f"network), or set root to a folder containing {cls.base_folder}/") from exc
    except (OSError, EOFError, ValueError, KeyError, zlib.error) as exc:
        action = "download into" if download else "read from"
        raise DataError(f"{pretty}: could not {action} {root}: {exc}. With download: true a network connection "
                        f"is needed; otherwise put {cls.base_folder}/ under root") from exc
    except Exception as exc:  # unpickling garbage can raise almost anything
        raise DataError(f"{pretty}: files under {folder} are unreadable ({type(exc).__name__}: {exc}); "
                        "delete the folder and pass download: true") from exc
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


def _fashion_mnist_dirs(root: Path | None) -> list[Path]:
    # Debian's folder only stands in for a root the user did not set: a root they set is
    # the data they meant, and reading other files without a word would hide that.
    base = DEFAULT_ROOT if root is None else root
    dirs = [base / "FashionMNIST" / "raw", base / "fashion-mnist", base / "fashion_mnist", base]
    return dirs + [DEBIAN_FASHION_MNIST_DIR] if root is None else dirs


def _load_fashion_mnist(root: Path | None, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
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
        return _download_fashion_mnist(DEFAULT_ROOT if root is None else root, split)
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
