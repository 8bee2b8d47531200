"""The resolved configuration of one run: :class:`RunConfig` and its parts (every value fixed).

What ``train``, the search and ``export`` share; nothing in it knows about distributions
or Optuna.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    WithJsonSchema,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

from .arch_names import ARCH_NAMES
from .limits import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_GPU_INDEX,
    MAX_LOSS_WEIGHT,
    MAX_LR,
    MAX_NUM_WORKERS,
    MAX_SYNTHETIC_CLASSES,
    MAX_SYNTHETIC_IMAGE_SIZE,
    MAX_SYNTHETIC_MODES,
    MAX_SYNTHETIC_SPLIT,
    MAX_TAU,
    MAX_WEIGHT_DECAY,
)

SEED_LIMIT = 2**32
"""Seeds are in ``[0, SEED_LIMIT)``: what numpy's and torch's seeding accept."""

DEVICE_FORMS = f"auto, cpu, cuda, cuda:N or a bare GPU index N (N <= {MAX_GPU_INDEX})"
"""The forms a device name may take, for error messages."""

_DEVICE = re.compile(r"auto|cpu|cuda|(?:cuda:)?[0-9]{1,4}")


def check_device(name: str) -> str:
    """Return ``name`` when it is a device bkdsearch can use (``auto``, ``cpu``, ``cuda``,
    ``cuda:N`` or a bare GPU index ``N``).

    Raises:
        ValueError: any other name, with a message listing the allowed forms.
    """
    if not isinstance(name, str) or not _DEVICE.fullmatch(name) or (
            name[-1].isdigit() and int(name.removeprefix("cuda:")) > MAX_GPU_INDEX):
        raise ValueError(f"device {name!r} is not one of the allowed forms: {DEVICE_FORMS}")
    return name


class _Strict(BaseModel):
    # allow_inf_nan=False: every float field (and float inside a tuple or union) refuses
    # nan, inf and -inf; a non-finite learning rate or temperature is never a valid choice.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_Number = Annotated[StrictInt | StrictFloat, WithJsonSchema({"type": "number"})]
"""A real number: an int or a float, kept as given (no boolean, no string, finite)."""


@with_config(ConfigDict(extra="forbid", allow_inf_nan=False))
class SyntheticOptions(TypedDict, total=False):
    """Options of the built-in synthetic dataset: the fields of
    :class:`bkdsearch.core.recipe.data.SyntheticConfig` (which checks their ranges), every one optional."""

    num_classes: Annotated[StrictInt, Field(le=MAX_SYNTHETIC_CLASSES, description=(
        f"Number of classes, 2..{MAX_SYNTHETIC_CLASSES} (default 10)."))]
    image_size: Annotated[StrictInt, Field(le=MAX_SYNTHETIC_IMAGE_SIZE, description=(
        f"Height and width in pixels, 8..{MAX_SYNTHETIC_IMAGE_SIZE} (default 32)."))]
    channels: Annotated[StrictInt, Field(description="1 (grey) or 3 (colour) (default 3).")]
    train_size: Annotated[StrictInt, Field(le=MAX_SYNTHETIC_SPLIT, description=(
        f"Samples in the training split, 1..{MAX_SYNTHETIC_SPLIT}; (train_size + test_size) x channels x "
        "image_size^2 at most 2**29 pixel values (default 5000)."))]
    test_size: Annotated[StrictInt, Field(le=MAX_SYNTHETIC_SPLIT, description=(
        f"Samples in the test split, 1..{MAX_SYNTHETIC_SPLIT} (default 1000)."))]
    modes_per_class: Annotated[StrictInt, Field(le=MAX_SYNTHETIC_MODES, description=(
        f"Motifs per class, 1..{MAX_SYNTHETIC_MODES} (default 4)."))]
    group_size: Annotated[StrictInt, Field(description=(
        "Classes per sibling group, in 1..num_classes (1: no groups) (default 2)."))]
    sibling_gap: Annotated[_Number, Field(description=(
        "How far a class's motifs stray from its group's shared ones, in [0, 1] (0: siblings identical, "
        "1: as different as unrelated motifs) (default 0.6)."))]
    mix: Annotated[_Number, Field(description=(
        "Largest contrast of a distractor motif relative to the labelled one, in [0, 1) (default 0.7)."))]
    class_tint: Annotated[_Number, Field(description=(
        "Strength of the group's global colour tint, >= 0 (0: motifs alone identify the class) (default 0.6)."))]
    label_noise: Annotated[_Number, Field(description=(
        "Fraction of training labels replaced by another class, in [0, 1); test labels stay clean "
        "(default 0.05)."))]
    clutter: Annotated[_Number, Field(description=(
        "Amplitude of the class-independent smooth background, >= 0 (default 0.5)."))]
    pixel_noise: Annotated[_Number, Field(description=(
        "Standard deviation of per-pixel Gaussian noise, >= 0 (default 0.3)."))]
    max_shift: Annotated[_Number, Field(description=(
        "Largest translation of a motif, as a fraction of the image size, in [0, 0.5] (default 0.25)."))]
    max_rotation: Annotated[_Number, Field(description="Largest rotation in degrees, in [0, 180] (default 15.0).")]


SYNTHETIC_OPTIONS: tuple[str, ...] = tuple(SyntheticOptions.__annotations__)
"""The keys ``data.synthetic`` may have, in :class:`bkdsearch.core.recipe.data.SyntheticConfig`'s order."""


def _known_synthetic_options(value: Any) -> Any:
    """Return ``value`` unless it is a mapping with a key that is no synthetic option.

    Raises:
        ValueError: naming the unknown keys and listing the known ones.
    """
    if isinstance(value, dict):
        unknown = sorted(str(k) for k in value if k not in SYNTHETIC_OPTIONS)
        if unknown:
            raise ValueError(f"unknown synthetic option(s) {unknown}; known: {', '.join(SYNTHETIC_OPTIONS)}")
    return value


_CheckedSyntheticOptions = Annotated[SyntheticOptions, BeforeValidator(_known_synthetic_options)]
"""The type of ``data.synthetic``: a plain dict at run time (what ``SyntheticConfig.from_dict``
reads), its keys and value types checked, an unknown key an error listing the known ones."""


class DataConfig(_Strict):
    """Dataset, split and batch settings of one run."""

    dataset: Literal["cifar10", "cifar100", "fashion_mnist", "imagefolder", "synthetic"] = Field(description=(
        "The dataset: CIFAR-10/100 or Fashion-MNIST (torchvision's files), imagefolder (an ImageNet-style "
        "root/train/<class>/* and root/val/<class>/* tree) or synthetic (generated, see data.synthetic)."))
    root: str | None = Field(None, description=(
        "Data folder (./data when null for the torchvision datasets; required for imagefolder; "
        "unused by synthetic)."))
    download: bool = Field(False, description="Let torchvision download CIFAR / Fashion-MNIST when absent.")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description=(
        "Share of the training set held out for validation, stratified by class (0: no validation split)."))
    batch_size: int = Field(64, ge=1, le=MAX_BATCH, description=(
        f"Training batch size, 1..{MAX_BATCH} (every training batch is full)."))
    eval_batch_size: int = Field(512, ge=1, le=MAX_BATCH, description=(
        f"Batch size of the validation and test loaders, 1..{MAX_BATCH}."))
    augment: bool = Field(True, description="Random crop and flip of training images (false: shuffling only).")
    num_workers: int = Field(0, ge=0, le=MAX_NUM_WORKERS, description=(
        f"Decoding processes of an imagefolder loader, 0..{MAX_NUM_WORKERS}."))
    image_size: int | None = Field(None, ge=8, le=1024, description=(
        "Crop size of imagefolder images in pixels (null: 224, the ImageNet recipe); other datasets keep "
        "their own size."))
    decode: Literal["auto", "pil", "device"] = Field("auto", description=(
        "How imagefolder images are decoded: pil (in the num_workers processes), device (batches of JPEG "
        "bytes decoded by torchvision on the training device, crop and flip there too) or auto (device on "
        "CUDA, else pil)."))
    synthetic: _CheckedSyntheticOptions | None = Field(None, description=(
        "Options of the synthetic dataset (only with dataset: synthetic; null: all defaults)."))
    split_seed: int = Field(0, ge=0, lt=2**32, description=(
        "Seed of the dataset itself: the validation split (and the synthetic set's generation). "
        "Kept apart from the run's seed so every trial of a study validates on the same samples."))
    train_fraction: float = Field(1.0, gt=0.0, le=1.0, description=(
        "Share of the training split a run trains on (class-stratified, fixed by split_seed); "
        "below 1 only at a search's lower fidelity."))


def check_milestones(milestones: list[int] | None, epochs: int | None) -> None:
    """Raise ValueError naming the milestones that are not increasing epochs >= 1, or (when
    ``epochs`` is known) fall at or past the last epoch, where they would never apply."""
    if not milestones:
        return
    if any(m < 1 for m in milestones) or any(b <= a for a, b in zip(milestones, milestones[1:], strict=False)):
        raise ValueError(f"milestones {milestones} must be increasing epochs >= 1")
    late = [m for m in milestones if epochs is not None and m >= epochs]
    if late:
        raise ValueError(f"milestones {late} are at or past the last epoch ({epochs}): "
                         "they would never lower the learning rate")


class Recipe(_Strict):
    """Optimiser and schedule of one run (every value fixed)."""

    epochs: int = Field(ge=1, le=MAX_EPOCHS, description=f"Training epochs, 1..{MAX_EPOCHS}.")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="SGD (with momentum) or AdamW.")
    lr: float = Field(0.05, gt=0, le=MAX_LR, description=(
        f"Peak learning rate, in (0, {MAX_LR:g}] (reached after the warm-up)."))
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum, in [0, 1) (unused by AdamW).")
    nesterov: bool = Field(False, description="Nesterov momentum (SGD with momentum > 0).")
    weight_decay: float = Field(5e-4, ge=0, le=MAX_WEIGHT_DECAY, description=(
        f"Weight decay, in [0, {MAX_WEIGHT_DECAY:g}] (decoupled for AdamW)."))
    schedule: Literal["multistep", "cosine", "constant"] = Field("multistep", description=(
        "Learning-rate schedule after the warm-up: multistep (times lr_decay at each milestone), "
        "cosine (to 0 at the last epoch) or constant."))
    milestones: list[int] | None = Field(None, description=(
        "Increasing epochs (>= 1, before the last) at which multistep lowers the learning rate "
        "(null: 5/8, 6/8 and 7/8 of the epochs, the published CIFAR schedule)."))
    lr_decay: float = Field(0.1, gt=0, le=1, description="Factor multistep applies at each milestone, in (0, 1].")
    warmup_epochs: int = Field(0, ge=0, le=MAX_EPOCHS, description=(
        f"Epochs of linear learning-rate ramp-up to lr, 0..{MAX_EPOCHS} (0: none)."))

    @model_validator(mode="after")
    def _milestones_inside(self) -> Recipe:
        check_milestones(self.milestones, self.epochs)
        return self


DEFAULT_TEACHER_RECIPE = Recipe(epochs=30, lr=0.05, schedule="cosine")
"""The recipe of a teacher's CE training when the spec gives none (``teacher.recipe: null``)."""


_DKD_WARMUP_DOC = (
    "Epochs over which the DKD loss ramps in linearly: its terms are scaled by "
    "min(epoch / dkd_warmup, 1), epochs counted from 1, so the full loss applies from epoch "
    "dkd_warmup on; 0 (the default) turns the ramp off. Applies to the DKD terms only "
    "(method dkd, or blockkd with logit_loss dkd). The published DKD recipe uses 20 of "
    "240 epochs on CIFAR."
)


class LossConfig(_Strict):
    """Loss weights and temperature; which terms apply depends on the method."""

    tau: float = Field(4.0, gt=0, le=MAX_TAU, description=f"Distillation temperature, in (0, {MAX_TAU:g}].")
    alpha: float = Field(1.0, ge=0, le=MAX_LOSS_WEIGHT, description=(
        f"Weight of the cross-entropy terms (student and stones), in [0, {MAX_LOSS_WEIGHT:g}]."))
    beta: float = Field(1.0, ge=0, le=MAX_LOSS_WEIGHT, description=(
        f"Weight of the logit-distillation terms (KL or DKD), in [0, {MAX_LOSS_WEIGHT:g}]."))
    gamma: float = Field(0.0, ge=0, le=MAX_LOSS_WEIGHT, description=(
        "Weight of the ensemble term of Block-KD (KD towards the stones' mean logits), in "
        f"[0, {MAX_LOSS_WEIGHT:g}] (0: off)."))
    decay: float = Field(0.5, gt=0, le=1, description=(
        "Block-KD stone weight base, in (0, 1]: a stone holding k teacher blocks weighs decay**k."))
    logit_loss: Literal["kl", "dkd"] = Field("kl", description=(
        "Logit loss of Block-KD: kl (Hinton KD) or dkd (decoupled KD); method dkd always uses dkd."))
    dkd_alpha: float = Field(1.0, ge=0, le=MAX_LOSS_WEIGHT, description=(
        f"DKD's weight of the target-class term (TCKD), in [0, {MAX_LOSS_WEIGHT:g}]."))
    dkd_beta: float = Field(8.0, ge=0, le=MAX_LOSS_WEIGHT, description=(
        f"DKD's weight of the non-target-class term (NCKD), in [0, {MAX_LOSS_WEIGHT:g}]."))
    dkd_warmup: int = Field(0, ge=0, le=MAX_EPOCHS, description=_DKD_WARMUP_DOC)


class PartitionConfig(_Strict):
    """Concrete cut atoms of one run (n-1 on each side) and the candidate's name."""

    name: str = Field("custom", description="Name of the candidate partition (under the spec's partitions).")
    teacher: list[str] = Field(description="The teacher's cut atoms, in order (n-1 for n blocks).")
    student: list[str] = Field(description="The student's cut atoms, in order (as many as the teacher's).")


ORDER_DOC = (
    "Stepping-stone order: shallow_first (stone i is the student's first i blocks followed by the "
    "teacher's remaining ones; stones 1..n) or deep_first (the teacher's first i blocks followed by the "
    "student's; stones 1..n-1)."
)
"""Description of ``blockkd.order`` (the resolved config's and the spec's)."""

CONNECTOR_DOC = "Connector between a student and a teacher block: a 1x1 or 3x3 convolution, or identity."
"""Description of ``blockkd.connector`` (the resolved config's and the spec's)."""


class BlockKDConfig(_Strict):
    """Stepping-stone settings of one Block-KD run."""

    partition: PartitionConfig = Field(description="The cut atoms splitting teacher and student into blocks.")
    order: Literal["shallow_first", "deep_first"] = Field("shallow_first", description=ORDER_DOC)
    connector: Literal["conv1x1", "conv3x3", "identity"] = Field("conv1x1", description=CONNECTOR_DOC)
    stones: list[int] | None = Field(None, description="The active stepping-stones, 1-based (null: all).")


class RuntimeConfig(_Strict):
    """How a run executes; never changes what it computes beyond float rounding."""

    device: str = Field("auto", description=(
        f"Where the run trains: {DEVICE_FORMS} (auto: a GPU when there is one)."))
    amp: Literal["auto", "bf16", "off"] = Field("auto", description=(
        "Mixed precision: bf16 autocast on CUDA (auto or bf16), none on CPU or with off."))
    channels_last: Literal["auto", "on", "off"] = Field("auto", description=(
        "channels_last memory format on CUDA (auto or on); off keeps the default layout."))
    cuda_graph: Literal["auto", "on", "off"] = Field("auto", description=(
        "Capture the whole training step in a CUDA graph and replay it (auto or on, on CUDA without "
        "compile); off: eager steps."))
    compile: bool = Field(False, description="torch.compile the training step (turns the CUDA graph off).")
    sync_bn: bool = Field(False, description=(
        "With several processes per run (--gpus-per-trial, train --gpus, torchrun): BatchNorm statistics "
        "over the global batch of all of them (SyncBN); off: each process normalises its own shard, as in "
        "torchvision's reference scripts."))

    @field_validator("device")
    @classmethod
    def _device_form(cls, v: str) -> str:
        """Return ``v`` when it is a device name of an allowed form.

        Raises:
            ValueError: another name; the message lists the allowed forms.
        """
        return check_device(v)


ARCH_DOC = "Architecture: the name of a model of the zoo."
"""Description of an ``arch`` field; the JSON Schema lists the names (:data:`ARCH_NAMES`)."""

CHECKPOINT_DOC = (
    "Path of a weights file, loaded weights-only (null: a student starts from random weights, a teacher "
    "is trained with CE once and cached under studies/)."
)
"""Description of a model's ``checkpoint`` field."""


class ModelConfig(_Strict):
    """A network: zoo architecture and optional checkpoint (a path, loaded weights-only)."""

    arch: str = Field(description=ARCH_DOC, json_schema_extra={"enum": list(ARCH_NAMES)})
    checkpoint: str | None = Field(None, description=CHECKPOINT_DOC)


SEED_DOC = (
    "Seed of the run (initialisation, data order, augmentation): 0 <= seed < 2**32, the limits of numpy's "
    "and torch's seeding."
)
"""Description of a ``seed`` field."""

METHOD_DOC = (
    "Training method: ce (cross-entropy only, no teacher), kd (Hinton KD), dkd (decoupled KD) or "
    "blockkd (block-wise logit distillation through stepping-stones)."
)
"""Description of a ``method`` field."""


class RunConfig(_Strict):
    """One fully resolved training run: what ``train``, the search and ``export`` share."""

    name: str = Field(description="Name of the spec the run comes from.")
    seed: int = Field(0, ge=0, lt=SEED_LIMIT, description=SEED_DOC)
    teacher_seed: int = Field(0, ge=0, lt=2**32, description=(
        "Seed of the teacher's CE training when it has no checkpoint: the spec's seed, kept when a "
        "run's own seed changes (confirmation and comparison seeds share one teacher)."))
    method: Literal["ce", "kd", "dkd", "blockkd"] = Field(description=METHOD_DOC)
    data: DataConfig = Field(description="Dataset, split and batches.")
    teacher: ModelConfig | None = Field(description="The frozen teacher (null for method ce).")
    teacher_recipe: Recipe | None = Field(None, description=(
        "Recipe of the teacher's CE training when it has no checkpoint (null: 30 epochs, lr 0.05, cosine)."))
    student: ModelConfig = Field(description="The student network.")
    train: Recipe = Field(description="The student's optimiser and schedule.")
    loss: LossConfig = Field(LossConfig(), description="Loss weights and temperature.")
    blockkd: BlockKDConfig | None = Field(None, description="Stepping-stone settings (method blockkd only).")
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="How the run executes (not part of its digest).")

    def digest(self) -> str:
        """Return a short stable hash of what the run computes: everything but ``runtime``.

        ``runtime`` (device, amp, channels_last, cuda_graph, compile) changes only how a run
        executes, so it is left out for every user of the hash:

        - checkpoints (``last.pt``): a trial retried on another kind of device (its GPU
          worker died, a CPU worker retries it) or with graphs/amp switched resumes from the
          saved epoch;
        - the run folders of ``bkdsearch train``: the same run under another runtime finds
          (and resumes) its folder, as it already did with ``--device``;
        - the teacher cache: a teacher trained under one runtime serves all of them, so a
          retry on another device kind distils from the same teacher instead of training a
          second one.
        """
        blob = json.dumps(self.model_dump(mode="json", exclude={"runtime"}), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]
