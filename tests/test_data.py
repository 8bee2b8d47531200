"""Tests of bkdsearch.data: datasets, validation split, loaders, error messages."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bkdsearch import data
from bkdsearch.data import (
    ArrayDataset,
    DataError,
    DeviceLoader,
    SyntheticConfig,
    build_data,
    load_arrays,
    make_synthetic,
    read_idx,
    split_train_val,
)

SMALL = SyntheticConfig(num_classes=4, image_size=16, train_size=300, test_size=120)


def id_dataset(n: int = 200, size: int = 8, channels: int = 1, seed: int = 0) -> ArrayDataset:
    """Random distinct images; the label of sample i is i, so batches reveal their sources."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    return ArrayDataset(
        images=images,
        labels=torch.arange(n),
        num_classes=n,
        mean=(0.3,) * channels,
        std=(0.2,) * channels,
        name="ids",
    )


def normalise(images: torch.Tensor, ds: ArrayDataset) -> torch.Tensor:
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def epoch_batches(loader: DeviceLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def same_batches(a: list[tuple[torch.Tensor, torch.Tensor]], b: list) -> bool:
    if len(a) != len(b):
        return False
    pairs = zip(a, b, strict=True)
    return all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in pairs)


# ---- synthetic ------------------------------------------------------------------------


def test_synthetic_shapes_and_determinism() -> None:
    x1, y1 = make_synthetic(SMALL, 0, "train")
    x2, y2 = make_synthetic(SMALL, 0, "train")
    x3, y3 = make_synthetic(SMALL, 1, "train")
    assert x1.shape == (300, 3, 16, 16) and x1.dtype == torch.uint8
    assert y1.shape == (300,) and y1.dtype == torch.int64
    assert int(y1.min()) >= 0 and int(y1.max()) < 4
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    assert x1.float().std() > 20  # not a blank image set
    xt, yt = make_synthetic(SMALL, 0, "test")
    assert xt.shape == (120, 3, 16, 16)
    assert set(torch.unique(yt).tolist()) == {0, 1, 2, 3}
    train_rows = {bytes(row) for row in x1.flatten(1).numpy()}
    assert not any(bytes(row) in train_rows for row in xt.flatten(1).numpy())


def test_synthetic_grey_and_stats() -> None:
    cfg = SyntheticConfig(num_classes=3, image_size=12, channels=1, train_size=50, test_size=20)
    train = load_arrays("synthetic", None, "train", synthetic=cfg, seed=5)
    test = load_arrays("synthetic", None, "test", synthetic=cfg, seed=5)
    assert train.images.shape == (50, 1, 12, 12) and len(train) == 50
    assert test.mean == train.mean and test.std == train.std
    assert abs(train.mean[0] - train.images.float().mean().item() / 255) < 1e-4
    assert load_arrays("synthetic", None, "train", synthetic=cfg, seed=5) is train  # cached


def test_synthetic_config_validation() -> None:
    with pytest.raises(ValueError, match="channels"):
        SyntheticConfig(channels=2)
    with pytest.raises(ValueError, match="label_noise"):
        SyntheticConfig(label_noise=1.0)
    assert SyntheticConfig.from_dict({"image_size": 16}) == SyntheticConfig(image_size=16)
    assert SyntheticConfig.from_dict(None) == SyntheticConfig()
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticConfig.from_dict({"classes": 3})


def _cnn(width: int, classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, classes),
    )  # fmt: skip


def _fit_and_predict(
    model: nn.Module, train: ArrayDataset, test: ArrayDataset, epochs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DeviceLoader(train, 64, "cpu", train=True, seed=0)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x).argmax(1) for x, _ in DeviceLoader(test, 500, "cpu", train=False, seed=0)])
    return pred, test.labels


def test_synthetic_default_learns_fast() -> None:
    # The group tint is a cue a linear model picks up within a few hundred steps, which is
    # what quickstarts and short tests need; what it leaves is telling siblings apart.
    cfg = SyntheticConfig(image_size=16, train_size=2000, test_size=1000)
    train = load_arrays("synthetic", None, "train", synthetic=cfg)
    test = load_arrays("synthetic", None, "test", synthetic=cfg)
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))
    pred, truth = _fit_and_predict(linear, train, test, epochs=3)
    assert (pred == truth).float().mean().item() > 2 / cfg.num_classes
    wrong = pred != truth
    assert (pred[wrong] == truth[wrong] ^ 1).float().mean().item() > 0.3  # uniform: 1/9


def test_synthetic_motifs_need_capacity() -> None:
    # Without the tint only the motifs tell classes apart: a few seconds of CPU training
    # at 16x16 already separate model sizes.
    cfg = SyntheticConfig(image_size=16, train_size=2000, test_size=1000, class_tint=0.0)
    train = load_arrays("synthetic", None, "train", synthetic=cfg)
    test = load_arrays("synthetic", None, "test", synthetic=cfg)
    torch.manual_seed(0)
    acc = {}
    preds = {}
    models = {
        "linear": nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10)),
        "cnn4": _cnn(4, 10),
        "cnn16": _cnn(16, 10),
    }
    for name, model in models.items():
        pred, truth = _fit_and_predict(model, train, test, epochs=8)
        preds[name] = pred
        acc[name] = (pred == truth).float().mean().item()
    chance = 1 / cfg.num_classes
    assert acc["cnn16"] > 3 * chance, acc
    assert acc["cnn16"] < 0.9, acc  # far from solved in a few seconds
    # Capacity pays, and motifs move around: pixels alone are not enough.
    assert acc["cnn16"] > acc["cnn4"] + 0.1, acc
    assert acc["cnn16"] > acc["linear"] + 0.2, acc
    # Errors concentrate on the sibling class (classes 2j and 2j+1 share motifs): the
    # structure a teacher's soft labels pass on. Uniform errors would give 1/9 here.
    wrong = preds["cnn16"] != test.labels
    assert (preds["cnn16"][wrong] == test.labels[wrong] ^ 1).float().mean().item() > 0.3


# ---- validation split -----------------------------------------------------------------


def _imbalanced(n: int = 200) -> ArrayDataset:
    ds = id_dataset(n)
    labels = torch.tensor([i % 3 if i % 5 else 3 for i in range(n)])
    return ArrayDataset(ds.images, labels, 4, ds.mean, ds.std, "imbalanced")


def _ids(ds: ArrayDataset) -> set[bytes]:
    return {bytes(row) for row in ds.images.flatten(1).numpy()}


def test_split_train_val_properties() -> None:
    ds = _imbalanced()
    train, val = split_train_val(ds, 0.25, seed=3)
    assert val is not None
    assert len(val) == 50 and len(train) == 150
    assert _ids(train).isdisjoint(_ids(val))
    assert _ids(train) | _ids(val) == _ids(ds)
    for cls in range(4):
        total = int((ds.labels == cls).sum())
        assert abs(int((val.labels == cls).sum()) - total * 0.25) <= 1
    # Labels stay attached to their images.
    lookup = dict(zip(map(bytes, ds.images.flatten(1).numpy()), ds.labels.tolist(), strict=True))
    val_rows = map(bytes, val.images.flatten(1).numpy())
    assert [lookup[r] for r in val_rows] == val.labels.tolist()
    again_train, again_val = split_train_val(ds, 0.25, seed=3)
    assert again_val is not None and torch.equal(again_val.images, val.images)
    assert torch.equal(again_train.images, train.images)
    _, other_val = split_train_val(ds, 0.25, seed=4)
    assert other_val is not None and _ids(other_val) != _ids(val)
    assert val.mean == ds.mean and val.num_classes == 4


def test_split_train_val_edges() -> None:
    ds = _imbalanced()
    same, none = split_train_val(ds, 0.0, seed=0)
    assert same is ds and none is None
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError):
            split_train_val(ds, bad, seed=0)
    with pytest.raises(ValueError, match="empty"):
        split_train_val(id_dataset(10), 0.01, seed=0)


# ---- DeviceLoader ---------------------------------------------------------------------


def test_device_loader_shapes_and_lengths() -> None:
    ds = id_dataset(200, size=8, channels=3)
    train = DeviceLoader(ds, 64, "cpu", train=True, seed=0)
    batches = epoch_batches(train)
    assert len(train) == 3 == len(batches) and train.num_samples == 200
    for x, y in batches:
        assert x.shape == (64, 3, 8, 8) and x.dtype == torch.float32
        assert y.shape == (64,) and y.dtype == torch.int64
    ev = DeviceLoader(ds, 64, "cpu", train=False, seed=0)
    assert len(ev) == 4 and [len(y) for _, y in ev] == [64, 64, 64, 8]
    with pytest.raises(DataError, match="batch"):
        DeviceLoader(id_dataset(10), 64, "cpu", train=True, seed=0)


def test_eval_loader_is_plain_normalisation_in_order() -> None:
    from torchvision import transforms

    ds = id_dataset(70, size=8, channels=3)
    loader = DeviceLoader(ds, 32, "cpu", train=False, seed=0, crop_padding=4, flip=True)
    xs, ys = zip(*loader, strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    assert torch.equal(y, ds.labels)
    # Bit-for-bit the arithmetic of ToTensor (x / 255) followed by Normalize.
    expected = transforms.Normalize(ds.mean, ds.std)(ds.images.float().div(255))
    assert torch.equal(x, expected)
    assert torch.allclose(x, normalise(ds.images, ds), atol=1e-6)


def test_train_without_augmentation_covers_each_sample_once() -> None:
    ds = id_dataset(150)
    loader = DeviceLoader(ds, 32, "cpu", train=True, seed=1, crop_padding=0, flip=False, drop_last=False)
    assert len(loader) == 5
    seen = []
    for x, y in loader:
        assert torch.equal(x, normalise(ds.images[y], ds))  # unaugmented, labels match
        seen.append(y)
    order0 = torch.cat(seen)
    assert sorted(order0.tolist()) == list(range(150))
    assert not torch.equal(order0, torch.arange(150))
    order1 = torch.cat([y for _, y in loader])
    assert sorted(order1.tolist()) == list(range(150)) and not torch.equal(order0, order1)


def test_set_epoch_replays_exact_batches() -> None:
    ds = id_dataset(100, channels=3)
    run = DeviceLoader(ds, 16, "cpu", train=True, seed=7)
    history = [epoch_batches(run) for _ in range(3)]  # epochs 0, 1, 2 without set_epoch
    resumed = DeviceLoader(ds, 16, "cpu", train=True, seed=7)
    resumed.set_epoch(2)
    assert resumed.epoch == 2
    replay = epoch_batches(resumed)
    assert resumed.epoch == 3
    assert same_batches(history[2], replay)
    resumed.set_epoch(2)
    assert torch.equal(epoch_batches(resumed)[0][0], replay[0][0])
    assert not torch.equal(history[0][0][1], history[1][0][1])
    other_seed = DeviceLoader(ds, 16, "cpu", train=True, seed=8)
    assert not torch.equal(epoch_batches(other_seed)[0][0], history[0][0][0])


def test_loader_leaves_global_rng_alone() -> None:
    state = torch.get_rng_state()
    for _ in DeviceLoader(id_dataset(64), 16, "cpu", train=True, seed=0):
        pass
    assert torch.equal(state, torch.get_rng_state())


def _candidates(img: torch.Tensor, pad: int) -> list[tuple[int, int, bool, torch.Tensor]]:
    """Every crop-after-zero-padding (offset dy, dx) of img, with and without a flip."""
    _, h, w = img.shape
    padded = F.pad(img, (pad, pad, pad, pad))
    out = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            out.append((dy - pad, dx - pad, False, crop))
            out.append((dy - pad, dx - pad, True, crop.flip(-1)))
    return out


def test_random_crop_and_flip_are_real() -> None:
    ds = id_dataset(300, size=8, channels=2)
    loader = DeviceLoader(ds, 50, "cpu", train=True, seed=3, crop_padding=2, flip=True)
    offsets, flips = set(), []
    shifted = 0
    for x, y in loader:
        for out, i in zip(x, y.tolist(), strict=True):
            matches = [
                (dy, dx, fl)
                for dy, dx, fl, crop in _candidates(ds.images[i], 2)
                if torch.equal(out, normalise(crop[None], ds)[0])
            ]
            assert len(matches) == 1, f"sample {i}: output is not one padded crop/flip"
            dy, dx, fl = matches[0]
            offsets.add((dy, dx))
            flips.append(fl)
            shifted += (dy, dx) != (0, 0)
    assert offsets == {(a, b) for a in range(-2, 3) for b in range(-2, 3)}
    assert 0.35 < sum(flips) / len(flips) < 0.65
    assert shifted > 0.8 * len(flips)


def test_crop_moves_a_bright_pixel_into_zero_padding() -> None:
    img = torch.zeros(1, 1, 6, 6, dtype=torch.uint8)
    img[0, 0, 0, 5] = 255  # top-right corner
    ds = ArrayDataset(img.repeat(64, 1, 1, 1), torch.zeros(64, dtype=torch.int64), 1, (0.0,), (1.0,), "dot")
    crops = DeviceLoader(ds, 64, "cpu", train=True, seed=0, crop_padding=1, flip=False)
    x, _ = next(iter(crops))
    assert set(x.sum(dim=(1, 2, 3)).tolist()) == {0.0, 1.0}  # sometimes cropped away
    flipped = DeviceLoader(ds, 64, "cpu", train=True, seed=0, crop_padding=0, flip=True)
    x, _ = next(iter(flipped))
    corners = {(int(r), int(c)) for r, c in (torch.nonzero(x[:, 0])[:, 1:]).tolist()}
    assert corners == {(0, 5), (0, 0)}


# ---- Fashion-MNIST --------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def _fake_fashion(folder: Path, n: int, compress: bool) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    suffix = ".gz" if compress else ""
    _write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", images, compress)
    _write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", labels, compress)
    return images, labels


@pytest.mark.parametrize("compress", [False, True])
def test_fashion_mnist_reads_torchvision_layout(tmp_path: Path, compress: bool) -> None:
    images, labels = _fake_fashion(tmp_path / "FashionMNIST" / "raw", 20, compress)
    ds = load_arrays("fashion_mnist", tmp_path, "test")
    assert ds.images.shape == (20, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert np.array_equal(ds.images[:, 0].numpy(), images)
    assert np.array_equal(ds.labels.numpy(), labels) and ds.labels.dtype == torch.int64


def test_fashion_mnist_from_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (data.DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        msg = (
            f"Fashion-MNIST missing from {data.DEBIAN_FASHION_MNIST_DIR}: "
            "apt-get install dataset-fashion-mnist"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):  # as conftest.require
            pytest.fail(msg)
        pytest.skip(msg)
    monkeypatch.chdir(tmp_path)  # no ./data here: no root reads Debian's package
    train = load_arrays("fashion_mnist", None, "train")
    test = load_arrays("fashion_mnist", None, "test")
    assert len(train) == 60000 and len(test) == 10000
    assert train.images.shape[1:] == (1, 28, 28) == test.images.shape[1:]
    assert train.num_classes == 10
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert abs(train.images.float().mean().item() / 255 - train.mean[0]) < 1e-3
    bundle = build_data("fashion_mnist", root=None, batch_size=128, val_fraction=0.1)
    # build_data serves the 28x28 grey images zero-padded to 3x32x32 for the CIFAR zoo.
    assert bundle.input_size == (3, 32, 32) and bundle.num_classes == 10
    assert bundle.train.num_samples == 54000 and bundle.val is not None
    assert bundle.val.num_samples == 6000 and bundle.test.num_samples == 10000
    assert bundle.train.flip is False  # garments are not mirrored by convention
    x, y = next(iter(bundle.train))
    assert x.shape == (128, 3, 32, 32) and y.dtype == torch.int64
    x, y = next(iter(bundle.test))
    assert torch.equal(y, test.labels[: len(y)])
    inner = (test.images[: len(y)].float() / 255 - train.mean[0]) / train.std[0]
    assert torch.allclose(x[:, :, 2:30, 2:30], inner.expand(-1, 3, -1, -1), atol=1e-6)
    assert torch.allclose(x[:, :, :2], torch.full_like(x[:, :, :2], -train.mean[0] / train.std[0]))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is not an idx file at all", "not an idx file"),
        (b"\x1f\x8b\x08\x00garbage-gzip-stream", "cannot read"),
        (struct.pack(">BBBBIII", 0, 0, 8, 3, 10, 28, 28) + b"\x00" * 100, "truncated"),
        # mtime=0: the bytes (and so the test id) must not depend on the clock for xdist.
        (gzip.compress(struct.pack(">BBBBIII", 0, 0, 8, 3, 10, 28, 28) + b"\x00" * 100, mtime=0)[:-9],
         "cannot read"),
        (struct.pack(">BBBBI", 0, 0, 0x0D, 1, 4) + b"\x00" * 16, "type"),
    ],
    ids=["not-idx", "bad-gzip", "truncated", "truncated-gzip", "bad-type"],
)
def test_corrupt_idx_files_raise_data_error(tmp_path: Path, content: bytes, message: str) -> None:
    _fake_fashion(tmp_path, 5, compress=True)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_arrays("fashion_mnist", tmp_path, "test")
    with pytest.raises(DataError):
        read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")


def test_fashion_mnist_incomplete_and_inconsistent(tmp_path: Path) -> None:
    _fake_fashion(tmp_path, 5, compress=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="incomplete"):
        load_arrays("fashion_mnist", tmp_path, "test")
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4, dtype=np.uint8), False)
    with pytest.raises(DataError, match="labels for"):
        load_arrays("fashion_mnist", tmp_path, "test")


def test_a_data_root_that_is_set_is_never_replaced(tmp_path: Path) -> None:
    """A root the user set is the data they meant: Debian's copy (present on these machines)
    must not stand in for a missing or empty root."""
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DataError, match="does not exist") as err:
        load_arrays("fashion_mnist", missing, "train")
    assert str(missing) in str(err.value) and "/usr/share/datasets/fashion-mnist" in str(err.value)
    with pytest.raises(DataError, match="not found") as err:  # exists, holds no idx files
        load_arrays("fashion_mnist", tmp_path, "train")
    assert "/usr/share/datasets" not in str(err.value)  # not even looked at
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        load_arrays("cifar10", a_file, "train")


def test_fashion_mnist_missing_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bkdsearch.core.recipe.data.sources.DEBIAN_FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(DataError, match="download: true") as err:
        load_arrays("fashion_mnist", tmp_path, "train")
    assert "dataset-fashion-mnist" in str(err.value) and str(tmp_path) in str(err.value)


# ---- CIFAR ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")]
)
def test_cifar_missing_raises_data_error(tmp_path: Path, name: str, folder: str) -> None:
    with pytest.raises(DataError, match="download: true") as err:
        build_data(name, root=tmp_path, download=False)
    assert folder in str(err.value)


def test_cifar_corrupt_folder(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"junk")
    with pytest.raises(DataError, match="corrupt"):
        load_arrays("cifar10", tmp_path, "train")


# ---- image folders --------------------------------------------------------------------


def _make_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 6) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")


def test_imagefolder_bundle(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    bundle = build_data(
        "imagefolder", root=tmp_path, batch_size=4, eval_batch_size=3, image_size=16,
        val_fraction=0.25, seed=1,
    )  # fmt: skip
    assert bundle.num_classes == 2 and bundle.classes == ("cat", "dog")
    assert bundle.input_size == (3, 16, 16) and bundle.mean == data.IMAGENET_MEAN
    assert bundle.train.num_samples == 9 and bundle.val is not None
    assert bundle.val.num_samples == 3 and bundle.test.num_samples == 4
    assert len(bundle.train) == 2  # drop_last: 9 // 4
    train_batches = [(x.clone(), y.clone()) for x, y in bundle.train]
    for x, y in train_batches:
        assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    bundle.train.set_epoch(0)
    replay = list(bundle.train)
    assert same_batches(train_batches, replay)
    assert not torch.equal(next(iter(bundle.train))[0], train_batches[0][0])  # epoch 1 differs
    test_x = torch.cat([x for x, _ in bundle.test])
    assert test_x.shape == (4, 3, 16, 16) and torch.equal(test_x, torch.cat([x for x, _ in bundle.test]))
    assert torch.cat([y for _, y in bundle.test]).tolist() == [0, 0, 1, 1]


def test_imagefolder_workers_match_in_process(tmp_path: Path) -> None:
    _make_folder(tmp_path, per_class=4)
    kwargs = {"root": tmp_path, "batch_size": 4, "image_size": 12, "val_fraction": 0.0}
    solo = build_data("imagefolder", num_workers=0, **kwargs)
    pool = build_data("imagefolder", num_workers=2, **kwargs)
    for (xa, ya), (xb, yb) in zip(solo.train, pool.train, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        build_data("imagefolder", root=tmp_path / "missing")
    with pytest.raises(DataError, match=r"root/train/<class>"):
        build_data("imagefolder", root=tmp_path)  # exists, but no train/ folder
    flat = tmp_path / "flat"
    (flat / "train").mkdir(parents=True)
    (flat / "val").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(flat / "train" / "loose.png")  # no class folder
    with pytest.raises(DataError, match=r"root/train/<class>"):
        build_data("imagefolder", root=flat)
    with pytest.raises(DataError, match="root"):
        build_data("imagefolder", root=None)


def test_imagefolder_class_mismatch(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    (tmp_path / "val" / "dog").rename(tmp_path / "val" / "bird")
    with pytest.raises(DataError, match="differ"):
        build_data("imagefolder", root=tmp_path, image_size=8)


@pytest.mark.parametrize("workers", [0, 1])
def test_imagefolder_corrupt_image(tmp_path: Path, workers: int) -> None:
    _make_folder(tmp_path, per_class=2)
    bad = tmp_path / "val" / "cat" / "0.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing sensible")
    bundle = build_data(
        "imagefolder", root=tmp_path, batch_size=2, image_size=8, val_fraction=0.0, num_workers=workers
    )
    with pytest.raises(DataError, match="0.png") as err:
        list(bundle.test)
    assert "remove or replace" in str(err.value)


# ---- build_data -----------------------------------------------------------------------


def test_build_data_synthetic_bundle() -> None:
    cfg = SyntheticConfig(num_classes=4, image_size=16, train_size=400, test_size=100)
    bundle = build_data("synthetic", root=None, synthetic=cfg, batch_size=32, eval_batch_size=64, seed=3)
    assert bundle.name == "synthetic" and bundle.num_classes == 4
    assert bundle.input_size == (3, 16, 16) and len(bundle.mean) == 3
    assert bundle.val is not None and bundle.val.num_samples == 40
    assert bundle.train.num_samples == 360 and len(bundle.train) == 11
    assert bundle.test.num_samples == 100 and len(bundle.test) == 2
    assert bundle.train.flip and bundle.train.crop_padding == 4
    # The run seed changes the order, not the validation samples.
    other = build_data("synthetic", root=None, synthetic=cfg, batch_size=32, seed=4)
    assert other.val is not None
    assert torch.equal(torch.cat([x for x, _ in bundle.val]), torch.cat([x for x, _ in other.val]))
    assert not torch.equal(next(iter(bundle.train))[1], next(iter(other.train))[1])
    plain = build_data("synthetic", root=None, synthetic=cfg, augment=False, val_fraction=0)
    assert plain.val is None and not plain.train.flip and plain.train.crop_padding == 0


def test_build_data_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        build_data("mnist3d", root=None)
    assert set(data.DATASETS) == {"cifar10", "cifar100", "fashion_mnist", "imagefolder", "synthetic"}


def test_dataset_info() -> None:
    assert data.dataset_info("cifar100") == data.DatasetInfo(100, (3, 32, 32))
    assert data.dataset_info("fashion_mnist").input_size == (3, 32, 32)  # as build_data serves it
    assert data.dataset_info("synthetic", synthetic=SMALL) == data.DatasetInfo(4, (3, 16, 16))
    assert data.dataset_info("imagefolder", image_size=160).num_classes is None
    section = SimpleNamespace(dataset="synthetic", synthetic={"image_size": 16, "channels": 1})
    assert data.input_size_of(section) == (1, 16, 16)
    assert data.input_size_of(SimpleNamespace(dataset="cifar10", synthetic=None)) == (3, 32, 32)
    with pytest.raises(ValueError, match="known"):
        data.input_size_of(SimpleNamespace(dataset="synthetic", synthetic={"size": 16}))


def _jpeg_folder(root: Path, per_class: int = 5) -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    for split, n in (("train", per_class), ("val", 3)):
        for k, c in enumerate(("cat", "dog")):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                # Smooth images (JPEG- and resize-friendly), each class its own colour.
                base = np.zeros((48, 64, 3), dtype=np.float32)
                base[..., k] = 200
                noise = rng.normal(0, 20, (6, 8, 3)).repeat(8, 0).repeat(8, 1)
                pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.jpg", quality=95)
    Image.fromarray(pixels).save(root / "train" / "dog" / "extra.png")  # a PNG among the JPEGs


@pytest.mark.parametrize("split", ["train", "test"])
def test_imagefolder_device_decoding_matches_pil(tmp_path: Path, split: str) -> None:
    _jpeg_folder(tmp_path)
    kwargs = {"root": tmp_path, "batch_size": 4, "eval_batch_size": 4, "image_size": 24, "val_fraction": 0.0,
              "seed": 2}
    pil = getattr(build_data("imagefolder", decode="pil", **kwargs), split)
    device = getattr(build_data("imagefolder", decode="device", **kwargs), split)
    assert pil.decode == "pil" and device.decode == "device"
    pairs = list(zip(pil, device, strict=True))
    assert pairs
    for (x1, y1), (x2, y2) in pairs:
        assert x1.shape == x2.shape and torch.equal(y1, y2)
        # Same crops and flips; PIL's and torchvision's resampling differ by a few levels.
        assert (x1 - x2).abs().mean().item() < 0.1


def test_imagefolder_device_decoding_names_a_broken_file(tmp_path: Path) -> None:
    _jpeg_folder(tmp_path)
    broken = tmp_path / "train" / "cat" / "0.jpg"
    broken.write_bytes(broken.read_bytes()[:200])
    bundle = build_data("imagefolder", root=tmp_path, batch_size=11, image_size=16, val_fraction=0.0,
                        decode="device")
    with pytest.raises(DataError, match=r"cannot decode image .*0\.jpg"):
        list(bundle.train)
