"""The training run: learning, frozen teacher, determinism and bit-identical resume."""

import copy

import pytest
import torch
from conftest import TINY_SPEC

from bkdsearch.engine import Trainer, lr_at
from bkdsearch.spec import Defaults, Recipe, Spec, resolve


def _cfg(**overrides):
    spec = Spec.model_validate(TINY_SPEC)
    return resolve(spec, Defaults(overrides), overrides=overrides)


def _state(path):
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("method", ["ce", "kd", "dkd", "blockkd"])
def test_methods_learn_above_chance(method, teacher_ckpt, tmp_path):
    cfg = _cfg(method=method, **{"train.epochs": 3})
    result = Trainer(cfg, tmp_path, teacher_weights=teacher_ckpt, progress=False).fit()
    assert result.val_acc > 25.0, result.history  # 10 classes: chance is 10%
    assert result.test_acc > 25.0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # 3 epochs + final line


@pytest.mark.parametrize("order", ["shallow_first", "deep_first"])
def test_teacher_never_changes(order, teacher_ckpt, tmp_path):
    cfg = _cfg(**{"blockkd.order": order, "train.epochs": 1})
    trainer = Trainer(cfg, tmp_path, teacher_weights=teacher_ckpt, progress=False)
    teacher = trainer.method.teacher
    before = copy.deepcopy(teacher.state_dict())
    trainer.fit()
    assert not teacher.training
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_resume_is_bit_identical(teacher_ckpt, tmp_path):
    cfg = _cfg(**{"train.epochs": 2, "blockkd.gamma": 0.5})
    full = Trainer(cfg, tmp_path / "full", teacher_weights=teacher_ckpt, progress=False).fit()
    part = Trainer(cfg, tmp_path / "part", teacher_weights=teacher_ckpt, progress=False).fit(stop_after=1)
    assert part.epochs == 1 and part.test_acc is None
    # A fresh process would build a new Trainer: do the same, and resume from last.pt.
    resumed = Trainer(cfg, tmp_path / "part", teacher_weights=teacher_ckpt, progress=False).fit()
    assert resumed.resumed_from_epoch == 1
    a, b = _state(full.student_path), _state(resumed.student_path)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.test_acc == resumed.test_acc


def test_same_seed_same_weights_other_seed_differs(teacher_ckpt, tmp_path):
    cfg = _cfg(method="ce", **{"train.epochs": 1})
    one = Trainer(cfg, tmp_path / "a", progress=False).fit()
    two = Trainer(cfg, tmp_path / "b", progress=False).fit()
    other = Trainer(_cfg(method="ce", seed=1, **{"train.epochs": 1}), tmp_path / "c", progress=False).fit()
    a, b, c = (_state(r.student_path) for r in (one, two, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_checkpoint_of_another_config_is_refused(teacher_ckpt, tmp_path):
    Trainer(_cfg(method="ce", **{"train.epochs": 1}), tmp_path, progress=False).fit()
    with pytest.raises(ValueError, match="different run configuration"):
        Trainer(_cfg(method="ce", **{"train.epochs": 2}), tmp_path, progress=False).fit()


def test_lr_schedules():
    multi = Recipe(epochs=240, lr=0.05, schedule="multistep")
    assert lr_at(multi, 0, 0, 10) == 0.05
    assert lr_at(multi, 150, 0, 10) == pytest.approx(0.005)
    assert lr_at(multi, 239, 9, 10) == pytest.approx(0.00005)
    cos = Recipe(epochs=10, lr=0.1, schedule="cosine", warmup_epochs=2)
    assert lr_at(cos, 0, 0, 4) == pytest.approx(0.1 / 8)  # first warmup step
    assert lr_at(cos, 1, 3, 4) == pytest.approx(0.1)  # end of warmup
    assert lr_at(cos, 6, 0, 4) == pytest.approx(0.05)  # half way through the cosine
    assert lr_at(Recipe(epochs=3, lr=0.2, schedule="constant"), 2, 1, 4) == 0.2


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 5e-4])
def test_capturable_sgd_matches_torch_sgd(nesterov, weight_decay):
    from bkdsearch.engine import CapturableSGD

    torch.manual_seed(0)
    ref = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    mine = [p.detach().clone().requires_grad_() for p in ref]
    opt_ref = torch.optim.SGD(ref, lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=weight_decay)
    opt_mine = CapturableSGD(mine, lr=torch.tensor(0.1), momentum=0.9, nesterov=nesterov,
                             weight_decay=weight_decay)
    for step in range(4):
        lr = 0.1 / (step + 1)
        for group in opt_ref.param_groups:
            group["lr"] = lr
        opt_mine.param_groups[0]["lr"].fill_(lr)
        g = [torch.randn_like(p) for p in ref]
        for p, q, gi in zip(ref, mine, g, strict=True):
            p.grad, q.grad = gi.clone(), gi.clone()
        opt_ref.step()
        opt_mine.step()
        for p, q in zip(ref, mine, strict=True):
            assert torch.allclose(p, q, atol=1e-6, rtol=1e-6)
    # Same state layout: a torch SGD checkpoint loads into CapturableSGD.
    opt_mine.load_state_dict(opt_ref.state_dict())
