"""Resolution: a :class:`Spec` and a :class:`Suggest` -> one :class:`RunConfig`.

:func:`resolve` asks the :class:`Suggest` for every distribution, define-by-run (an Optuna
trial in the search, defaults and ``--set`` overrides in ``bkdsearch train``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from ..core.recipe.cuts import Cuts, build_cuts
from ..errors import PartitionError, SpecError
from .atom_table import atoms, model_input_size
from .config import (
    DEFAULT_TEACHER_RECIPE,
    SYNTHETIC_OPTIONS,
    BlockKDConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    PartitionConfig,
    Recipe,
    RunConfig,
)
from .errors import validation_error
from .limits import MAX_EPOCHS
from .schema import Distribution, PartitionSpec, SearchBlockKD, Spec, _is_dist


def scale_milestones(milestones: list[int], epochs: int, new_epochs: int) -> list[int]:
    """Return :func:`bkdsearch.core.recipe.optim.scale_milestones` of the arguments, importing it
    (and torch) only when a schedule is rescaled, so that resolving a spec needs no torch."""
    from ..core.recipe.optim import scale_milestones as scale

    return scale(milestones, epochs, new_epochs)


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


PUBLISHED_WEIGHTS = {"kd": {"alpha": 0.1, "beta": 0.9}}
"""CE (alpha) and KD (beta) weights of the published baselines (Hinton KD as mdistiller and
RepDistiller run it on CIFAR), used when a spec leaves ``blockkd.alpha``/``beta`` unset."""

DKD_WARMUP = (20, 240)
"""DKD's published warm-up: 20 of 240 epochs; method ``dkd`` without ``blockkd.dkd_warmup``
ramps in over the same share of its own epochs."""


def _published(section: SearchBlockKD, method: str, name: str) -> Any:
    """The spec's value of ``name``, or the published baseline's when the spec left it unset."""
    if name not in section.model_fields_set and name in PUBLISHED_WEIGHTS.get(method, {}):
        return PUBLISHED_WEIGHTS[method][name]
    return getattr(section, name)


def _pick(suggest: Suggest, name: str, value: Any, fixed_overrides: Mapping[str, Any]) -> Any:
    if _is_dist(value):
        return suggest(name, value)
    if name in fixed_overrides:
        return fixed_overrides[name]
    return value


def resolve(spec: Spec, suggest: Suggest, *, overrides: Mapping[str, Any] | None = None,
            fidelity: bool = False) -> RunConfig:
    """Return the RunConfig of one run, asking ``suggest`` for each searched value.

    ``overrides`` (``--set``) may also replace fixed values. Partitions are resolved to
    concrete cut atoms. ``fidelity``: the search's cheaper recipe (``search.fidelity``, see
    :func:`at_fidelity`) when the spec has one.

    Raises:
        SpecError: an override names no parameter, or a value is invalid.
        PartitionError: a generated partition cannot be built.
    """
    try:
        spec_part = {k: v for k, v in (overrides or {}).items() if k in SPEC_KEYS}
        if spec_part:
            spec = override_spec(spec, spec_part)
        rest = {k: v for k, v in (overrides or {}).items() if k not in SPEC_KEYS}
        cfg = _resolve(spec, suggest, rest)
        if fidelity and spec.search.fidelity is not None:
            cfg = at_fidelity(cfg, spec.search.fidelity.epochs, spec.search.fidelity.train_fraction)
        return cfg
    except (SpecError, PartitionError):
        raise
    except (TypeError, ValueError, KeyError) as exc:
        detail = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc).splitlines()[0]
        given = ", ".join(f"{k}={v!r}" for k, v in (overrides or {}).items())
        raise SpecError([(given, f"invalid value: {detail}", None)]) from None


def _resolve(spec: Spec, suggest: Suggest, overrides: Mapping[str, Any] | None) -> RunConfig:
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
        loss["alpha"] = pick("blockkd.alpha", _published(b, method, "alpha"))
        loss["beta"] = pick("blockkd.beta", _published(b, method, "beta"))
    logit_loss = "dkd" if method == "dkd" else "kl"
    if method == "blockkd":
        loss["gamma"] = pick("blockkd.gamma", b.gamma)
        loss["decay"] = pick("blockkd.decay", b.decay)
        logit_loss = pick("blockkd.logit_loss", b.logit_loss)
    loss["logit_loss"] = logit_loss
    if logit_loss == "dkd":
        loss["dkd_alpha"] = pick("blockkd.dkd_alpha", b.dkd_alpha)
        loss["dkd_beta"] = pick("blockkd.dkd_beta", b.dkd_beta)
        warmup = b.dkd_warmup
        if method == "dkd" and "dkd_warmup" not in b.model_fields_set:
            warmup = round(DKD_WARMUP[0] * recipe["epochs"] / DKD_WARMUP[1])
        loss["dkd_warmup"] = pick("blockkd.dkd_warmup", warmup)
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
            teacher_seed=spec.seed,
            method=method,
            data=spec.data,
            teacher=teacher,
            teacher_recipe=spec.teacher.recipe if spec.teacher else None,
            student=spec.student,
            train=Recipe(milestones=_milestones(r.milestones, r.epochs, recipe["epochs"], fixed),
                         lr_decay=r.lr_decay, **recipe),
            loss=LossConfig(**loss),
            blockkd=blockkd,
            runtime=spec.runtime,
        )
    except ValidationError as exc:
        raise validation_error(exc) from None


def _milestones(milestones: list[int] | None, spec_epochs: Any, epochs: int,
                fixed: Mapping[str, Any]) -> list[int] | None:
    """The run's milestones: ``--set train.milestones`` when given; the spec's scaled to the
    run's epochs when ``--set train.epochs`` changed a fixed epoch count (150/180/210 of 240
    -> 62/75/88 of 100); else the spec's."""
    if "train.milestones" in fixed:
        return fixed["train.milestones"]
    if milestones and "train.epochs" in fixed and isinstance(spec_epochs, int) and epochs != spec_epochs:
        return scale_milestones(milestones, spec_epochs, epochs)
    return milestones


def at_fidelity(cfg: RunConfig, epochs: int | None, train_fraction: float = 1.0) -> RunConfig:
    """Return ``cfg`` at a lower fidelity: ``epochs`` long (explicit lr milestones, lr warm-up
    and DKD warm-up at the same fractions of the run) and trained on ``train_fraction`` of
    what the full run trains on (``data.train_fraction`` x ``train_fraction`` of the split:
    a search trial never trains on more data than its confirmation).

    Raises:
        SpecError: the scaled schedule is invalid (a warm-up as long as the run, say).
    """
    train, loss, data = cfg.train, cfg.loss, cfg.data
    if epochs is not None and epochs != train.epochs:
        full = train.epochs
        milestones = scale_milestones(train.milestones, full, epochs) if train.milestones else None
        if milestones is not None:
            milestones = sorted({min(m, epochs - 1) for m in milestones if epochs > 1}) or None
        train = train.model_copy(update={"epochs": epochs, "milestones": milestones,
                                         "warmup_epochs": round(train.warmup_epochs * epochs / full)})
        loss = loss.model_copy(update={"dkd_warmup": round(loss.dkd_warmup * epochs / full)})
    data = data.model_copy(update={"train_fraction": data.train_fraction * train_fraction})
    try:
        return RunConfig.model_validate({**cfg.model_dump(), "train": train.model_dump(),
                                         "loss": loss.model_dump(), "data": data.model_dump()})
    except ValidationError as exc:
        raise validation_error(exc) from None


SPEC_KEYS = (
    *(f"data.{k}" for k in DataConfig.model_fields if k != "synthetic"),
    *(f"data.synthetic.{k}" for k in SYNTHETIC_OPTIONS),
    "teacher.arch", "teacher.checkpoint", *(f"teacher.recipe.{k}" for k in Recipe.model_fields),
    "student.arch", "student.checkpoint",
)
"""The ``--set`` names that change the spec itself before resolution (never searched)."""

_TRAIN_KEYS = ("epochs", "optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule",
               "warmup_epochs", "milestones")


def parameter_names(spec: Spec) -> list[str]:
    """Return every name ``--set`` accepts (searched or fixed), e.g. ``train.lr``, ``data.root``,
    ``teacher.recipe.epochs``."""
    names = ["seed", "method"]
    names += [f"train.{k}" for k in _TRAIN_KEYS]
    names += [f"blockkd.{k}" for k in SearchBlockKD.model_fields]
    names += list(SPEC_KEYS)
    return names


def _as_fields(value: Any) -> dict[str, Any]:
    """The fields ``value`` (a section of a spec, a mapping or None) was given, as they are
    (a distribution stays a distribution): what validating the spec again needs."""
    if isinstance(value, BaseModel):
        return {k: getattr(value, k) for k in value.model_fields_set}
    return dict(value) if isinstance(value, dict) else {}


def _scaled_train(spec: Spec, train: dict[str, Any]) -> None:
    """Add to the ``--set`` values of ``train`` the spec's milestones scaled to a new fixed
    ``epochs`` (when it gives epochs and no milestones)."""
    if ("epochs" in train and "milestones" not in train and spec.train.milestones
            and isinstance(spec.train.epochs, int) and isinstance(train["epochs"], int)
            and not isinstance(train["epochs"], bool) and 0 < train["epochs"] <= MAX_EPOCHS
            and train["epochs"] != spec.train.epochs):
        train["milestones"] = scale_milestones(spec.train.milestones, spec.train.epochs, train["epochs"])


def override_spec(spec: Spec, overrides: Mapping[str, Any]) -> Spec:
    """Return ``spec`` with ``overrides`` (``--set`` names, see :func:`parameter_names`) as
    fixed values, validated by the schema as the spec file would be (the semantic checks:
    :func:`bkdsearch.spec.loading.with_overrides`). The other fields keep whether the spec
    set them (published defaults still apply to what it left unset). A fixed ``train.epochs``
    without ``train.milestones`` scales the spec's milestones to it; a ``teacher.recipe.*``
    value of a spec without a teacher recipe starts from the default recipe.

    Raises:
        SpecError: an unknown name (listing the known ones), or an invalid value (naming it).
    """
    known = parameter_names(spec)
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise SpecError([(k, f"unknown parameter; known: {', '.join(sorted(known))}", None) for k in unknown])
    train = {name.removeprefix("train."): v for name, v in overrides.items() if name.startswith("train.")}
    _scaled_train(spec, train)
    given = {**{k: v for k, v in overrides.items() if not k.startswith("train.")},
             **{f"train.{k}": v for k, v in train.items()}}
    data: dict[str, Any] = {field: getattr(spec, field) for field in spec.model_fields_set}
    for name, value in given.items():
        *parents, last = name.split(".")
        node, source = data, spec
        for part in parents:
            source = getattr(source, part, None) if not isinstance(source, dict) else source.get(part)
            if source is None and parents == ["teacher", "recipe"] and part == "recipe":
                source = DEFAULT_TEACHER_RECIPE.model_dump()
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else _as_fields(source)  # never the spec's own
            node = node[part]
        node[last] = value
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, data=data) from None


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


def candidate_partition(teacher: str, student: str, candidate: PartitionSpec,
                        input_size: tuple[int, int, int]) -> Cuts:
    """Return the concrete cut atoms of a spec's ``candidate`` (explicit or a generator) for
    the pair of architectures at ``input_size`` (their atoms from the stored table, else
    measured on the models).

    Raises:
        PartitionError: the generator cannot produce it for this pair.
    """
    form = candidate if isinstance(candidate, str) else candidate.model_dump(exclude_none=True)
    try:
        return build_cuts(atoms(teacher, input_size), atoms(student, input_size), form)
    except PartitionError as exc:
        raise PartitionError(f"{teacher} -> {student}: {exc}") from None


def resolve_partition(spec: Spec, name: str) -> PartitionConfig:
    """Return the cut atoms of the spec's candidate partition ``name``.

    Raises:
        KeyError: no such candidate. PartitionError: it cannot be built.
    """
    assert spec.teacher is not None
    part = candidate_partition(spec.teacher.arch, spec.student.arch, spec.partitions[name],
                               model_input_size(spec.data))
    return PartitionConfig(name=name, teacher=list(part.teacher), student=list(part.student))
