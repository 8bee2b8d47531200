"""ImageNet-style loading rate: decode + augment (random resized crop to 224, flip, normalise)
images/s of the training loader, PIL in worker processes vs JPEG batches decoded on the device.

It generates a folder of ImageNet-sized JPEGs (about 500x375, quality 90) and times whole
epochs of ``FolderLoader`` (median of the repeats, the first epoch as warm-up). On a machine
without CUDA the device path decodes on the CPU in the main process (what it costs there);
on a GPU it is ``torchvision.io.decode_jpeg(..., device="cuda")``.

    python bench/imagenet_throughput.py [--images 512] [--workers 0,2] [--batch 64] [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bkdsearch.core.recipe.data.folder import FolderLoader, open_image_folder  # noqa: E402


def make_folder(root: Path, images: int, classes: int = 8) -> Path:
    """Write ``images`` smooth random JPEGs of ImageNet's typical size under ``root/train``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / "train" / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = int(rng.integers(400, 600)), int(rng.integers(300, 450))
        coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        pixels = coarse.repeat(16, 0).repeat(16, 1)[:h, :w]
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


def epoch_rate(loader: FolderLoader, repeats: int) -> float:
    """Median images/s of ``repeats`` epochs after one warm-up epoch."""
    rates = []
    for epoch in range(repeats + 1):
        loader.set_epoch(epoch)
        t0 = time.perf_counter()
        n = 0
        for x, _ in loader:
            n += x.shape[0]
        if x.is_cuda:
            torch.cuda.synchronize()
        if epoch:
            rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--workers", default="0,2", help="Comma-separated DataLoader worker counts.")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="Write the figures as JSON here.")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        samples = open_image_folder(make_folder(Path(tmp), args.images), "train").samples
        classes = sorted({Path(p).parent.name for p, _ in samples})
        for workers in (int(w) for w in args.workers.split(",")):
            for decode in ("pil", "device"):
                loader = FolderLoader(samples, classes, args.batch, device, train=True, seed=0,
                                      num_workers=workers, decode=decode)
                rate = epoch_rate(loader, args.repeats)
                results.append({"decode": decode, "workers": workers, "images_per_s": rate})
                print(f"{where}  decode {decode:6s} workers {workers}: {rate:8.1f} img/s", flush=True)
    for workers in sorted({r["workers"] for r in results}):
        pil, dev = (next(r["images_per_s"] for r in results if r["workers"] == workers and r["decode"] == d)
                    for d in ("pil", "device"))
        print(f"workers {workers}: device / pil = {dev / pil:.2f}")
    if args.out:
        args.out.write_text(json.dumps({"device": where, "torch": torch.__version__, "batch": args.batch,
                                        "images": args.images, "results": results}, indent=2))


if __name__ == "__main__":
    main()
