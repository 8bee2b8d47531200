"""The device-resident loader of in-memory datasets (:class:`DeviceLoader`) and the epoch
bookkeeping it shares with :class:`~bkdsearch.data.folder.FolderLoader`."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..distributed import SINGLE, Ranks
from ..errors import DataError
from .arrays import ArrayDataset, _derive_seed


def _resolve_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


class _EpochLoader:
    """The epoch bookkeeping of :class:`DeviceLoader` and ``FolderLoader``.

    ``iter()`` produces epoch :attr:`epoch` (the subclass's ``_batches(epoch)``) and counts
    it up; :meth:`set_epoch` picks the next one, so a resumed run replays an uninterrupted
    run's epochs. Subclasses set ``self._epoch = 0`` in ``__init__``.
    """

    _epoch: int

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` will produce."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` produce epoch ``epoch`` (order and augmentation)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._epoch
        self._epoch += 1
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError


class DeviceLoader(_EpochLoader):
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

    With ``ranks`` of several processes, ``batch_size`` is the global batch: each rank
    yields its contiguous shard (:meth:`Ranks.shard`) of every batch the single process
    would yield, augmented exactly as there, and skips a shard left empty.

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
        ranks: Ranks | None = None,
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
        self.ranks = ranks or SINGLE
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

    def __len__(self) -> int:
        last = 0 if self.drop_last else self.batch_size - 1  # a partial last batch counts
        return (self.num_samples + last) // self.batch_size

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
            start = b * bs
            shard = self.ranks.shard(min(bs, n - start))
            sl = slice(start + shard.start, start + shard.stop)
            if sl.start == sl.stop:
                continue
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
