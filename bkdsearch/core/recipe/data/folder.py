"""Image folders (ImageNet-style ``root/train/<class>/*.jpg``): indexing, decoding with the
usual ImageNet transforms, and :class:`FolderLoader`.

Two decoders: PIL in the loader's worker processes, or (``decode="device"``, the default on
CUDA) ``torchvision.io.decode_jpeg`` on the training device for whole batches of file bytes
read by the workers, the crop, resize and flip then running there too: at ImageNet rates PIL
needs more cores than a GPU node has.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..distributed import SINGLE, Ranks
from ..errors import DataError
from .arrays import _cpu_generator
from .build import DataBundle
from .loader import _EpochLoader, _resolve_device
from .splits import stratified_split_indices

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

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

    The seed travels with the index (from :class:`_EpochBatches`), so augmentation does not
    depend on worker count, rank count or torch's global RNG.
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
        from torchvision.transforms import functional as TF

        index, aug_seed = item
        path, target = self.samples[index]
        return TF.pil_to_tensor(self.transform(_load_rgb(path), aug_seed)), target

    def transform(self, img: Any, aug_seed: int) -> Any:
        """Return ``img`` (a PIL image, or a uint8 CHW tensor on any device) cropped, resized
        and flipped as the item with ``aug_seed`` is, in the same type."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        size = [self.image_size, self.image_size]
        if self.augment:
            rng = random.Random(aug_seed)
            _, height, width = TF.get_dimensions(img)
            top, left, h, w = _random_resized_crop_box(width, height, rng)
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
        return img


class _FolderBytes(_FolderSamples):
    """Reads ``(index, augmentation_seed)`` items as their files' bytes, for decoding on the
    training device; the items of a batch stay a list (:func:`_as_lists`)."""

    def __getitem__(self, item: tuple[int, int]) -> tuple[bytes, int, int, int]:  # type: ignore[override]
        index, aug_seed = item
        path, target = self.samples[index]
        try:
            # Plain bytes, not tensors: a worker's tensors travel as shared-memory file
            # descriptors, and a batch of hundreds of files runs out of them.
            return Path(path).read_bytes(), target, aug_seed, index
        except OSError as exc:
            raise DataError(f"cannot read image {path} ({exc}); remove or replace the file") from exc


def _as_lists(items: list[tuple[Any, ...]]) -> list[list[Any]]:
    return [list(column) for column in zip(*items, strict=True)]


_JPEG_MAGIC = (0xFF, 0xD8)

class _EpochBatches(torch.utils.data.Sampler):
    """Yields this rank's shard of every batch of ``(index, augmentation_seed)`` items; order
    and seeds are a function of (seed, epoch), the same for every rank."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, drop_last: bool,
                 ranks: Ranks) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.drop_last, self.ranks, self.epoch = drop_last, ranks, 0

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = _cpu_generator(self.seed, self.epoch)
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        items = list(zip(order.tolist(), torch.randint(0, 2**62, (self.n,), generator=g).tolist(), strict=True))
        for b in range(len(self)):
            batch = items[b * self.batch_size:(b + 1) * self.batch_size]
            shard = batch[self.ranks.shard(len(batch))]
            if shard:
                yield shard


class FolderLoader(_EpochLoader):
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
        ranks: Ranks | None = None,
        decode: str = "auto",
    ) -> None:
        """Prepare a loader over ``samples`` (``(path, class_index)`` pairs).

        ``augment`` (default: ``train``) selects the training transforms; ``flip`` adds the
        horizontal flip to them. A ``train`` loader without ``augment`` only shuffles. With
        ``ranks`` of several processes, ``batch_size`` is the global batch and this rank
        decodes its shard of each. ``decode``: ``pil`` (in the workers), ``device`` (batches
        of JPEG bytes decoded on ``device`` by torchvision; other formats on the CPU) or
        ``auto`` (``device`` on CUDA, else ``pil``).

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
        if decode not in ("auto", "pil", "device"):
            raise ValueError(f"decode must be auto, pil or device, got {decode!r}")
        self.decode = ("device" if self.device.type == "cuda" else "pil") if decode == "auto" else decode
        dataset = _FolderBytes if self.decode == "device" else _FolderSamples
        self._dataset = dataset(samples, augment, bool(flip), image_size, resize)
        self._sampler = _EpochBatches(self.num_samples, self.batch_size, self.train, self.seed,
                                      self.drop_last, ranks or SINGLE)
        self._loader = torch.utils.data.DataLoader(
            self._dataset,
            batch_sampler=self._sampler,
            num_workers=num_workers,
            collate_fn=_as_lists if self.decode == "device" else None,
            pin_memory=self.device.type == "cuda",
        )
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._epoch = 0

    def __len__(self) -> int:
        return len(self._loader)

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._sampler.epoch = epoch
        non_blocking = self.device.type == "cuda"
        for batch in self._loader:
            if self.decode == "device":
                x, y = self._decode_on_device(batch[0], batch[2], batch[3]), torch.tensor(batch[1])
            else:
                x, y = batch
            x = x.to(self.device, non_blocking=non_blocking)
            x = x.to(torch.float32).div_(255.0).sub_(self._mean).div_(self._std)
            yield x, y.to(self.device, non_blocking=non_blocking)

    def _decode_on_device(self, files: list[bytes], seeds: list[int], indices: list[int]) -> torch.Tensor:
        """Return the uint8 batch of the ``files`` (their bytes): JPEGs decoded together on the
        device, other formats on the CPU, each then transformed on the device.

        Raises:
            DataError: a file that does not decode (named).
        """
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg

        datas = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files]
        images: list[torch.Tensor | None] = [None] * len(datas)
        jpegs = [i for i, d in enumerate(datas) if tuple(d[:2].tolist()) == _JPEG_MAGIC]
        if jpegs:
            with contextlib.suppress(RuntimeError):  # a broken file: found below, one at a time
                decoded = decode_jpeg([datas[i] for i in jpegs], mode=ImageReadMode.RGB, device=self.device)
                for i, img in zip(jpegs, decoded, strict=True):
                    images[i] = img
        for i, data in enumerate(datas):
            if images[i] is not None:
                continue
            try:
                images[i] = decode_image(data, mode=ImageReadMode.RGB).to(self.device)
            except RuntimeError as exc:
                path = self._dataset.samples[indices[i]][0]
                raise DataError(f"cannot decode image {path} ({exc}); remove or replace the file") from exc
        return torch.stack([self._dataset.transform(img, seed) for img, seed in zip(images, seeds, strict=True)])


def build_folder_data(
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
    train_fraction: float = 1.0,
    ranks: Ranks | None = None,
    decode: str = "auto",
) -> DataBundle:
    """Return the loaders of an image folder (``root/train``, ``root/val``): the validation
    split carved from ``train`` by ``data_seed``, ``val`` as the test split."""
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
    if train_fraction < 1.0:
        _, kept = stratified_split_indices([label for _, label in samples], train_fraction, data_seed ^ 0x7F1D)
        samples = [samples[i] for i in kept.tolist()]
    classes = tuple(train_folder.classes)
    common = {"device": device, "seed": seed, "image_size": image_size, "num_workers": num_workers,
              "ranks": ranks, "decode": decode}
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
