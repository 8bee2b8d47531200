"""The largest value of every size a spec or option gives, chosen from real use with room to
spare, so that a typo (``num_classes: 1000000000``, ``--devices 0-9999999``) is refused at
validation, before anything is allocated, instead of exhausting the host.

Each limit is stated in the spec's JSON Schema (``bkdsearch schema``: the fields' ``maximum``)
and named by the message that refuses a value over it.
"""

from __future__ import annotations

MAX_EPOCHS = 5_000
"""Epochs of a run (and its warm-ups): published recipes use 90 to 600 (CIFAR's 240)."""

MAX_LR = 10.0
"""Peak learning rate: SGD uses 0.01-0.4 on CIFAR/ImageNet, large-batch LARS recipes up to ~10."""

MAX_LOSS_WEIGHT = 1_000.0
"""A loss weight (alpha, beta, gamma, DKD's weights): published ones are 0.1 to 8 (DKD's beta)."""

MAX_TAU = 100.0
"""Distillation temperature: 1 to 20 in the literature."""

MAX_WEIGHT_DECAY = 1.0
"""Weight decay: 1e-5 to 0.05 in practice (AdamW's decoupled decay up to ~0.3)."""

MAX_BATCH = 16_384
"""A batch of images per step: ImageNet's large-batch recipes reach 8k-16k."""

MAX_NUM_WORKERS = 256
"""Decoding processes of one loader."""

MAX_SYNTHETIC_CLASSES = 1_000
"""Classes of the synthetic dataset (ImageNet's 1,000)."""

MAX_SYNTHETIC_IMAGE_SIZE = 256
"""Height and width of synthetic images in pixels."""

MAX_SYNTHETIC_SPLIT = 200_000
"""Samples in one split of the synthetic dataset (CIFAR's training split has 50,000)."""

MAX_SYNTHETIC_MODES = 64
"""Motifs per class of the synthetic dataset."""

MAX_SYNTHETIC_VALUES = 2**29
"""Pixel values of the synthetic dataset, both splits together (train_size + test_size) x
channels x image_size^2: 512 MiB as bytes, 2 GiB as the float copy its statistics use;
CIFAR-sized data has 1.8e8."""

MAX_TRIALS = 100_000
"""A study's cap on finished trials (``search.n_trials``, ``run --n-trials``)."""

MAX_TIMEOUT_S = 365 * 24 * 3600.0
"""A timeout in seconds (``search.timeout``, ``run --timeout``): one year; finite."""

MAX_ENQUEUED = 1_000
"""Configurations ``search.enqueue`` may list."""

MAX_PARTITIONS = 64
"""Candidate partitions of one spec."""

MAX_CUTS = 256
"""Cut atoms on one side of an explicit partition (a ResNet110 has 56 atoms)."""

MAX_GPU_INDEX = 1_023
"""The largest GPU index ``--devices`` (and a device name) may give; no host has more."""

MAX_GFLOPS = 1e9
"""``search.max_train_gflops``: a training step of a billion GFLOPs is beyond any model here."""


def over(limit: float) -> str:
    """Return the tail of a message refusing a value over ``limit`` (``"over the limit of 5,000"``)."""
    return f"over the limit of {limit:,}" if isinstance(limit, int) else f"over the limit of {limit:g}"
