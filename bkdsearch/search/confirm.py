"""Confirmation: the top configurations of a study re-trained with fresh seeds at full
fidelity, as real trials of the same study (user attrs ``confirm_of`` and ``seed``), so they
share workers, caps, retries and resume with every other trial."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..spec import Spec

CONFIRM_SEED_BASE = 1000
"""Confirmation seeds are ``spec seed + 1000 + j``: distinct from the search's own seed."""

_LIVE = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)


def confirm_seeds(spec_seed: int, count: int) -> list[int]:
    """Return the ``count`` fresh seeds of a confirmation."""
    return [spec_seed + CONFIRM_SEED_BASE + j for j in range(count)]


def is_confirmation(trial: FrozenTrial | optuna.Trial) -> bool:
    """True for a trial that re-trains another trial's configuration."""
    return trial.user_attrs.get("confirm_of") is not None


def top_searched(study: optuna.Study, top: int) -> list[FrozenTrial]:
    """Return the ``top`` complete search trials (not confirmations) by validation accuracy,
    one per distinct configuration."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if not is_confirmation(t) and t.values]
    picked: list[FrozenTrial] = []
    seen: set[tuple] = set()
    for t in sorted(done, key=lambda t: (-t.values[0], t.number)):
        key = tuple(sorted((k, repr(v)) for k, v in t.params.items()))
        if key not in seen:
            seen.add(key)
            picked.append(t)
        if len(picked) == top:
            break
    return picked


def enqueue_confirmations(study: optuna.Study, *, top: int, seeds: list[int]) -> list[tuple[int, int]]:
    """Queue a confirmation trial for each of the ``top`` configurations and each seed, unless
    one is already queued, running or finished (a failed one is queued again); return the
    ``(trial, seed)`` pairs queued now."""
    existing = {(t.user_attrs.get("confirm_of"), t.user_attrs.get("seed"))
                for t in study.get_trials(deepcopy=False, states=_LIVE) if is_confirmation(t)}
    queued = []
    for trial in top_searched(study, top):
        for seed in seeds:
            if (trial.number, seed) in existing:
                continue
            study.enqueue_trial(trial.params, user_attrs={"confirm_of": trial.number, "seed": seed})
            queued.append((trial.number, seed))
    return queued


def pending_confirmations(study: optuna.Study) -> int:
    """Return how many confirmation trials are queued or running."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
               if is_confirmation(t))


@dataclass(frozen=True)
class Winner:
    """The confirmed winner: the configuration with the best mean validation accuracy over its
    confirmation runs, and its best single run (what ``export --trial best`` writes)."""

    origin: int
    run: FrozenTrial
    mean: float
    std: float
    n: int

    def describe(self) -> str:
        """Return one line saying which configuration won and on how many seeds."""
        return (f"confirmed winner: the configuration of trial {self.origin}, val acc {self.mean:.2f} ± "
                f"{self.std:.2f}% over {self.n} seeds; its best run is trial {self.run.number}")


def confirmed_winner(study: optuna.Study) -> Winner | None:
    """Return the :class:`Winner` among configurations with complete confirmation runs, or None."""
    groups: dict[int, list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if is_confirmation(t) and t.values:
            groups.setdefault(int(t.user_attrs["confirm_of"]), []).append(t)
    if not groups:
        return None

    def mean(runs: list[FrozenTrial]) -> float:
        return statistics.fmean(t.values[0] for t in runs)

    origin, runs = max(groups.items(), key=lambda kv: (mean(kv[1]), -kv[0]))
    values = [t.values[0] for t in runs]
    return Winner(origin, max(runs, key=lambda t: t.values[0]), mean(runs),
                  statistics.stdev(values) if len(values) > 1 else 0.0, len(runs))


def run_confirmations(study: optuna.Study, spec: Spec, *, top: int | None, seeds: int | None,
                      train: Callable[[int], Any], log: Callable[[str], None]) -> Any:
    """Queue the confirmations of ``spec``'s study (``top`` configurations x ``seeds`` fresh
    seeds; defaults from ``search.confirm_top``/``confirm_seeds``), train them with
    ``train(cap)`` (the workers, capped at the study's finished trials plus those pending) and
    log the confirmed winner; return what ``train`` returned, or None when nothing was pending."""
    top = top or spec.search.confirm_top
    count = seeds or spec.search.confirm_seeds
    queued = enqueue_confirmations(study, top=top, seeds=confirm_seeds(spec.seed, count))
    pending = pending_confirmations(study)
    finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    log(f"confirm: top {top} configuration(s) x {count} fresh seed(s) at the full recipe; "
        f"{len(queued)} queued now, {pending} to train")
    report = train(finished + pending) if pending else None
    winner = confirmed_winner(study)
    if winner is not None:
        log(winner.describe())
    return report
