"""The study of a spec: open or resume it (sampler, pruner, objectives), ask an Optuna trial
for each searched value, and look trials up."""

from __future__ import annotations

import json
import os
import shlex
import socket
import time
import warnings
import zlib
from typing import Any

import optuna
from optuna.exceptions import DuplicatedStudyError, ExperimentalWarning
from optuna.trial import TrialState

from ..errors import ConfigMismatch, NotFound, SpecError, StorageError
from ..spec import Choice, Distribution, FloatRange, IntRange, RunConfig, Spec
from ..spec.fixed import config_differences, config_digest, fixed_configuration, set_arguments
from ..urls import redact
from .confirm import confirmed_winner
from .storage import clean, make_storage, url_secrets

# Heartbeats, stale-trial retry and grouped TPE are "experimental" in Optuna's terms, stable in
# practice; the warnings would repeat on every run.
warnings.filterwarnings("ignore", category=ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
optuna.logging.set_verbosity(optuna.logging.WARNING)


OBJECTIVE_NAMES = {"val_acc": "val_acc", "train_gflops": "train_gflops", "student_mflops": "student_mflops"}


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def make_sampler(spec: Spec, seed: int) -> optuna.samplers.BaseSampler:
    """Return the spec's sampler seeded with ``seed`` (TPE multivariate by default). Under
    ``search.max_train_gflops`` each trial sets its constraint (``Trial.set_constraint``), which
    the samplers read from the trial."""
    kind = spec.search.sampler
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(multivariate=True, group=True, seed=seed,
                                      n_startup_trials=min(10, max(2, spec.search.n_trials // 3)))


COSINE_WARMUP_FRACTION = 0.5
"""Share of a cosine (or constant) run before the pruner may act, unless the spec says."""


def _fixed(value: Any) -> Any:
    return value.fallback() if isinstance(value, FloatRange | IntRange | Choice) else value


def first_prunable_step(spec: Spec) -> int:
    """Return the last epoch at which the pruner must not act yet: the first lr milestone of a
    multistep schedule (accuracy before the first decay is biased against high learning rates
    and strong weight decay, exactly what a search explores), else the warm-up share of the
    run (``search.pruner_warmup_fraction`` when the spec has it)."""
    recipe = spec.train
    epochs = search_epochs(spec)
    if _fixed(recipe.schedule) == "multistep":
        from ..core.recipe.optim import scale_milestones  # here: reading a study needs no torch

        full = int(_fixed(recipe.epochs))
        given = recipe.milestones and (scale_milestones(recipe.milestones, full, epochs) if full != epochs
                                       else recipe.milestones)
        milestones = given or [round(epochs * f) for f in (0.625, 0.75, 0.875)]
        return max(1, min(milestones))
    fraction = getattr(spec.search, "pruner_warmup_fraction", None)
    fraction = COSINE_WARMUP_FRACTION if fraction is None else fraction
    return max(int(_fixed(recipe.warmup_epochs)), round(fraction * epochs))


def search_epochs(spec: Spec) -> int:
    """Return the epochs of a search trial: the fidelity's when the spec searches cheaper,
    else the recipe's (its default when searched)."""
    fidelity = spec.search.fidelity
    return fidelity.epochs if fidelity is not None and fidelity.epochs else int(_fixed(spec.train.epochs))


def make_pruner(spec: Spec) -> optuna.pruners.BasePruner:
    """Return the spec's pruner; it never prunes at or before :func:`first_prunable_step`."""
    warmup = first_prunable_step(spec)
    if spec.search.pruner == "hyperband":
        epochs = search_epochs(spec)
        return optuna.pruners.HyperbandPruner(min_resource=max(1, min(warmup + 1, epochs)), max_resource=epochs)
    if spec.search.pruner == "none":
        return optuna.pruners.NopPruner()
    # Optuna may prune at step == n_warmup_steps: the first step it may act on is warmup + 1.
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=warmup + 1)


def worker_seed(spec_seed: int) -> int:
    """Return this process's sampler seed when it joins an existing study: derived from the
    spec's seed, the host and the pid, so workers sharing a study do not draw the same values."""
    mixed = f"{spec_seed}/{socket.gethostname()}/{os.getpid()}".encode()
    return zlib.crc32(mixed) & 0xFFFFFFFF


def open_study(spec: Spec, storage_url: str, study_name: str | None = None, *,
               allow_different_spec: bool = False) -> optuna.Study:
    """Create the study of ``spec`` in ``storage_url`` or load it when it exists (resume).

    The process that creates the study records the spec, its fixed configuration
    (:func:`bkdsearch.spec.fixed.fixed_configuration`, user attrs ``fixed_config`` and
    ``fixed_config_digest``) and enqueues the spec's ``search.enqueue`` configurations
    (e.g. the published one), once; workers that start at the same moment load it. A worker
    whose fixed configuration differs is refused, unless ``allow_different_spec``: then its
    digest joins the study's ``mixed_configs`` (and each trial records its own
    ``config_digest``), which ``status`` and ``report`` show.

    Raises:
        StorageError: the storage cannot be opened, or the study exists with other objectives.
        ConfigMismatch: the study was made with another fixed configuration (nothing is
            written to it).
    """
    storage = make_storage(storage_url)
    secrets = url_secrets(storage_url)
    name = study_name or spec.name
    directions = ["maximize"] + ["minimize"] * (len(spec.search.objectives) - 1)
    created = False
    try:
        try:
            # The creating process samples with the spec's seed: a study re-made from the same spec
            # asks the same first parameters.
            study = optuna.create_study(storage=storage, study_name=name, directions=directions,
                                        sampler=make_sampler(spec, spec.seed), pruner=make_pruner(spec))
            created = True
        except DuplicatedStudyError:
            study = optuna.load_study(storage=storage, study_name=name, sampler=make_sampler(
                spec, worker_seed(spec.seed)), pruner=make_pruner(spec))
    except Exception as exc:  # noqa: BLE001 - database errors of any driver
        from ..core.engine.weights import first_line

        raise StorageError(f"cannot create study {name!r} in {clean(storage_url, secrets)}: "
                           f"{clean(first_line(exc), secrets)}") from None
    if study.directions != [optuna.study.StudyDirection.MAXIMIZE if d == "maximize"
                            else optuna.study.StudyDirection.MINIMIZE for d in directions]:
        raise StorageError(f"study {name!r} exists with other objectives; use another --study name")
    _bind_configuration(study, spec, created=created, allow_different=allow_different_spec)
    if created or "spec" not in study.user_attrs:
        study.set_metric_names([OBJECTIVE_NAMES[o] for o in spec.search.objectives])
        study.set_user_attr("spec", _redacted_spec(spec))
    if created:
        for params in spec.search.enqueue:
            study.enqueue_trial(params, skip_if_exists=True)
    return study


CREATOR_WAIT_S = 5.0
"""How long a worker joining a study without trials waits for its creator (which may have
just made it) to record the fixed configuration."""


def _recorded_configuration(study: optuna.Study, created: bool) -> dict[str, Any] | None:
    """The fixed configuration the study records; None when it records none (a study made
    before configurations were recorded, or one just made by this process)."""
    if created:
        return None
    deadline = time.monotonic() + CREATOR_WAIT_S
    while True:
        attrs = study.user_attrs
        if "fixed_config" in attrs:
            return dict(attrs["fixed_config"])
        if time.monotonic() > deadline or study.get_trials(deepcopy=False):
            return None
        time.sleep(0.2)


def _bind_configuration(study: optuna.Study, spec: Spec, *, created: bool, allow_different: bool) -> None:
    """Record ``spec``'s fixed configuration in ``study`` when it records none yet; else
    check that it is the same (see :func:`open_study`).

    Raises:
        ConfigMismatch: it differs and ``allow_different`` is false.
    """
    mine = fixed_configuration(spec)
    digest = config_digest(mine)
    recorded = _recorded_configuration(study, created)
    if recorded is None:
        study.set_user_attr("fixed_config", mine)
        study.set_user_attr("fixed_config_digest", digest)
        return
    recorded_digest = study.user_attrs.get("fixed_config_digest") or config_digest(recorded)
    if recorded_digest == digest:
        return
    differences = config_differences(recorded, mine)
    if not allow_different:
        raise ConfigMismatch(mismatch_message(study.study_name, differences))
    mixed = set(study.user_attrs.get("mixed_configs", [recorded_digest]))
    if digest not in mixed:
        study.set_user_attr("mixed_configs", sorted({*mixed, digest}))


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def mismatch_message(study_name: str, differences: list[tuple[str, Any, Any]]) -> str:
    """Return the refusal of a worker whose fixed configuration differs from its study's:
    each differing key with both values, and the ways out."""
    lines = [f"study {study_name!r} was made with another configuration; "
             f"{len(differences)} key(s) differ (study's value -> this worker's):"]
    lines += [f"  {name}: {_shown(old)} -> {_shown(new)}" for name, old, new in differences]
    sets = set_arguments(differences)
    if sets:
        lines.append("to join it, give its values: " + " ".join(f"--set {shlex.quote(s)}" for s in sets))
    lines.append("or use another --study; --allow-different-spec joins anyway (status and report then "
                 "flag the study as mixed)")
    return "\n".join(lines)


def _redacted_spec(spec: Spec) -> dict[str, Any]:
    data = spec.model_dump(mode="json", by_alias=True)
    if data.get("storage"):
        data["storage"] = clean(data["storage"], url_secrets(data["storage"]))
    return data


class TrialSuggest:
    """A :class:`bkdsearch.spec.Suggest` asking an Optuna trial (define-by-run)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def __call__(self, name: str, dist: Distribution) -> Any:
        if isinstance(dist, FloatRange):
            low, high = dist.float_range
            return self.trial.suggest_float(name, low, high, log=dist.log)
        if isinstance(dist, IntRange):
            low, high = dist.int_range
            return self.trial.suggest_int(name, low, high, step=dist.step, log=dist.log)
        assert isinstance(dist, Choice)
        encoded = [_encode(c) for c in dist.choice]
        picked = self.trial.suggest_categorical(name, encoded)
        if picked not in encoded:  # a fixed (enqueued or retried) value outside the choices
            raise SpecError([(name, f"value {picked!r} is not one of {encoded}", None)])
        return dist.choice[encoded.index(picked)]


def _encode(value: Any) -> Any:
    """Optuna categorical choices must be scalars: lists become ``"1,2"`` style strings."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value


def trial_config(study: optuna.Study, number: int | str) -> tuple[optuna.trial.FrozenTrial, RunConfig]:
    """Return (trial, its RunConfig) for ``number`` or ``"best"``: the confirmed winner's best
    run when the study has confirmations (:func:`bkdsearch.search.confirm.confirmed_winner`),
    else the highest val acc among complete trials (for multi-objective, the Pareto trial
    with the highest val acc).

    Raises:
        NotFound: no such trial, or no complete trial for ``best``.
    """
    if number == "best":
        winner = confirmed_winner(study)
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        if not complete:
            raise NotFound(f"study {study.study_name!r} has no complete trial yet")
        pool = study.best_trials if len(study.directions) > 1 else complete
        trial = winner.run if winner is not None else max(pool, key=lambda t: t.values[0])
    else:
        trials = study.get_trials(deepcopy=False)
        matches = [t for t in trials if t.number == int(number)]
        if not matches:
            raise NotFound(f"study {study.study_name!r} has no trial {number}")
        trial = matches[0]
    if "run_config" not in trial.user_attrs:
        raise NotFound(f"trial {trial.number} has no recorded RunConfig")
    return trial, RunConfig.model_validate(trial.user_attrs["run_config"])


def format_value(value: Any) -> str:
    """Return ``value`` as shown in logs and tables: floats with 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def load_study(storage_url: str, name: str) -> optuna.Study:
    """Return the existing study ``name``: reading never creates a database (a mistyped
    SQLite path is a StorageError, not a new empty file).

    Raises:
        StorageError: the storage cannot be opened. NotFound: no such study (the message
            lists the studies there).
    """
    storage = make_storage(storage_url, create=False)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name not in names:
        raise NotFound(f"no study {name!r} in {redact(storage_url)}; studies: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)


def was_interrupted(trial: optuna.trial.FrozenTrial) -> bool:
    """True for a trial that failed only because its worker was stopped (Ctrl-C) and was
    queued again to resume: not a failure of its configuration."""
    reason = trial.user_attrs.get("fail_reason") or ""
    return trial.state == TrialState.FAIL and reason.startswith("interrupted")
