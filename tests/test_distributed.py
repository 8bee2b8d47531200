"""One run on several processes: shards, SyncBN, the launcher, torchrun, and a study's trial
on two gloo ranks (the CPU form of ``--gpus-per-trial``)."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from conftest import TINY_SPEC, write_spec

from bkdsearch.core.engine.data import build_data
from bkdsearch.core.engine.trainer import Stopped, Trainer
from bkdsearch.core.recipe.distributed import SINGLE, GlobalBatchNorm, Ranks, ranks_from_env, sync_batchnorm
from bkdsearch.core.recipe.errors import NonFiniteLoss
from bkdsearch.errors import BadInput
from bkdsearch.ranks import train_on_ranks
from bkdsearch.search.worker import device_slots
from bkdsearch.spec import Defaults, Spec, resolve

BIN = Path(sys.executable).parent


def _small(spec: dict) -> dict:
    """TINY_SPEC's data at half the size: these runs start processes, the data need not be big."""
    spec["data"]["synthetic"] = {**spec["data"]["synthetic"], "train_size": 600, "test_size": 160}
    return spec


def _cfg(**changes):
    spec = _small(copy.deepcopy(TINY_SPEC))
    spec["runtime"]["sync_bn"] = True
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if name:
            spec.setdefault(section, {})[name] = value
        else:
            spec[section] = value
    return resolve(Spec.model_validate(spec), Defaults())


# ---------------------------------------------------------------------------- shards
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_every_item_exactly_once(world: int) -> None:
    for n in range(0, 23):
        parts = [Ranks(r, world).shard(n) for r in range(world)]
        items = [i for p in parts for i in range(n)[p]]
        assert items == list(range(n))
        assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1
        assert [len(t) for t in torch.arange(n).tensor_split(world)] == [p.stop - p.start for p in parts]


def test_ranks_come_from_torchruns_variables() -> None:
    assert ranks_from_env({}) == SINGLE
    assert ranks_from_env({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"}) == Ranks(2, 4, 0)
    with pytest.raises(ValueError, match="does not fit"):
        ranks_from_env({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(ValueError, match="whole numbers"):
        ranks_from_env({"WORLD_SIZE": "two"})


def _joined(world: int, make) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each batch of ``world`` rank loaders, the ranks' shards concatenated in rank order."""
    loaders = [make(Ranks(r, world)) for r in range(world)]
    per_rank = [list(loader) for loader in loaders]
    assert len({len(b) for b in per_rank}) == 1 or not loaders[0].train
    out = []
    for b in range(max(len(p) for p in per_rank)):
        shards = [p[b] for p in per_rank if b < len(p)]
        out.append((torch.cat([x for x, _ in shards]), torch.cat([y for _, y in shards])))
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_in_memory_shards_join_into_the_single_process_batches(world: int) -> None:
    synthetic = TINY_SPEC["data"]["synthetic"]

    def bundle(ranks: Ranks):
        return build_data("synthetic", root=None, batch_size=24, eval_batch_size=50, seed=3, synthetic=synthetic,
                          val_fraction=0.2, ranks=ranks)

    for split in ("train", "val", "test"):
        solo = list(getattr(bundle(SINGLE), split))
        joined = _joined(world, lambda r, split=split: getattr(bundle(r), split))
        assert len(solo) == len(joined)
        for (x1, y1), (x2, y2) in zip(solo, joined, strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def _image_folder(root: Path, classes=("cat", "dog", "owl"), per_class: int = 10, size: int = 36) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 4)):
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                # Each class has its own colour, so that a small network learns something.
                pixels = rng.integers(0, 80, (size, size + 4, 3), dtype=np.uint8)
                pixels[..., k] += 150
                Image.fromarray(pixels).save(root / split / c / f"{i}.jpg", quality=90)
    return root


def test_image_folder_shards_join_into_the_single_process_batches(tmp_path: Path) -> None:
    root = _image_folder(tmp_path)

    def bundle(ranks: Ranks):
        return build_data("imagefolder", root=root, batch_size=6, eval_batch_size=5, seed=1, image_size=16,
                          val_fraction=0.2, ranks=ranks)

    for split in ("train", "val", "test"):
        solo = list(getattr(bundle(SINGLE), split))
        joined = _joined(2, lambda r, split=split: getattr(bundle(r), split))
        assert len(solo) == len(joined) > 0
        for (x1, y1), (x2, y2) in zip(solo, joined, strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_sync_batchnorm_keeps_state_and_leaves_frozen_norms() -> None:
    from bkdsearch.core.engine.models import create_model

    student, teacher = create_model("resnet8", num_classes=10), create_model("resnet8", num_classes=10)
    teacher.requires_grad_(False)
    keys = list(student.state_dict())
    weight = student.bn1.weight
    synced = sync_batchnorm(student)
    assert list(synced.state_dict()) == keys
    norms = [m for m in synced.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, GlobalBatchNorm) for m in norms)
    assert synced.bn1.weight is weight  # the same parameter, not a copy
    assert not any(isinstance(m, GlobalBatchNorm) for m in sync_batchnorm(teacher).modules())
    # Alone (no process group) it is plain BatchNorm.
    x = torch.randn(4, 3, 32, 32)
    plain = create_model("resnet8", num_classes=10)
    plain.load_state_dict(synced.state_dict())
    assert torch.allclose(plain.train()(x), synced.train()(x), atol=1e-5)


def test_device_slots_group_gpus_and_check_the_batch() -> None:
    gpus = [torch.device(f"cuda:{i}") for i in range(8)]
    assert device_slots(gpus, 4, 512) == [gpus[:4], gpus[4:]]
    assert device_slots(gpus[:2], 1, 64) == [[gpus[0]], [gpus[1]]]
    assert device_slots([torch.device("cpu")], 2, 64) == [[torch.device("cpu")] * 2]
    with pytest.raises(BadInput, match="does not divide the 6 devices"):
        device_slots(gpus[:6], 4, 512)
    with pytest.raises(BadInput, match="multiple"):
        device_slots(gpus, 4, 30)


# ---------------------------------------------------------------------------- two ranks
def _vals(history) -> list[float]:
    return [row["val_acc"] for row in history]


def _close_to(one, two, samples: int) -> None:
    """Losses within float tolerance; accuracies within a few samples: the ranks sum in
    another order (and on other thread counts), and after two epochs that float drift flips
    a prediction near a tie now and then (seen: 2 of 160 test images)."""
    for a, b in zip(one.history, two.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)
    step = 100.0 / samples
    assert all(abs(a - b) <= 2 * step + 1e-9 for a, b in zip(_vals(one.history), _vals(two.history), strict=True))
    assert abs(one.test_acc - two.test_acc) <= 3 * 100.0 / 160 + 1e-9


def test_two_ranks_train_as_one_process_with_sync_bn(tmp_path: Path, teacher_ckpt: str) -> None:
    cfg = _cfg()
    one = Trainer(cfg, tmp_path / "one", teacher_weights=teacher_ckpt).fit()
    two = train_on_ranks(cfg, tmp_path / "two", world_size=2, teacher_weights=teacher_ckpt)
    _close_to(one, two, samples=120)
    # One set of files, written by rank 0 alone.
    files = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert files == ["last.pt", "metrics.jsonl", "ranks", "student.pt"]
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("epoch") for r in rows] == [1, 2, None] and rows[-1]["final"]
    assert not list((tmp_path / "two" / "ranks").glob("*.error.json"))


def test_two_ranks_on_an_image_folder_train_as_one_process(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "images")
    cfg = _cfg(**{"data.dataset": "imagefolder", "data.root": str(root), "data.image_size": 32,
                  "data.batch_size": 8, "data.synthetic": None, "data.val_fraction": 0.3, "method": "ce"})
    one = Trainer(cfg, tmp_path / "one").fit()
    two = train_on_ranks(cfg, tmp_path / "two", world_size=2)
    _close_to(one, two, samples=9)


def test_rank_zeros_decision_stops_every_rank(tmp_path: Path) -> None:
    cfg = _cfg(method="ce")
    seen = []

    def prune(epoch: int, row: dict) -> None:
        seen.append(epoch)
        raise optuna.TrialPruned(f"pruned at {epoch}")

    with pytest.raises(optuna.TrialPruned, match="pruned at 1"):
        train_on_ranks(cfg, tmp_path / "run", world_size=2, on_epoch=prune)
    assert seen == [1]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (tmp_path / "run" / "student.pt").exists()


class _Steps:
    """A progress display that counts rank 0's steps as the launcher relays them."""

    def __init__(self) -> None:
        self.steps = 0

    def begin(self, epochs: int, start_epoch: int, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch

    def step(self) -> None:
        self.steps += 1

    def end_epoch(self, row) -> None:
        pass

    def finish(self) -> None:
        pass


def test_should_stop_stops_the_ranks_within_an_epoch(tmp_path: Path) -> None:
    cfg = _cfg(method="ce", **{"train.epochs": 30})
    steps = _Steps()
    with pytest.raises(Stopped):
        train_on_ranks(cfg, tmp_path / "run", world_size=2, progress=steps, should_stop=lambda: steps.steps > 0)
    assert 0 < steps.steps < steps.steps_per_epoch  # stopped within the first epoch
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_an_error_on_the_ranks_names_the_rank(tmp_path: Path) -> None:
    # A student starting from NaN weights (an overflowing lr is refused by the spec's limits).
    from bkdsearch.zoo import create_model

    state = create_model("resnet8", num_classes=10).state_dict()
    torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()},
               tmp_path / "nan.pt")
    cfg = _cfg(method="ce", student={"arch": "resnet8", "checkpoint": str(tmp_path / "nan.pt")})
    with pytest.raises(NonFiniteLoss, match=r"rank \d of 2: training loss is"):
        train_on_ranks(cfg, tmp_path / "run", world_size=2)


@pytest.mark.slow
def test_train_started_by_torchrun_trains_once_on_two_ranks(tmp_path: Path) -> None:
    spec = _small(copy.deepcopy(TINY_SPEC))
    spec["method"] = "ce"
    spec["runtime"]["sync_bn"] = True
    spec["train"]["epochs"] = 1
    path = write_spec(tmp_path / "tiny.yaml", spec)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "bkdsearch", "train", path, "--out", "run"],
                       cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("val acc") == 1  # rank 0 reports, once
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row.get("epoch") for row in rows] == [1, None] and rows[-1]["final"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "last.pt", "metrics.jsonl",
                                                                      "student.pt"]


@pytest.mark.slow
def test_a_study_trial_on_two_ranks_survives_a_killed_rank(tmp_path: Path, teacher_ckpt: str) -> None:
    spec = _small(copy.deepcopy(TINY_SPEC))
    spec["runtime"]["sync_bn"] = True
    spec["train"]["epochs"] = 3
    spec["teacher"]["checkpoint"] = teacher_ckpt
    spec["search"] = {"n_trials": 1}
    path = write_spec(tmp_path / "tiny.yaml", spec)
    proc = subprocess.Popen([str(BIN / "bkdsearch"), "run", path, "--devices", "cpu", "--gpus-per-trial", "2"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "studies" / "tiny" / "trial-0" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.2)
    rank1 = _rank_pid(proc.pid, 1)
    os.kill(rank1, signal.SIGKILL)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'studies' / 'tiny.db'}")
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE], output
    assert "rank 1 of 2 was killed by SIGKILL; queued again to resume after epoch" in trials[0].user_attrs[
        "fail_reason"]
    assert trials[1].user_attrs["resumed_from"]["trial"] == 0
    assert trials[1].user_attrs["resumed_from"]["epoch"] >= 1
    assert trials[1].user_attrs["processes"] == 2
    assert sorted(trials[1].intermediate_values) == [1, 2, 3]


def _rank_pid(parent: int, rank: int) -> int:
    """The pid of rank ``rank`` among the processes ``parent`` started."""
    for _ in range(600):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            ppid = next((line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), "")
            if ppid == str(parent) and f"RANK={rank}".encode() in environ:
                return int(entry.name)
        time.sleep(0.1)
    raise AssertionError(f"no rank {rank} under {parent}")


def test_train_run_refuses_what_cannot_be_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bkdsearch.ranks import train_run

    cfg = _cfg(method="ce")
    with pytest.raises(BadInput, match="multiple of the 3 processes"):
        train_run(cfg, tmp_path, teacher_weights=None, processes=3, device="cpu")
    with pytest.raises(BadInput, match="not --devices cuda:1"):
        train_run(cfg, tmp_path, teacher_weights=None, processes=2, device="cuda:1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(BadInput, match="torchrun starts the processes"):
        train_run(cfg, tmp_path, teacher_weights=None, processes=2, device="cpu")


def test_the_exported_script_trains_on_two_processes(tmp_path: Path, teacher_ckpt: str) -> None:
    from bkdsearch.export import render_script

    script = tmp_path / "train.py"
    script.write_text(render_script(_cfg(method="ce", **{"train.epochs": 1}), {"study": "test", "trial": 0}))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node"]
    r = subprocess.run([*torchrun, "2", str(script), "--device", "cpu", "--data", "unused",
                        "--teacher-checkpoint", teacher_ckpt, "--val-fraction", "0.2", "--out", "out"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600, env={"PATH": os.environ["PATH"]})
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("test accuracy") == 1 and r.stdout.count("epoch 1/1") == 1, r.stdout
    assert (tmp_path / "out" / "student.pt").is_file()
    bad = subprocess.run([*torchrun, "3", str(script), "--device", "cpu",
                          "--teacher-checkpoint", teacher_ckpt], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env={"PATH": os.environ["PATH"]})
    assert bad.returncode != 0 and "cannot be shared by 3 processes" in bad.stderr
