"""The baseline is always confirmed, and the winner's gain over it is shown with its interval:
on a real SQLite study whose trials are asked and told the way workers do (resolve -> tell),
with constructed accuracies so that the figures can be checked by hand. Training itself is
covered by test_confirm.py."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import TINY_SPEC, write_spec
from optuna.trial import TrialState

from bkdsearch.errors import SpecError
from bkdsearch.search import TrialSuggest, load_study, open_study
from bkdsearch.search.confirm import (
    BASELINE_UNSEARCHED,
    confirm_seeds,
    confirmed_winner,
    enqueue_confirmations,
    find_baseline,
    gain_header,
    gain_of,
)
from bkdsearch.spec import Spec, resolve

PUBLISHED = {"train.lr": 0.05, "train.momentum": 0.9}


def _spec(**search) -> Spec:
    spec = copy.deepcopy(TINY_SPEC)
    spec["method"] = "ce"
    spec["train"].update(epochs=4, lr={"float": [0.02, 0.2], "log": True}, momentum={"float": [0.5, 0.95]})
    spec["search"] = {"n_trials": 4, "pruner": "none", **search}
    return Spec.model_validate(spec)


def _tell(study: optuna.Study, spec: Spec, val: float, test: float | None = None, wall_s: float = 8.0) -> int:
    """Ask the next trial (a queued one first), resolve its configuration as a worker does and
    tell ``val``; record what a finished run records. Return its number."""
    trial = study.ask()
    confirm_of = trial.user_attrs.get("confirm_of")
    seed = {"seed": int(trial.user_attrs["seed"])} if confirm_of is not None else None
    cfg = resolve(spec, TrialSuggest(trial), overrides=seed, fidelity=confirm_of is None)
    trial.set_user_attr("run_config", cfg.model_dump(mode="json"))
    trial.set_user_attr("train_gflops", 0.125)
    trial.set_user_attr("wall_time_s", wall_s)
    if test is not None:
        trial.set_user_attr("test_acc", test)
    study.tell(trial, [val])
    return trial.number


def _searched(tmp: Path, spec: Spec, vals: list[float]) -> optuna.Study:
    study = open_study(spec, f"sqlite:///{tmp}/s.db", "s")
    for val in vals:
        _tell(study, spec, val)
    return study


def _train_queued(study: optuna.Study, spec: Spec, results: dict[int, list[tuple[float, float]]]) -> None:
    """Tell every queued confirmation ``results[origin][seed index]`` (val, test)."""
    seeds = confirm_seeds(spec.seed, 3)
    while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        waiting = min(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)), key=lambda t: t.number)
        origin, seed = waiting.user_attrs["confirm_of"], waiting.user_attrs["seed"]
        val, test = results[origin][seeds.index(seed)]
        _tell(study, spec, val, test)


def test_the_published_configuration_is_confirmed_even_when_it_ranks_last(tmp_path: Path) -> None:
    spec = _spec(enqueue=[PUBLISHED])
    study = _searched(tmp_path, spec, [50.0, 70.0, 75.0, 60.0])  # trial 0 (enqueued) ranks last
    baseline = find_baseline(study, spec)
    assert (baseline.origin, baseline.source, baseline.name) == (0, "search.enqueue[0]", "the published configuration")
    assert {k: baseline.params[k] for k in PUBLISHED} == PUBLISHED

    queued = enqueue_confirmations(study, top=2, seeds=confirm_seeds(0, 3), baseline=baseline)
    assert sorted(queued) == sorted((o, s) for o in (2, 1, 0) for s in (1000, 1001, 1002))
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert all(t.user_attrs.get("baseline") for t in waiting if t.user_attrs["confirm_of"] == 0)
    # A second confirm (or one with the same seeds) reuses what is queued or done.
    assert enqueue_confirmations(study, top=2, seeds=confirm_seeds(0, 3), baseline=baseline) == []

    # Trial 2's configuration wins on validation: +1.0, +1.5, +2.5 over the baseline by seed,
    # whose paired 95% interval is -0.23 to +3.56 (tests/test_gain.py computes it by hand).
    # Trial 1 has the best *test* mean, which must not make it the winner.
    _train_queued(study, spec, {2: [(80.0, 78.0), (81.0, 78.5), (82.5, 79.0)],
                                1: [(79.5, 90.0), (79.0, 90.0), (80.0, 90.0)],
                                0: [(79.0, 77.0), (79.5, 77.5), (80.0, 77.0)]})
    runs = [t for t in study.trials if t.user_attrs.get("confirm_of") == 0]
    assert len(runs) == 3 and all(t.params == study.trials[0].params for t in runs)
    winner = confirmed_winner(study)
    assert winner is not None and winner.origin == 2 and winner.n == 3
    gain = gain_of(study)
    assert gain is not None and gain.challenger is not None and gain.winner.origin == 2
    assert gain.val is not None and gain.val.method == "paired" and gain.val.n == (3,)
    assert (gain.val.mean, gain.val.low, gain.val.high) == (pytest.approx(5 / 3), pytest.approx(-0.230626, abs=1e-5),
                                                            pytest.approx(3.563959, abs=1e-5))
    assert gain.test is not None and gain.test.mean == pytest.approx(4 / 3)  # 78.5 - 77.17, reported only
    text = " ".join(gain.lines())
    assert "confirmed winner trial 2 against the published configuration (trial 0)" in text
    assert "not distinguishable from the published configuration at n=3" in text
    assert "--seeds" in text
    assert gain.baseline.epoch_s == pytest.approx(2.0)  # 8 s over 4 epochs
    header = gain_header(study)
    assert "not distinguishable" in header["gain"] and "0.125 training GFLOPs/image, 2.0 s/epoch" in header[
        "confirmed cost"]


def test_without_an_enqueued_configuration_the_baseline_is_every_default(tmp_path: Path) -> None:
    spec = _spec()
    study = _searched(tmp_path, spec, [70.0, 72.0, 71.0])
    baseline = find_baseline(study, spec)
    # No search trial ran the defaults (the geometric midpoint of lr, the middle of momentum).
    assert (baseline.origin, baseline.source) == (BASELINE_UNSEARCHED, "defaults")
    assert baseline.params == {"train.lr": pytest.approx(0.2 ** 0.5 * 0.02 ** 0.5), "train.momentum": 0.725}
    queued = enqueue_confirmations(study, top=1, seeds=confirm_seeds(0, 3), baseline=baseline)
    assert sorted(queued) == sorted((o, s) for o in (1, BASELINE_UNSEARCHED) for s in (1000, 1001, 1002))
    # The defaults win clearly here (+1.0, +1.2, +1.1 over trial 1 by seed).
    _train_queued(study, spec, {1: [(79.0, 78.0), (79.5, 78.0), (80.0, 78.0)],
                                BASELINE_UNSEARCHED: [(80.0, 79.0), (80.7, 79.0), (81.1, 79.0)]})
    runs = [t for t in study.trials if t.user_attrs.get("confirm_of") == BASELINE_UNSEARCHED]
    assert all(t.params == baseline.params for t in runs)
    gain = gain_of(study)
    assert gain is not None and gain.winner is gain.baseline and gain.baseline.label == "baseline"
    assert gain.val is not None and (gain.val.low, gain.val.high) == (pytest.approx(-1.348414, abs=1e-5),
                                                                      pytest.approx(-0.851586, abs=1e-5))
    text = " ".join(gain.lines())
    assert "the default configuration (not run by the search) stays the confirmed winner" in text
    assert "points below the default configuration" in text and "not distinguishable" not in text


def test_a_named_baseline_wins_over_the_enqueued_one_and_must_name_searched_parameters(tmp_path: Path) -> None:
    named = {"train.lr": 0.1}
    spec = _spec(enqueue=[PUBLISHED], baseline=named)
    study = _searched(tmp_path, spec, [50.0, 70.0])
    baseline = find_baseline(study, spec)
    assert baseline.source == "search.baseline" and baseline.params["train.lr"] == 0.1
    assert baseline.params["train.momentum"] == 0.725  # unnamed: the default
    with pytest.raises(SpecError, match=r"search.baseline.train.epochs: not a searched parameter"):
        find_baseline(study, _spec(baseline={"train.epochs": 3}))


def test_status_report_and_export_show_the_gain(tmp_path: Path) -> None:
    spec = _spec(enqueue=[PUBLISHED])
    storage = f"sqlite:///{tmp_path}/s.db"
    study = _searched(tmp_path, spec, [50.0, 70.0, 75.0])
    enqueue_confirmations(study, top=1, seeds=confirm_seeds(0, 3), baseline=find_baseline(study, spec))
    _train_queued(study, spec, {2: [(80.0, 78.0), (80.7, 78.5), (81.1, 79.0)],
                                0: [(79.0, 77.0), (79.5, 77.5), (80.0, 77.0)]})
    path = write_spec(tmp_path / "s.yaml", {**spec.model_dump(mode="json", by_alias=True, exclude_none=True),
                                            "storage": storage})
    status = subprocess.run([sys.executable, "-m", "bkdsearch.cli", "status", path, "--study", "s", "--json"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert status.returncode == 0, status.stderr
    row = json.loads(status.stdout)[0]
    assert [(c["label"], c["n"]) for c in row["configurations"]] == [("trial 2", 3), ("trial 0 (baseline)", 3)]
    assert row["gain"]["winner"] == 2 and row["gain"]["val"]["method"] == "paired"
    assert row["gain"]["val"]["low"] == pytest.approx(0.851586, abs=1e-5)
    assert any("val +1.10 points over the published configuration" in line for line in row["gain"]["lines"])
    shown = subprocess.run([sys.executable, "-m", "bkdsearch.cli", "status", path, "--study", "s"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300, env={"COLUMNS": "80",
                                                                                         **_env()})
    assert "GFLOPs/img" in shown.stdout and "over the published configuration" in shown.stdout

    from bkdsearch.report import write_report

    files = write_report(storage, "s", tmp_path / "report")
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "## Gain over the published configuration" in summary
    assert "| trial 0 (baseline) | 3 | 79.50 ± 0.50 | 77.17 ± 0.29 | 0.125 | 2.0 |" in summary
    assert tmp_path / "report" / "confirmed.png" in files
    assert load_study(storage, "s").user_attrs["baseline"]["origin"] == 0


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "COLUMNS"}
