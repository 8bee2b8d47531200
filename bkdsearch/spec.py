"""The spec format (Pydantic v2), search-space values and the resolved :class:`RunConfig`.

A spec is YAML. Any searchable value is either fixed or a distribution::

    lr: 0.05                                  # fixed
    lr: {float: [0.01, 0.2], log: true}       # float range
    epochs: {int: [10, 40], step: 10}         # int range
    order: {choice: [shallow_first, deep_first]}

:func:`resolve` turns a :class:`Spec` into one :class:`RunConfig` by asking a
:class:`Suggest` for every distribution, define-by-run (an Optuna trial in the search,
defaults and ``--set`` overrides in ``bkdsearch train``). Nothing downstream of RunConfig
knows about distributions or Optuna.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

METHODS = ("ce", "kd", "dkd", "blockkd")
DATASETS = ("cifar10", "cifar100", "fashion_mnist", "imagefolder", "synthetic")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- distributions


def _check_range(low: float, high: float, log: bool, default: float | None) -> None:
    if not low < high:
        raise ValueError(f"range must have low < high, got [{low}, {high}]")
    if log and low <= 0:
        raise ValueError("a log range needs low > 0")
    if default is not None and not low <= default <= high:
        raise ValueError(f"default {default} is outside [{low}, {high}]")


class FloatRange(_Strict):
    """``{float: [low, high], log: false, default: ...}``: a float searched in [low, high]."""

    float_range: tuple[float, float] = Field(alias="float")
    log: bool = False
    default: float | None = None

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

    int_range: tuple[int, int] = Field(alias="int")
    step: int = Field(1, ge=1)
    log: bool = False
    default: int | None = None

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        _check_range(*self.int_range, self.log, self.default)
        return self

    def fallback(self) -> int:
        """Return the default, else the low end."""
        return self.int_range[0] if self.default is None else self.default


class Choice(_Strict):
    """``{choice: [a, b, ...], default: a}``: one of a list of values."""

    choice: list[Any] = Field(min_length=1)
    default: Any = None

    @model_validator(mode="after")
    def _check(self) -> Choice:
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


# --------------------------------------------------------------------------- resolved config


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


class ModelConfig(_Strict):
    """A network: zoo architecture and optional checkpoint (a path, loaded weights-only)."""

    arch: str
    checkpoint: str | None = None


class RunConfig(_Strict):
    """One fully resolved training run: what ``train``, the search and ``export`` share."""

    name: str
    seed: int = 0
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


# --------------------------------------------------------------------------- spec


class SearchRecipe(_Strict):
    """The student's recipe in a spec: any value fixed or searched."""

    epochs: SearchInt
    optimizer: Literal["sgd", "adamw"] | Choice = "sgd"
    lr: SearchFloat = 0.05
    momentum: SearchFloat = 0.9
    nesterov: SearchBool = False
    weight_decay: SearchFloat = 5e-4
    schedule: Literal["multistep", "cosine", "constant"] | Choice = "multistep"
    milestones: list[int] | None = None
    lr_decay: float = Field(0.1, gt=0, le=1)
    warmup_epochs: SearchInt = 0


class SearchBlockKD(_Strict):
    """Block-KD parameters in a spec: any value fixed or searched."""

    partition: str | Choice = "stage"
    order: Literal["shallow_first", "deep_first"] | Choice = "shallow_first"
    connector: Literal["conv1x1", "conv3x3", "identity"] | Choice = "conv1x1"
    stones: Literal["all"] | list[int] | Choice = "all"
    tau: SearchFloat = 4.0
    alpha: SearchFloat = 1.0
    beta: SearchFloat = 1.0
    gamma: SearchFloat = 0.0
    decay: SearchFloat = 0.5
    logit_loss: Literal["kl", "dkd"] | Choice = "kl"
    dkd_alpha: SearchFloat = 1.0
    dkd_beta: SearchFloat = 8.0
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


class ExplicitPartition(_Strict):
    """``{teacher: [cut, ...], student: [cut, ...]}``: explicit cut atoms."""

    teacher: list[str]
    student: list[str]

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

    per_stage: int | None = Field(None, ge=1, le=8)
    uniform: int | None = Field(None, ge=2, le=16)

    @model_validator(mode="after")
    def _one(self) -> GeneratedPartition:
        if (self.per_stage is None) == (self.uniform is None):
            raise ValueError("give exactly one of per_stage or uniform")
        return self


PartitionSpec = Literal["stage_aligned"] | ExplicitPartition | GeneratedPartition


class TeacherSpec(_Strict):
    """The frozen teacher: architecture, checkpoint, and the recipe used when training it."""

    arch: str
    checkpoint: str | None = None
    recipe: Recipe | None = None


class SearchSettings(_Strict):
    """Optuna study settings."""

    n_trials: int = Field(20, ge=1)
    timeout: float | None = Field(None, gt=0)
    sampler: Literal["tpe", "random", "gp", "nsga2"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    objectives: list[Literal["val_acc", "train_gflops", "student_mflops"]] = ["val_acc"]
    max_train_gflops: float | None = Field(None, gt=0)
    enqueue: list[dict[str, Any]] = []

    @field_validator("objectives")
    @classmethod
    def _val_acc_first(cls, v: list[str]) -> list[str]:
        if not v or v[0] != "val_acc" or len(set(v)) != len(v) or len(v) > 2:
            raise ValueError("objectives start with val_acc, optionally one FLOP objective")
        return v


class Spec(_Strict):
    """A whole spec file. Unknown keys are errors."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    data: DataConfig
    teacher: TeacherSpec | None = None
    student: ModelConfig
    method: Literal["ce", "kd", "dkd", "blockkd"] | Choice = "blockkd"
    train: SearchRecipe
    blockkd: SearchBlockKD = SearchBlockKD()
    partitions: dict[str, PartitionSpec] = {"stage": "stage_aligned"}
    search: SearchSettings = SearchSettings()
    storage: str | None = None
    runtime: RuntimeConfig = RuntimeConfig()

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


# --------------------------------------------------------------------------- resolution


class Suggest(Protocol):
    """Chooses a value for each searched parameter (define-by-run)."""

    def __call__(self, name: str, dist: Distribution) -> Any:  # pragma: no cover - protocol
        ...


class Defaults:
    """A :class:`Suggest` taking each distribution's default, or an override by name.

    ``overrides`` maps parameter names (``train.lr``, ``blockkd.tau``...) to values.
    """

    def __init__(self, overrides: Mapping[str, Any] | None = None) -> None:
        self.overrides = dict(overrides or {})
        self.used: set[str] = set()

    def __call__(self, name: str, dist: Distribution) -> Any:
        if name in self.overrides:
            self.used.add(name)
            return self.overrides[name]
        return dist.fallback()


def _pick(suggest: Suggest, name: str, value: Any, fixed_overrides: Mapping[str, Any]) -> Any:
    if _is_dist(value):
        return suggest(name, value)
    if name in fixed_overrides:
        return fixed_overrides[name]
    return value


def resolve(spec: Spec, suggest: Suggest, *, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Return the RunConfig of one run, asking ``suggest`` for each searched value.

    ``overrides`` (``--set``) may also replace fixed values. Partitions are resolved to
    concrete cut atoms.

    Raises:
        SpecError: an override names no parameter, or a value is invalid.
        bkdsearch.blocks.PartitionError: a generated partition cannot be built.
    """
    from .blocks import PartitionError

    try:
        return _resolve(spec, suggest, overrides)
    except (SpecError, PartitionError):
        raise
    except (TypeError, ValueError, KeyError) as exc:
        detail = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc).splitlines()[0]
        given = ", ".join(f"{k}={v!r}" for k, v in (overrides or {}).items())
        raise SpecError([(given, f"invalid value: {detail}", None)]) from None


def _resolve(spec: Spec, suggest: Suggest, overrides: Mapping[str, Any] | None) -> RunConfig:
    from .partitions import resolve_partition

    fixed = dict(overrides or {})
    known = set(parameter_names(spec))
    unknown = sorted(set(fixed) - known)
    if unknown:
        raise SpecError([(k, f"unknown parameter; known: {', '.join(sorted(known))}", None) for k in unknown])

    def pick(name: str, value: Any) -> Any:
        return _pick(suggest, name, value, fixed)

    method = pick("method", spec.method)
    r = spec.train
    recipe = {
        key: pick(f"train.{key}", getattr(r, key))
        for key in ("epochs", "optimizer", "lr", "momentum", "nesterov", "weight_decay",
                    "schedule", "warmup_epochs")
    }
    b = spec.blockkd
    loss: dict[str, Any] = {}
    blockkd = None
    if method in ("kd", "dkd", "blockkd"):
        loss["tau"] = pick("blockkd.tau", b.tau)
        loss["alpha"] = pick("blockkd.alpha", b.alpha)
        loss["beta"] = pick("blockkd.beta", b.beta)
    logit_loss = "dkd" if method == "dkd" else "kl"
    if method == "blockkd":
        loss["gamma"] = pick("blockkd.gamma", b.gamma)
        loss["decay"] = pick("blockkd.decay", b.decay)
        logit_loss = pick("blockkd.logit_loss", b.logit_loss)
    loss["logit_loss"] = logit_loss
    if logit_loss == "dkd":
        loss["dkd_alpha"] = pick("blockkd.dkd_alpha", b.dkd_alpha)
        loss["dkd_beta"] = pick("blockkd.dkd_beta", b.dkd_beta)
        loss["dkd_warmup"] = pick("blockkd.dkd_warmup", b.dkd_warmup)
    if method == "blockkd":
        part_name = pick("blockkd.partition", b.partition)
        stones = pick("blockkd.stones", b.stones)
        if isinstance(stones, str):
            stones = None if stones == "all" else [int(s) for s in stones.split(",") if s.strip()]
        assert spec.teacher is not None
        blockkd = BlockKDConfig(
            partition=resolve_partition(spec, part_name),
            order=pick("blockkd.order", b.order),
            connector=pick("blockkd.connector", b.connector),
            stones=stones,
        )
    teacher = None
    if method != "ce" and spec.teacher is not None:
        teacher = ModelConfig(arch=spec.teacher.arch, checkpoint=spec.teacher.checkpoint)
    try:
        return RunConfig(
            name=spec.name,
            seed=int(fixed.get("seed", spec.seed)),
            method=method,
            data=spec.data,
            teacher=teacher,
            teacher_recipe=spec.teacher.recipe if spec.teacher else None,
            student=spec.student,
            train=Recipe(milestones=r.milestones, lr_decay=r.lr_decay, **recipe),
            loss=LossConfig(**loss),
            blockkd=blockkd,
            runtime=spec.runtime,
        )
    except ValidationError as exc:
        raise SpecError.from_validation(exc) from None


def parameter_names(spec: Spec) -> list[str]:
    """Return every name ``--set`` accepts (searched or fixed), e.g. ``train.lr``."""
    names = ["seed", "method"]
    names += [f"train.{k}" for k in ("epochs", "optimizer", "lr", "momentum", "nesterov",
                                     "weight_decay", "schedule", "warmup_epochs")]
    names += [f"blockkd.{k}" for k in SearchBlockKD.model_fields]
    return names


def searched(spec: Spec) -> dict[str, Distribution]:
    """Return the distributions of the spec by parameter name (what the study searches)."""
    out: dict[str, Distribution] = {}
    if _is_dist(spec.method):
        out["method"] = spec.method
    for section, prefix in ((spec.train, "train"), (spec.blockkd, "blockkd")):
        for key in type(section).model_fields:
            value = getattr(section, key)
            if _is_dist(value):
                out[f"{prefix}.{key}"] = value
    return out


# --------------------------------------------------------------------------- loading & errors


class SpecError(Exception):
    """Bad spec or parameter: a list of ``(path, message, line)``; the CLI exits with 2."""

    def __init__(self, errors: list[tuple[str, str, int | None]]) -> None:
        self.errors = errors
        super().__init__(self.format())

    def format(self, source: str | None = None) -> str:
        """Return one line per error: ``source:line: path: message``."""
        lines = []
        for path, message, line in self.errors:
            where = f"{source}:" if source else ""
            where += f"{line}:" if line else ""
            lines.append(f"{where} {path or '<spec>'}: {message}".strip())
        return "\n".join(lines)

    @classmethod
    def from_validation(cls, exc: ValidationError, lines: Mapping[str, int] | None = None,
                        data: Any = None) -> SpecError:
        """Build from a pydantic error, mapping each location to its YAML line.

        Where a value may take several forms (a number or a distribution, say), only the
        errors of the form the user evidently meant are kept (``{float: ...}`` means a
        float range); a value that fits no form gets one message listing the forms.
        """
        plain: list[tuple[tuple[Any, ...], str, str]] = []
        unions: dict[tuple[Any, ...], dict[str, list[tuple[tuple[Any, ...], str, str]]]] = {}
        for err in exc.errors():
            loc = tuple(err["loc"])
            cut = next((i for i, item in enumerate(loc) if _is_tag(item)), None)
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling)"
            if cut is None:
                plain.append((loc, msg, err["type"]))
            else:
                rest = tuple(i for i in loc[cut + 1:] if not _is_tag(i))
                unions.setdefault(loc[:cut], {}).setdefault(_member_name(loc[cut]), []).append(
                    (loc[:cut] + rest, msg, err["type"]))
        for where, members in unions.items():
            value = _value_at(data, where)
            meant = _meant_member(value, members)
            if meant is not None:
                plain += members[meant]
            else:
                forms = " | ".join(_FORM_NAMES.get(m, m) for m in members)
                plain.append((where, f"invalid value {value!r}: expected {forms}", "union"))
        errors: list[tuple[str, str, int | None]] = []
        seen = set()
        for loc, msg, _ in plain:
            path = _loc_path(loc)
            if (path, msg) not in seen:
                seen.add((path, msg))
                errors.append((path, msg, _line_of(path, lines or {})))
        return cls(errors)


_FORM_NAMES = {"FloatRange": "{float: [low, high]}", "IntRange": "{int: [low, high]}",
               "Choice": "{choice: [...]}", "ExplicitPartition": "{teacher: [...], student: [...]}",
               "GeneratedPartition": "{per_stage: k} or {uniform: n}", "float": "a number",
               "int": "an integer", "bool": "true/false", "str": "a string", "list[int]": "a list of integers"}
_MEMBER_KEYS = {"FloatRange": {"float"}, "IntRange": {"int"}, "Choice": {"choice"},
                "ExplicitPartition": {"teacher", "student"}, "GeneratedPartition": {"per_stage", "uniform"}}


def _member_name(tag: str) -> str:
    """``function-after[_check(), FloatRange]`` -> ``FloatRange``."""
    if tag.startswith("function-"):
        return tag.rsplit(", ", 1)[-1].rstrip("]")
    return tag


def _is_tag(item: Any) -> bool:
    return isinstance(item, str) and (item in _FORM_NAMES or item.startswith(("literal[", "function-")))


def _value_at(data: Any, loc: tuple[Any, ...]) -> Any:
    for key in loc:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _meant_member(value: Any, members: Mapping[str, Any]) -> str | None:
    if isinstance(value, dict):
        for member, keys in _MEMBER_KEYS.items():
            if member in members and keys & set(value):
                return member
    return None


def _loc_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif not _is_tag(item):
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _line_of(path: str, lines: Mapping[str, int]) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return None


def _node_lines(node: yaml.Node, path: str, out: dict[str, int]) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = f"{path}.{key.value}" if path else str(key.value)
            out[child] = key.start_mark.line + 1
            _node_lines(value, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            _node_lines(value, f"{path}[{i}]", out)


def parse_spec(text: str, source: str = "<spec>") -> Spec:
    """Parse YAML text into a validated :class:`Spec` (safe loader; no code runs).

    Raises:
        SpecError: malformed YAML or any invalid field (all of them, with YAML lines).
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([("", f"malformed YAML: {problem}", line)]) from None
    if not isinstance(data, dict):
        raise SpecError([("", "a spec is a YAML mapping (name:, data:, student:, ...)", 1)])
    lines: dict[str, int] = {}
    if node is not None:
        _node_lines(node, "", lines)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError.from_validation(exc, lines, data) from None
    from .partitions import check_spec

    problems = check_spec(spec)
    if problems:
        raise SpecError([(p, m, _line_of(p, lines)) for p, m in problems])
    return spec


def load_spec(path: str | Path) -> Spec:
    """Read and validate the spec file at ``path``.

    Raises:
        SpecError: unreadable file, malformed YAML or invalid fields.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        detail = getattr(exc, "strerror", None) or exc
        raise SpecError([("", f"cannot read spec {path}: {detail}", None)]) from None
    return parse_spec(text, str(path))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are YAML scalars/lists (``0.1``, ``[1,2]``, ``dkd``).

    Raises:
        SpecError: an item without ``=`` or with an unparsable value.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError([(item, "expected key=value", None)])
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise SpecError([(key, f"cannot parse value {raw!r}", None)]) from None
    return out

