"""The built-in synthetic image-classification dataset (:class:`SyntheticConfig`,
:func:`make_synthetic`)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from .arrays import ArrayDataset, _check_split, _cpu_generator


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


def load_synthetic(root: Any, split: str, download: bool, seed: int, options: Any) -> ArrayDataset:
    """Return the synthetic set's ``split`` for ``options`` (a SyntheticConfig, a spec's
    mapping as sorted items, or None for the defaults), generated from ``seed``."""
    cfg = options if isinstance(options, SyntheticConfig) else SyntheticConfig.from_dict(dict(options or ()))
    return _load_synthetic_cached(cfg, seed, split)
