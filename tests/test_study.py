"""Study settings a researcher relies on: a seeded sampler (a study re-made from the same spec
asks the same first parameters), pruning that waits for the schedule, published baselines."""

from __future__ import annotations

import copy

import optuna
import pytest
from conftest import TINY_SPEC

from bkdsearch.search.study import TrialSuggest, first_prunable_step, make_pruner, open_study
from bkdsearch.spec import Defaults, Spec, resolve


def _spec(**train) -> Spec:
    spec = copy.deepcopy(TINY_SPEC)
    spec["train"].update(train)
    spec["blockkd"] = {"tau": {"float": [1.0, 8.0]}, "order": {"choice": ["shallow_first", "deep_first"]}}
    spec["train"]["lr"] = {"float": [0.01, 0.2], "log": True}
    return Spec.model_validate(spec)


def _first_params(spec: Spec, url: str, n: int = 3) -> list[dict]:
    study = open_study(spec, url)
    out = []
    for _ in range(n):
        trial = study.ask()
        resolve(spec, TrialSuggest(trial))
        out.append(dict(trial.params))
        study.tell(trial, 50.0)
    return out


def test_a_study_remade_from_the_same_spec_asks_the_same_first_parameters(tmp_path) -> None:
    spec = _spec()
    first = _first_params(spec, f"sqlite:///{tmp_path / 'a.db'}")
    again = _first_params(spec, f"sqlite:///{tmp_path / 'b.db'}")
    other = _first_params(Spec.model_validate({**spec.model_dump(by_alias=True), "seed": 1}),
                          f"sqlite:///{tmp_path / 'c.db'}")
    assert first == again
    assert first != other


@pytest.mark.parametrize(("train", "expected"), [
    ({"epochs": 8, "schedule": "multistep", "milestones": [5, 7]}, 5),
    ({"epochs": 240, "schedule": "multistep"}, 150),  # the published 150/180/210 default
    ({"epochs": 10, "schedule": "cosine"}, 5),
])
def test_the_pruner_never_prunes_before_the_first_milestone(train, expected) -> None:
    spec = _spec(**train)
    assert first_prunable_step(spec) == expected
    study = optuna.create_study(direction="maximize", pruner=make_pruner(spec))
    for good in range(3):  # startup trials with high accuracy at every epoch
        trial = study.ask()
        for step in range(1, expected + 2):
            trial.report(90.0 + good, step)
        study.tell(trial, 90.0 + good)
    bad = study.ask()
    pruned_at = None
    for step in range(1, expected + 2):
        bad.report(1.0, step)  # far below the median at every epoch
        if bad.should_prune():
            pruned_at = step
            break
    assert pruned_at == expected + 1


def test_kd_and_dkd_default_to_the_published_baselines() -> None:
    base = copy.deepcopy(TINY_SPEC)
    base["train"]["epochs"] = 240
    kd = resolve(Spec.model_validate({**base, "method": "kd"}), Defaults())
    assert (kd.loss.alpha, kd.loss.beta) == (0.1, 0.9)
    dkd = resolve(Spec.model_validate({**base, "method": "dkd"}), Defaults())
    assert dkd.loss.dkd_warmup == 20 and (dkd.loss.alpha, dkd.loss.beta) == (1.0, 1.0)
    short = resolve(Spec.model_validate({**base, "method": "dkd", "train": {**base["train"], "epochs": 24}}),
                    Defaults())
    assert short.loss.dkd_warmup == 2
    explicit = resolve(Spec.model_validate({**base, "method": "kd", "blockkd": {"alpha": 0.5}}), Defaults())
    assert (explicit.loss.alpha, explicit.loss.beta) == (0.5, 0.9)
    blockkd = resolve(Spec.model_validate({**base, "method": "blockkd"}), Defaults())
    assert (blockkd.loss.alpha, blockkd.loss.beta, blockkd.loss.dkd_warmup) == (1.0, 1.0, 0)
