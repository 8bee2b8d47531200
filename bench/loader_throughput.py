"""Images/s of DeviceLoader against a plain torchvision-transforms DataLoader.

Both produce the same thing: shuffled batches of synthetic 32x32 colour images with random
crop (zero padding 4) + horizontal flip, normalised, as float32 NCHW on the target device.

    python bench/loader_throughput.py                      # CPU
    python bench/loader_throughput.py --device cuda --workers 4
    python bench/loader_throughput.py --batch-sizes 64 128 512 --repeats 5

Prints the median over ``--repeats`` of one pass over ``--images`` samples (at least one
batch), for each batch size, and the ratio DeviceLoader / baseline.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from bkdsearch.data import ArrayDataset, DeviceLoader, SyntheticConfig, load_arrays


class _PilDataset(Dataset):
    """The uint8 arrays seen as PIL images, as a classic torchvision pipeline would read them."""

    def __init__(self, ds: ArrayDataset, transform: transforms.Compose) -> None:
        self.images = ds.images.permute(0, 2, 3, 1).numpy()
        self.labels = ds.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(np.ascontiguousarray(self.images[i]))), self.labels[i]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_pass(batches, device: torch.device, limit: int) -> float:
    """Images/s of consuming batches until ``limit`` images (or the end)."""
    _sync(device)
    t0 = time.perf_counter()
    seen = 0
    for x, _ in batches:
        x = x.to(device, non_blocking=True)
        seen += x.shape[0]
        if seen >= limit:
            break
    _sync(device)
    return seen / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 512])
    parser.add_argument("--images", type=int, default=4096, help="images per timed pass")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=0, help="baseline DataLoader workers")
    args = parser.parse_args()
    device = torch.device(args.device)

    ds = load_arrays("synthetic", None, "train", synthetic=SyntheticConfig(train_size=5000))
    pipeline = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(ds.mean, ds.std),
        ]
    )
    pil_ds = _PilDataset(ds, pipeline)
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"baseline workers={args.workers} repeats={args.repeats} (median)"
    )
    print(f"{'batch':>6} {'DeviceLoader img/s':>19} {'DataLoader img/s':>17} {'ratio':>7}")
    for bs in args.batch_sizes:
        ours = DeviceLoader(ds, bs, device, train=True, seed=0)
        base = DataLoader(
            pil_ds, batch_size=bs, shuffle=True, drop_last=True, num_workers=args.workers,
            pin_memory=device.type == "cuda", persistent_workers=args.workers > 0,
        )  # fmt: skip
        _time_pass(ours, device, bs)  # warm-up: allocator, kernels
        _time_pass(base, device, bs)
        ours_rates = [_time_pass(ours, device, args.images) for _ in range(args.repeats)]
        base_rates = [_time_pass(base, device, args.images) for _ in range(args.repeats)]
        a, b = statistics.median(ours_rates), statistics.median(base_rates)
        print(f"{bs:>6} {a:>19,.0f} {b:>17,.0f} {a / b:>6.1f}x")


if __name__ == "__main__":
    main()
