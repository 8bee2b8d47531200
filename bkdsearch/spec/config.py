"""The resolved configuration of one run: :class:`RunConfig` and its parts (every value fixed).

What ``train``, the search and ``export`` share; nothing in it knows about distributions
or Optuna.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SEED_LIMIT = 2**32
"""Seeds are in ``[0, SEED_LIMIT)``: what numpy's and torch's seeding accept."""

DEVICE_FORMS = "auto, cpu, cuda, cuda:N or a bare GPU index N"
"""The forms a device name may take, for error messages."""

_DEVICE = re.compile(r"auto|cpu|cuda|(?:cuda:)?[0-9]{1,3}")


def check_device(name: str) -> str:
    """Return ``name`` when it is a device bkdsearch can use (``auto``, ``cpu``, ``cuda``,
    ``cuda:N`` or a bare GPU index ``N``).

    Raises:
        ValueError: any other name, with a message listing the allowed forms.
    """
    if not isinstance(name, str) or not _DEVICE.fullmatch(name):
        raise ValueError(f"device {name!r} is not one of the allowed forms: {DEVICE_FORMS}")
    return name


class _Strict(BaseModel):
    # allow_inf_nan=False: every float field (and float inside a tuple or union) refuses
    # nan, inf and -inf; a non-finite learning rate or temperature is never a valid choice.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DataConfig(_Strict):
    """Dataset, split and batch settings of one run."""

    dataset: Literal["cifar10", "cifar100", "fashion_mnist", "imagefolder", "synthetic"]
    root: str | None = None
    download: bool = False
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    augment: bool = True
    num_workers: int = Field(0, ge=0)
    synthetic: dict[str, Any] | None = None
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

    epochs: int = Field(ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] | None = None
    lr_decay: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _milestones_inside(self) -> Recipe:
        check_milestones(self.milestones, self.epochs)
        return self


_DKD_WARMUP_DOC = (
    "Epochs over which the DKD loss ramps in linearly: its terms are scaled by "
    "min(epoch / dkd_warmup, 1), epochs counted from 1, so the full loss applies from epoch "
    "dkd_warmup on; 0 (the default) turns the ramp off. Applies to the DKD terms only "
    "(method dkd, or blockkd with logit_loss dkd). The published DKD recipe uses 20 of "
    "240 epochs on CIFAR."
)


class LossConfig(_Strict):
    """Loss weights and temperature; which terms apply depends on the method."""

    tau: float = Field(4.0, gt=0)
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(1.0, ge=0)
    gamma: float = Field(0.0, ge=0)
    decay: float = Field(0.5, gt=0, le=1)
    logit_loss: Literal["kl", "dkd"] = "kl"
    dkd_alpha: float = Field(1.0, ge=0)
    dkd_beta: float = Field(8.0, ge=0)
    dkd_warmup: int = Field(0, ge=0, description=_DKD_WARMUP_DOC)


class PartitionConfig(_Strict):
    """Concrete cut atoms of one run (n-1 on each side) and the candidate's name."""

    name: str = "custom"
    teacher: list[str]
    student: list[str]


class BlockKDConfig(_Strict):
    """Stepping-stone settings of one Block-KD run."""

    partition: PartitionConfig
    order: Literal["shallow_first", "deep_first"] = "shallow_first"
    connector: Literal["conv1x1", "conv3x3", "identity"] = "conv1x1"
    stones: list[int] | None = None


class RuntimeConfig(_Strict):
    """How a run executes; never changes what it computes beyond float rounding."""

    device: str = "auto"
    amp: Literal["auto", "bf16", "off"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    cuda_graph: Literal["auto", "on", "off"] = "auto"
    compile: bool = False

    @field_validator("device")
    @classmethod
    def _device_form(cls, v: str) -> str:
        """Return ``v`` when it is a device name of an allowed form.

        Raises:
            ValueError: another name; the message lists the allowed forms.
        """
        return check_device(v)


class ModelConfig(_Strict):
    """A network: zoo architecture and optional checkpoint (a path, loaded weights-only)."""

    arch: str
    checkpoint: str | None = None


class RunConfig(_Strict):
    """One fully resolved training run: what ``train``, the search and ``export`` share."""

    name: str
    seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    method: Literal["ce", "kd", "dkd", "blockkd"]
    data: DataConfig
    teacher: ModelConfig | None
    teacher_recipe: Recipe | None = None
    student: ModelConfig
    train: Recipe
    loss: LossConfig = LossConfig()
    blockkd: BlockKDConfig | None = None
    runtime: RuntimeConfig = RuntimeConfig()

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
