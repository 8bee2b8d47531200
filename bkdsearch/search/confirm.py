"""Confirmation: the top configurations of a study re-trained with fresh seeds at full
fidelity, as real trials of the same study (user attrs ``confirm_of`` and ``seed``), so they
share workers, caps, retries and resume with every other trial."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..gain import Interval, difference, gain_sentence, more_seeds_advice
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


def _key(params: dict[str, Any]) -> tuple:
    """A configuration's identity: its parameters, order-free and hashable."""
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def top_searched(study: optuna.Study, top: int) -> list[FrozenTrial]:
    """Return the ``top`` complete search trials (not confirmations) by validation accuracy,
    one per distinct configuration."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if not is_confirmation(t) and t.values]
    picked: list[FrozenTrial] = []
    seen: set[tuple] = set()
    for t in sorted(done, key=lambda t: (-t.values[0], t.number)):
        key = _key(t.params)
        if key not in seen:
            seen.add(key)
            picked.append(t)
        if len(picked) == top:
            break
    return picked


BASELINE_UNSEARCHED = -1
"""``confirm_of`` of the baseline's confirmations when no search trial ran the baseline (a
configuration at the defaults, say): they form a configuration of their own."""


@dataclass(frozen=True)
class Baseline:
    """The configuration every confirmation is measured against.

    ``origin``: the first search trial that ran it (its number), else
    :data:`BASELINE_UNSEARCHED`; ``params``: what its confirmations are queued with; ``source``:
    ``search.baseline``, ``search.enqueue[0]`` or ``defaults``."""

    origin: int
    params: dict[str, Any]
    source: str

    @property
    def name(self) -> str:
        """The words for it: the published (first enqueued), the spec's baseline or the default
        configuration."""
        return {"search.baseline": "the baseline configuration", "search.enqueue[0]": "the published configuration",
                }.get(self.source, "the default configuration")

    def as_attr(self) -> dict[str, Any]:
        """Return it as the study's ``baseline`` user attr (JSON)."""
        return {"origin": self.origin, "params": self.params, "source": self.source, "name": self.name}


def _encode(value: Any) -> Any:
    """A value as Optuna stores a categorical choice (a list as its ``"1,2"`` string)."""
    return ",".join(str(v) for v in value) if isinstance(value, list) else value


class _Recorder:
    """A :class:`bkdsearch.spec.Suggest` taking ``given`` values (as Optuna stores them), else
    each distribution's default, and recording every parameter asked (define-by-run: only
    those the configuration uses)."""

    def __init__(self, given: dict[str, Any]) -> None:
        self.given, self.asked = given, {}

    def __call__(self, name: str, dist: Any) -> Any:
        if name not in self.given:
            value = dist.fallback()
        elif hasattr(dist, "choice"):  # decode "1,2" back to the list choice it stands for
            encoded = [_encode(c) for c in dist.choice]
            value = dist.choice[encoded.index(self.given[name])] if self.given[name] in encoded else self.given[name]
        else:
            value = self.given[name]
        self.asked[name] = _encode(value)
        return value


def find_baseline(study: optuna.Study, spec: Spec) -> Baseline:
    """Return the baseline of ``spec``'s study: ``search.baseline``, else the first
    ``search.enqueue`` configuration (the published one), else every searched parameter at
    its default (:class:`bkdsearch.spec.Defaults`). Unnamed parameters take their defaults.
    Its origin is the first complete or pruned search trial whose parameters match the named
    ones (all of them for the defaults), whose full parameters it then takes.

    Raises:
        SpecError: the baseline's values are not valid for the spec.
    """
    from ..spec import SpecError, resolve, searched

    if spec.search.baseline is not None:
        given, source = dict(spec.search.baseline), "search.baseline"
        space = searched(spec)
        unknown = [k for k in given if k not in space]
        if unknown:
            raise SpecError([(f"search.baseline.{k}", f"not a searched parameter (searched: "
                              f"{', '.join(sorted(space)) or 'none'})", None) for k in unknown])
    elif spec.search.enqueue:
        given, source = dict(spec.search.enqueue[0]), "search.enqueue[0]"
    else:
        given, source = {}, "defaults"
    recorder = _Recorder(given)
    resolve(spec, recorder)
    named = given or recorder.asked
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)),
                    key=lambda t: t.number):
        if not is_confirmation(t) and all(k in t.params and t.params[k] == v for k, v in named.items()):
            return Baseline(t.number, dict(t.params), source)
    return Baseline(BASELINE_UNSEARCHED, recorder.asked, source)


def enqueue_confirmations(study: optuna.Study, *, top: int, seeds: list[int],
                          baseline: Baseline | None = None) -> list[tuple[int, int]]:
    """Queue a confirmation trial for each of the ``top`` configurations and the ``baseline``
    (recorded as the study's ``baseline`` user attr) and each seed, unless one is already
    queued, running or finished (a failed one is queued again); return the ``(origin, seed)``
    pairs queued now (origin: the configuration's search trial, or
    :data:`BASELINE_UNSEARCHED`)."""
    existing = {(t.user_attrs.get("confirm_of"), t.user_attrs.get("seed"))
                for t in study.get_trials(deepcopy=False, states=_LIVE) if is_confirmation(t)}
    configs = [(t.number, t.params) for t in top_searched(study, top)]
    if baseline is not None:
        # A top configuration with the baseline's parameters (a duplicate trial) is the baseline.
        same = [origin for origin, params in configs if _key(params) == _key(baseline.params)]
        baseline = replace(baseline, origin=same[0]) if same else baseline
        study.set_user_attr("baseline", baseline.as_attr())
        if baseline.origin not in {origin for origin, _ in configs}:
            configs.append((baseline.origin, baseline.params))
    queued = []
    for origin, params in configs:
        for seed in seeds:
            if (origin, seed) in existing:
                continue
            attrs = {"confirm_of": origin, "seed": seed}
            if baseline is not None and origin == baseline.origin:
                attrs["baseline"] = True
            study.enqueue_trial(params, user_attrs=attrs)
            queued.append((origin, seed))
    return queued


def pending_confirmations(study: optuna.Study) -> int:
    """Return how many confirmation trials are queued or running."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
               if is_confirmation(t))


def _per_epoch_s(t: FrozenTrial) -> float | None:
    """A run's wall time per epoch it trained (a resumed run trained only the epochs after its
    checkpoint)."""
    wall, cfg = t.user_attrs.get("wall_time_s"), t.user_attrs.get("run_config") or {}
    epochs = (cfg.get("train") or {}).get("epochs")
    if wall is None or not epochs:
        return None
    trained = epochs - (t.user_attrs.get("resumed_from") or {}).get("epoch", 0)
    return wall / trained if trained > 0 else None


@dataclass(frozen=True)
class Confirmed:
    """One configuration's complete confirmation runs: accuracies by seed and what a run costs.

    ``origin``: its search trial (or :data:`BASELINE_UNSEARCHED`); ``val``/``test``: accuracy
    (%) by seed; ``train_gflops``: a training step's GFLOPs per image; ``epoch_s``: mean wall
    seconds per epoch over its runs (None when not recorded)."""

    origin: int
    runs: tuple[FrozenTrial, ...]
    baseline: bool
    val: dict[int, float]
    test: dict[int, float]
    train_gflops: float | None
    epoch_s: float | None

    @property
    def n(self) -> int:
        """Number of complete runs (seeds)."""
        return len(self.val)

    @property
    def mean(self) -> float:
        """Mean validation accuracy: what the winner is chosen on."""
        return statistics.fmean(self.val.values())

    @property
    def label(self) -> str:
        """``trial N``, with ``(baseline)`` for the baseline, or ``baseline`` when no search trial ran it."""
        if self.origin == BASELINE_UNSEARCHED:
            return "baseline"
        return f"trial {self.origin}" + (" (baseline)" if self.baseline else "")


def confirmed_configurations(study: optuna.Study) -> list[Confirmed]:
    """Return every configuration with complete confirmation runs, highest mean validation
    accuracy first (test accuracy plays no part in the order)."""
    groups: dict[int, list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if is_confirmation(t) and t.values:
            groups.setdefault(int(t.user_attrs["confirm_of"]), []).append(t)
    base = (study.user_attrs.get("baseline") or {}).get("origin")
    out = []
    for origin, runs in groups.items():
        runs.sort(key=lambda t: t.number)
        seconds = [s for s in map(_per_epoch_s, runs) if s is not None]
        gflops = runs[0].user_attrs.get("train_gflops")
        out.append(Confirmed(origin, tuple(runs), origin == base,
                             {int(t.user_attrs["seed"]): t.values[0] for t in runs},
                             {int(t.user_attrs["seed"]): t.user_attrs["test_acc"] for t in runs
                              if t.user_attrs.get("test_acc") is not None},
                             gflops, statistics.fmean(seconds) if seconds else None))
    return sorted(out, key=lambda c: (-c.mean, c.origin))


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
        which = "the baseline configuration" if self.origin == BASELINE_UNSEARCHED else \
            f"the configuration of trial {self.origin}"
        return (f"confirmed winner: {which}, val acc {self.mean:.2f} ± "
                f"{self.std:.2f}% over {self.n} seeds; its best run is trial {self.run.number}")


def confirmed_winner(study: optuna.Study) -> Winner | None:
    """Return the :class:`Winner` among configurations with complete confirmation runs (chosen
    on mean validation accuracy only), or None."""
    configs = confirmed_configurations(study)
    if not configs:
        return None
    best = configs[0]
    values = list(best.val.values())
    return Winner(best.origin, max(best.runs, key=lambda t: t.values[0]), best.mean,
                  statistics.stdev(values) if len(values) > 1 else 0.0, best.n)


@dataclass(frozen=True)
class Gain:
    """The best confirmed searched configuration (``challenger``) against the ``baseline``:
    the mean differences challenger - baseline of validation and test accuracy (points) with
    their intervals (None below 2 runs a side); ``winner`` is whichever has the higher mean
    validation accuracy."""

    baseline: Confirmed
    challenger: Confirmed | None
    name: str
    val: Interval | None
    test: Interval | None

    @property
    def winner(self) -> Confirmed:
        """The confirmed winner of the two (validation only)."""
        if self.challenger is not None and self.challenger.mean > self.baseline.mean:
            return self.challenger
        return self.baseline

    def lines(self) -> list[str]:
        """Return the sentences a person reads: who won, the differences in validation and
        (reported, never chosen on) test accuracy with their intervals, and the advice to
        confirm with more seeds when the validation interval contains 0."""
        base = self.baseline
        where = "not run by the search" if base.origin == BASELINE_UNSEARCHED else f"trial {base.origin}"
        if self.challenger is None:
            return [f"only {self.name} ({where}) is confirmed: nothing to compare it with"]
        who = self.challenger.label
        head = (f"confirmed winner {who} against {self.name} ({where})" if self.winner is self.challenger
                else f"{self.name} ({where}) stays the confirmed winner; best searched configuration: {who}")
        out = [head + ", chosen on validation only:"]
        for metric, interval in (("val", self.val), ("test (reported, not chosen on)", self.test)):
            if interval is not None:
                out.append(gain_sentence(interval, metric, self.name))
        if self.val is None:
            out.append(f"fewer than 2 seeds a side: no interval; confirm with more seeds (e.g. `--seeds "
                       f"{max(3, 2 * min(base.n, self.challenger.n))}`)")
        else:
            advice = more_seeds_advice(self.val, min(base.n, self.challenger.n))
            if advice:
                out.append(advice)
        return out


def gain_of(study: optuna.Study) -> Gain | None:
    """Return the :class:`Gain` of the study's confirmations, or None when the baseline (the
    study's ``baseline`` user attr, recorded by ``confirm``) has no complete confirmation."""
    attr = study.user_attrs.get("baseline")
    configs = confirmed_configurations(study)
    base = next((c for c in configs if c.baseline), None)
    if attr is None or base is None:
        return None
    challenger = next((c for c in configs if not c.baseline), None)
    if challenger is None:
        return Gain(base, None, attr["name"], None, None)
    return Gain(base, challenger, attr["name"], difference(challenger.val, base.val),
                difference(challenger.test, base.test) if challenger.test and base.test else None)


def gain_header(study: optuna.Study) -> dict[str, str]:
    """Return the entries an exported script's header shows for the confirmed winner against
    the baseline (``gain``, ``confirmed cost``): empty without a confirmed baseline."""
    gain = gain_of(study)
    if gain is None:
        return {}
    rows = [c for c in (gain.challenger, gain.baseline) if c is not None]
    cost = "; ".join(f"{c.label}: {cost_text(c)}" for c in rows)
    return {"gain": " ".join(gain.lines()), "confirmed cost": cost}


def cost_text(c: Confirmed) -> str:
    """A configuration's cost in words: training GFLOPs per image and seconds per epoch."""
    gflops = "-" if c.train_gflops is None else f"{c.train_gflops:.3g}"
    seconds = "-" if c.epoch_s is None else f"{c.epoch_s:.1f}"
    return f"{gflops} training GFLOPs/image, {seconds} s/epoch"


def run_confirmations(study: optuna.Study, spec: Spec, *, top: int | None, seeds: int | None,
                      train: Callable[[int], Any], log: Callable[[str], None]) -> Any:
    """Queue the confirmations of ``spec``'s study (``top`` configurations and the baseline,
    :func:`find_baseline`, x ``seeds`` fresh seeds; defaults from
    ``search.confirm_top``/``confirm_seeds``), train them with
    ``train(cap)`` (the workers, capped at the study's finished trials plus those pending) and
    log the confirmed winner and its gain over the baseline; return what ``train`` returned,
    or None when nothing was pending.

    Raises:
        SpecError: the baseline's values are not valid for the spec.
    """
    top = top or spec.search.confirm_top
    count = seeds or spec.search.confirm_seeds
    baseline = find_baseline(study, spec)
    queued = enqueue_confirmations(study, top=top, seeds=confirm_seeds(spec.seed, count), baseline=baseline)
    pending = pending_confirmations(study)
    finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    where = "not run by the search" if baseline.origin == BASELINE_UNSEARCHED else f"trial {baseline.origin}"
    log(f"confirm: top {top} configuration(s) and {baseline.name} ({baseline.source}, {where}) x {count} "
        f"fresh seed(s) at the full recipe; {len(queued)} queued now, {pending} to train")
    report = train(finished + pending) if pending else None
    winner = confirmed_winner(study)
    if winner is not None:
        log(winner.describe())
    gain = gain_of(study)
    for line in gain.lines() if gain is not None else []:
        log(line)
    return report
