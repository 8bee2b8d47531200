"""The spec format (Pydantic v2): search-space values and the sections of a spec file.

A spec is YAML. Any searchable value is either fixed or a distribution::

    lr: 0.05                                  # fixed
    lr: {float: [0.01, 0.2], log: true}       # float range
    epochs: {int: [10, 40], step: 10}         # int range
    order: {choice: [shallow_first, deep_first]}
"""

from __future__ import annotations

import functools
import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .arch_names import ARCH_NAMES
from .config import (
    _DKD_WARMUP_DOC,
    ARCH_DOC,
    CHECKPOINT_DOC,
    CONNECTOR_DOC,
    METHOD_DOC,
    ORDER_DOC,
    SEED_DOC,
    SEED_LIMIT,
    BlockKDConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    Recipe,
    RunConfig,
    RuntimeConfig,
    _Strict,
    check_milestones,
)

METHODS = ("ce", "kd", "dkd", "blockkd")

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
"""The JSON Schema dialect of :func:`spec_json_schema` (the ``$schema`` keyword)."""

SCHEMA_ID = "https://bkdsearch.dev/schema/spec.json"
"""The identifier of the spec's JSON Schema (the ``$id`` keyword)."""


def _doc(model: type[BaseModel], field: str, *, searched: bool = True) -> str:
    """The description of ``model.field`` of the resolved config, for the spec's field of the same
    name (which, when ``searched``, may also be a distribution)."""
    doc = model.model_fields[field].description
    assert doc, f"{model.__name__}.{field} has no description"
    return f"{doc} Fixed or searched." if searched else doc


DATASETS = ("cifar10", "cifar100", "fashion_mnist", "imagefolder", "synthetic")


def _check_range(low: float, high: float, log: bool, default: float | None) -> None:
    if not low < high:
        raise ValueError(f"range must have low < high, got [{low}, {high}]")
    if log and low <= 0:
        raise ValueError("a log range needs low > 0")
    if default is not None and not low <= default <= high:
        raise ValueError(f"default {default} is outside [{low}, {high}]")


class FloatRange(_Strict):
    """``{float: [low, high], log: false, default: ...}``: a float searched in [low, high]."""

    float_range: tuple[float, float] = Field(alias="float", description="[low, high], low < high: the range searched.")
    log: bool = Field(False, description="Sample on a log scale (needs low > 0).")
    default: float | None = Field(None, description=(
        "The value taken outside a search (`bkdsearch train`), in [low, high] (null: the midpoint, "
        "geometric when log)."))

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        _check_range(*self.float_range, self.log, self.default)
        return self

    def fallback(self) -> float:
        """Return the default, else the (geometric when log) midpoint."""
        if self.default is not None:
            return self.default
        low, high = self.float_range
        return math.sqrt(low * high) if self.log else (low + high) / 2


class IntRange(_Strict):
    """``{int: [low, high], step: 1, log: false, default: ...}``: an integer in [low, high]."""

    int_range: tuple[int, int] = Field(alias="int", description="[low, high], low < high: the integers searched.")
    step: int = Field(1, ge=1, description="Spacing of the values searched, counted from low, >= 1.")
    log: bool = Field(False, description="Sample on a log scale (needs low > 0).")
    default: int | None = Field(None, description=(
        "The value taken outside a search (`bkdsearch train`), in [low, high] (null: low)."))

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        _check_range(*self.int_range, self.log, self.default)
        return self

    def fallback(self) -> int:
        """Return the default, else the low end."""
        return self.int_range[0] if self.default is None else self.default


def _non_finite(value: Any) -> float | None:
    """Return the first nan/inf float in ``value`` (searched through lists and dicts), else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else ()
    for item in items:
        found = _non_finite(item)
        if found is not None:
            return found
    return None


class Choice(_Strict):
    """``{choice: [a, b, ...], default: a}``: one of a list of values."""

    choice: list[Any] = Field(min_length=1, description="The values to choose from (at least one, all finite).")
    default: Any = Field(None, description=(
        "The value taken outside a search (`bkdsearch train`), one of the choices (null: the first)."))

    @model_validator(mode="after")
    def _check(self) -> Choice:
        bad = _non_finite([*self.choice, self.default])
        if bad is not None:
            raise ValueError(f"choices must be finite, got {bad!r}")
        if self.default is not None and self.default not in self.choice:
            raise ValueError(f"default {self.default!r} is not one of {self.choice}")
        return self

    def fallback(self) -> Any:
        """Return the default, else the first choice."""
        return self.choice[0] if self.default is None else self.default


Distribution = FloatRange | IntRange | Choice


SearchFloat = float | FloatRange | Choice


SearchInt = int | IntRange | Choice


SearchBool = bool | Choice


def _is_dist(value: Any) -> bool:
    return isinstance(value, FloatRange | IntRange | Choice)


@functools.cache
def _adapter(model: type[BaseModel], field: str) -> TypeAdapter[Any]:
    """The validator of one field of a resolved config (its type and constraints, finite floats)."""
    info = model.model_fields[field]
    kind = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
    return TypeAdapter(kind, config=ConfigDict(allow_inf_nan=False))


def _values_taken(value: Any) -> list[tuple[str, Any]]:
    """``(what, value)`` for every value a fixed or searched value may take, or that bounds it:
    a range's ends and default, each choice; a range's values lie between its ends, and every
    constraint of a config field is an interval, so checking the ends checks them all."""
    if isinstance(value, FloatRange | IntRange):
        low, high = value.float_range if isinstance(value, FloatRange) else value.int_range
        ends = [("range low end", low), ("range high end", high)]
        return ends + ([("default", value.default)] if value.default is not None else [])
    if isinstance(value, Choice):
        return [("choice", x) for x in value.choice]
    return [("value", value)]


def check_values(value: Any, model: type[BaseModel], field: str) -> Any:
    """Return ``value`` (fixed or a distribution) when every value it may take is valid for
    ``model.field`` of the resolved config (type, bounds, finite; no boolean for a number).

    Raises:
        ValueError: naming the first value that is not, and why.
    """
    adapter = _adapter(model, field)
    for what, x in _values_taken(value):
        try:
            out = adapter.validate_python(x)
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise ValueError(f"{what} {x!r} is invalid: {reason[:1].lower()}{reason[1:]}") from None
        if isinstance(x, bool) and not isinstance(out, bool):  # YAML's yes/no/on/off are booleans
            raise ValueError(f"{what} {x!r} is invalid: a boolean, where a number is expected")
    return value


class SearchRecipe(_Strict):
    """The student's recipe in a spec: any value fixed or searched."""

    epochs: SearchInt = Field(description=_doc(Recipe, "epochs"))
    optimizer: Literal["sgd", "adamw"] | Choice = Field("sgd", description=_doc(Recipe, "optimizer"))
    lr: SearchFloat = Field(0.05, description=_doc(Recipe, "lr"))
    momentum: SearchFloat = Field(0.9, description=_doc(Recipe, "momentum"))
    nesterov: SearchBool = Field(False, description=_doc(Recipe, "nesterov"))
    weight_decay: SearchFloat = Field(5e-4, description=_doc(Recipe, "weight_decay"))
    schedule: Literal["multistep", "cosine", "constant"] | Choice = Field(
        "multistep", description=_doc(Recipe, "schedule"))
    milestones: list[int] | None = Field(None, description=_doc(Recipe, "milestones", searched=False))
    lr_decay: float = Field(0.1, gt=0, le=1, description=_doc(Recipe, "lr_decay", searched=False))
    warmup_epochs: SearchInt = Field(0, description=_doc(Recipe, "warmup_epochs"))

    @field_validator("epochs", "optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule",
                     "warmup_epochs")
    @classmethod
    def _valid_values(cls, v: Any, info: ValidationInfo) -> Any:
        """Return ``v`` when every value it may take is valid for the run's recipe (epochs >= 1,
        lr > 0, momentum in [0, 1), weight_decay >= 0, all finite).

        Raises:
            ValueError: naming the first value (a fixed value, a range end or a choice) that is not.
        """
        assert info.field_name is not None
        return check_values(v, Recipe, info.field_name)

    @model_validator(mode="after")
    def _milestones_inside(self) -> SearchRecipe:
        check_milestones(self.milestones, self.epochs if isinstance(self.epochs, int) else None)
        return self


class SearchBlockKD(_Strict):
    """Block-KD parameters in a spec: any value fixed or searched."""

    partition: str | Choice = Field("stage", description=(
        "Name of a candidate partition defined under partitions. Fixed or searched (a choice of names)."))
    order: Literal["shallow_first", "deep_first"] | Choice = Field(
        "shallow_first", description=f"{ORDER_DOC} Fixed or searched.")
    connector: Literal["conv1x1", "conv3x3", "identity"] | Choice = Field(
        "conv1x1", description=f"{CONNECTOR_DOC} Fixed or searched.")
    stones: Literal["all"] | list[int] | Choice = Field("all", description=(
        "The active stepping-stones: all, or a list of 1-based indices. Fixed or searched (a choice of "
        "all, lists and \"1,2\"-style strings)."))
    tau: SearchFloat = Field(4.0, description=_doc(LossConfig, "tau"))
    alpha: SearchFloat = Field(1.0, description=(
        f"{_doc(LossConfig, 'alpha', searched=False)} Method kd defaults to the published 0.1. Fixed or searched."))
    beta: SearchFloat = Field(1.0, description=(
        f"{_doc(LossConfig, 'beta', searched=False)} Method kd defaults to the published 0.9. Fixed or searched."))
    gamma: SearchFloat = Field(0.0, description=_doc(LossConfig, "gamma"))
    decay: SearchFloat = Field(0.5, description=_doc(LossConfig, "decay"))
    logit_loss: Literal["kl", "dkd"] | Choice = Field("kl", description=_doc(LossConfig, "logit_loss"))
    dkd_alpha: SearchFloat = Field(1.0, description=_doc(LossConfig, "dkd_alpha"))
    dkd_beta: SearchFloat = Field(8.0, description=_doc(LossConfig, "dkd_beta"))
    dkd_warmup: SearchInt = Field(0, description=_DKD_WARMUP_DOC)

    @field_validator("dkd_warmup")
    @classmethod
    def _warmup_epochs(cls, v: int | IntRange | Choice) -> int | IntRange | Choice:
        """Return ``v`` when every value it may take is a whole number of epochs >= 0.

        Raises:
            ValueError: a negative value (or range start), or a choice that is not an integer.
        """
        values = v.choice if isinstance(v, Choice) else [v.int_range[0] if isinstance(v, IntRange) else v]
        bad = [x for x in values if isinstance(x, bool) or not isinstance(x, int) or x < 0]
        if bad:
            raise ValueError(f"dkd_warmup is a number of epochs >= 0, got {bad[0]!r}")
        return v

    @field_validator("tau", "alpha", "beta", "gamma", "decay", "logit_loss", "dkd_alpha", "dkd_beta", "dkd_warmup",
                     "order", "connector")
    @classmethod
    def _valid_values(cls, v: Any, info: ValidationInfo) -> Any:
        """Return ``v`` when every value it may take is valid for the run's loss or Block-KD
        settings (tau > 0, weights >= 0, decay in (0, 1], all finite; known orders and connectors).

        Raises:
            ValueError: naming the first value (a fixed value, a range end or a choice) that is not.
        """
        assert info.field_name is not None
        model = BlockKDConfig if info.field_name in ("order", "connector") else LossConfig
        return check_values(v, model, info.field_name)


class ExplicitPartition(_Strict):
    """``{teacher: [cut, ...], student: [cut, ...]}``: explicit cut atoms."""

    teacher: list[str] = Field(description="The teacher's cut atoms, in order (`bkdsearch validate` prints them).")
    student: list[str] = Field(description="The student's cut atoms, in order: as many as the teacher's.")

    @model_validator(mode="after")
    def _same_length(self) -> ExplicitPartition:
        if len(self.teacher) != len(self.student):
            raise ValueError(
                f"teacher has {len(self.teacher)} cuts and student {len(self.student)}: "
                "both sides need the same number"
            )
        return self


class GeneratedPartition(_Strict):
    """A generator: ``stage_aligned``, ``{per_stage: k}`` or ``{uniform: n}``."""

    per_stage: int | None = Field(None, ge=1, le=8, description=(
        "Cut each stage of the stage-aligned partition into this many near-equal runs of atoms, 1..8."))
    uniform: int | None = Field(None, ge=2, le=16, description=(
        "Cut both networks into this many blocks at the same fractions of their atoms, 2..16."))

    @model_validator(mode="after")
    def _one(self) -> GeneratedPartition:
        if (self.per_stage is None) == (self.uniform is None):
            raise ValueError("give exactly one of per_stage or uniform")
        return self


PartitionSpec = Literal["stage_aligned"] | ExplicitPartition | GeneratedPartition


class TeacherSpec(_Strict):
    """The frozen teacher: architecture, checkpoint, and the recipe used when training it."""

    arch: str = Field(description=ARCH_DOC, json_schema_extra={"enum": list(ARCH_NAMES)})
    checkpoint: str | None = Field(None, description=CHECKPOINT_DOC)
    recipe: Recipe | None = Field(None, description=(
        "Recipe of the teacher's CE training when it has no checkpoint (null: 30 epochs, lr 0.05, cosine)."))


class Fidelity(_Strict):
    """A cheaper recipe for the search: fewer epochs (milestones, lr warm-up and DKD warm-up
    scaled to them) and/or a share of the training split; ``confirm`` runs the full recipe."""

    epochs: int | None = Field(None, ge=1, description="Epochs of a search trial (None: the recipe's).")
    train_fraction: float = Field(1.0, gt=0.0, le=1.0,
                                  description="Share of the training split a search trial trains on.")


Enqueued = bool | int | float | str
"""A value of an enqueued parameter: what Optuna stores (a list choice as its ``"1,2"`` string)."""


class SearchSettings(_Strict):
    """Optuna study settings."""

    n_trials: int = Field(20, ge=1, description="Cap on the study's finished trials, all workers together.")
    timeout: float | None = Field(None, gt=0, description=(
        "Seconds after which workers start no new trial (null: no limit; `run --timeout` overrides)."))
    sampler: Literal["tpe", "random", "gp", "nsga2"] = Field("tpe", description=(
        "Optuna sampler: tpe (multivariate), random, gp (Gaussian process) or nsga2."))
    pruner: Literal["median", "hyperband", "none"] = Field("median", description=(
        "Optuna pruner stopping poor trials early on validation accuracy, or none."))
    objectives: list[Literal["val_acc", "train_gflops", "student_mflops"]] = Field(["val_acc"], description=(
        "What the study optimises: val_acc (maximised) first, then optionally one FLOP count (minimised)."))
    max_train_gflops: float | None = Field(None, gt=0, description=(
        "Constraint on a training step's GFLOPs: trials above it count as infeasible (null: none)."))
    enqueue: list[dict[str, Enqueued]] = Field([], description=(
        "Configurations tried first (a published one, say): each maps parameter names (train.lr, "
        "blockkd.tau...) to a value; a list choice is given as its \"1,2\"-style string."))
    baseline: dict[str, Enqueued] | None = Field(None, description=(
        "The configuration `confirm` measures the winner against, always confirmed with the same seeds "
        "(null: the first enqueued one, else every searched parameter at its default); names as in enqueue."))
    fidelity: Fidelity | None = Field(None, description="A cheaper recipe for search trials (null: the full one).")
    pruner_warmup_fraction: float | None = Field(None, gt=0, lt=1, description=(
        "Share of a cosine or constant run before the pruner may act (default 0.5); a multistep "
        "run is never pruned before its first lr milestone."))
    confirm_top: int = Field(3, ge=1, le=50, description="Configurations `confirm` re-trains (by validation).")
    confirm_seeds: int = Field(3, ge=1, le=20, description="Fresh seeds per confirmed configuration.")

    @field_validator("enqueue", "baseline")
    @classmethod
    def _finite_enqueued(cls, v: Any) -> Any:
        """Return ``v`` when no enqueued (or baseline) parameter is nan or inf.

        Raises:
            ValueError: naming the non-finite value.
        """
        bad = _non_finite(v)
        if bad is not None:
            raise ValueError(f"enqueued parameters must be finite, got {bad!r}")
        return v

    @field_validator("objectives")
    @classmethod
    def _val_acc_first(cls, v: list[str]) -> list[str]:
        if not v or v[0] != "val_acc" or len(set(v)) != len(v) or len(v) > 2:
            raise ValueError("objectives start with val_acc, optionally one FLOP objective")
        return v


class Spec(_Strict):
    """A whole spec file. Unknown keys are errors."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description=(
        "Name of the study (letters, digits, _ . -): its storage, run folders and reports are named after it."))
    seed: int = Field(0, ge=0, lt=SEED_LIMIT, description=(
        f"{SEED_DOC} Also seeds the study's sampler."))
    data: DataConfig = Field(description="Dataset, split and batches.")
    teacher: TeacherSpec | None = Field(None, description="The frozen teacher (needed by every method but ce).")
    student: ModelConfig = Field(description="The student network.")
    method: Literal["ce", "kd", "dkd", "blockkd"] | Choice = Field("blockkd", description=(
        f"{METHOD_DOC} Fixed or searched."))
    train: SearchRecipe = Field(description="The student's optimiser and schedule; any value fixed or searched.")
    blockkd: SearchBlockKD = Field(SearchBlockKD(), description=(
        "Block-KD's stepping-stones and the loss weights of kd, dkd and blockkd; any value fixed or searched."))
    partitions: dict[str, PartitionSpec] = Field({"stage": "stage_aligned"}, description=(
        "Candidate partitions by name, for blockkd.partition: stage_aligned (cut where both networks "
        "change resolution), explicit cut atoms, {per_stage: k} or {uniform: n}."))
    search: SearchSettings = Field(SearchSettings(), description="The Optuna study's settings.")
    storage: str | None = Field(None, description=(
        "Optuna storage URL (sqlite:///..., postgresql://..., mysql://...; null: sqlite:///studies/<name>.db)."))
    runtime: RuntimeConfig = Field(RuntimeConfig(), description=(
        "How runs execute (device, precision, CUDA graphs); never what they compute."))

    @field_validator("method")
    @classmethod
    def _known_methods(cls, v: Any) -> Any:
        """Return ``v`` when every method it may take is known.

        Raises:
            ValueError: naming the first unknown one.
        """
        return check_values(v, RunConfig, "method")

    @field_validator("partitions")
    @classmethod
    def _nonempty(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not v:
            raise ValueError("at least one candidate partition is needed")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> Spec:
        methods = self.method.choice if isinstance(self.method, Choice) else [self.method]
        if any(m != "ce" for m in methods) and self.teacher is None:
            raise ValueError(f"method {'/'.join(methods)} needs a teacher")
        names = (
            self.blockkd.partition.choice
            if isinstance(self.blockkd.partition, Choice)
            else [self.blockkd.partition]
        )
        unknown = [n for n in names if n not in self.partitions]
        if unknown:
            raise ValueError(
                f"blockkd.partition names {unknown} not defined under partitions "
                f"(defined: {sorted(self.partitions)})"
            )
        return self

    def default_storage(self) -> str:
        """Return the storage URL: the spec's, else ``sqlite:///studies/<name>.db``."""
        return self.storage or f"sqlite:///studies/{self.name}.db"


def spec_json_schema() -> dict[str, Any]:
    """Return the JSON Schema (draft 2020-12) of a spec file, as ``bkdsearch schema`` prints it:
    ``$schema`` and ``$id`` first, then pydantic's schema of :class:`Spec` (keys by alias, every
    property described, ``arch`` fields listing the zoo's architectures)."""
    return {"$schema": SCHEMA_DIALECT, "$id": SCHEMA_ID, **Spec.model_json_schema(by_alias=True)}
