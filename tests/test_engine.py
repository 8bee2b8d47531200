"""The training run: learning, frozen teacher, determinism, bit-identical resume (also under
another runtime), the stop hook, metric rows and unreadable checkpoints."""

import copy
import json
import math
import os
import time

import pytest
import torch
from conftest import TINY_SPEC, write_spec

from bkdsearch.core.engine.trainer import Stopped, Trainer
from bkdsearch.core.recipe.optim import lr_at
from bkdsearch.errors import CheckpointError
from bkdsearch.spec import Defaults, Recipe, RuntimeConfig, Spec, resolve
from bkdsearch.zoo import WeightsError


def _cfg(**overrides):
    spec = Spec.model_validate(TINY_SPEC)
    return resolve(spec, Defaults(overrides), overrides=overrides)


def _state(path):
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("method", ["ce", "kd", "dkd", "blockkd"])
def test_methods_learn_above_chance(method, teacher_ckpt, tmp_path):
    cfg = _cfg(method=method, **{"train.epochs": 3})
    result = Trainer(cfg, tmp_path, teacher_weights=teacher_ckpt).fit()
    assert result.val_acc > 25.0, result.history  # 10 classes: chance is 10%
    assert result.test_acc > 25.0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # 3 epochs + final line


@pytest.mark.parametrize("order", ["shallow_first", "deep_first"])
def test_teacher_never_changes(order, teacher_ckpt, tmp_path):
    cfg = _cfg(**{"blockkd.order": order, "train.epochs": 1})
    trainer = Trainer(cfg, tmp_path, teacher_weights=teacher_ckpt)
    teacher = trainer.method.teacher
    before = copy.deepcopy(teacher.state_dict())
    trainer.fit()
    assert not teacher.training
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_resume_is_bit_identical(teacher_ckpt, tmp_path):
    cfg = _cfg(**{"train.epochs": 2, "blockkd.gamma": 0.5})
    full = Trainer(cfg, tmp_path / "full", teacher_weights=teacher_ckpt).fit()
    part = Trainer(cfg, tmp_path / "part", teacher_weights=teacher_ckpt).fit(stop_after=1)
    assert part.epochs == 1 and part.test_acc is None
    # A fresh process would build a new Trainer: do the same, and resume from last.pt.
    resumed = Trainer(cfg, tmp_path / "part", teacher_weights=teacher_ckpt).fit()
    assert resumed.resumed_from_epoch == 1
    a, b = _state(full.student_path), _state(resumed.student_path)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.test_acc == resumed.test_acc


def test_same_seed_same_weights_other_seed_differs(teacher_ckpt, tmp_path):
    cfg = _cfg(method="ce", **{"train.epochs": 1})
    one = Trainer(cfg, tmp_path / "a").fit()
    two = Trainer(cfg, tmp_path / "b").fit()
    other = Trainer(_cfg(method="ce", seed=1, **{"train.epochs": 1}), tmp_path / "c").fit()
    a, b, c = (_state(r.student_path) for r in (one, two, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_checkpoint_of_another_config_is_refused(teacher_ckpt, tmp_path):
    Trainer(_cfg(method="ce", **{"train.epochs": 1}), tmp_path).fit()
    with pytest.raises(CheckpointError, match="different run configuration"):
        Trainer(_cfg(method="ce", **{"train.epochs": 2}), tmp_path).fit()


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
    from bkdsearch.core.engine.cuda_graph import CapturableSGD

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


# --------------------------------------------------------------------------- stop hook, metrics


def _small_cfg(**overrides):
    """TINY_SPEC's CE run (no teacher) on a small training set: 7 steps per epoch."""
    spec = copy.deepcopy(TINY_SPEC)
    spec["method"] = "ce"
    spec["data"]["synthetic"].update(train_size=256, test_size=64)
    return resolve(Spec.model_validate(spec), Defaults(overrides), overrides=overrides)


def _asking(stop_at=None):
    """A should_stop hook counting its calls; it says stop on the call after ``stop_at``."""
    calls = []

    def should_stop():
        calls.append(1)
        return stop_at is not None and len(calls) > stop_at

    return calls, should_stop


def test_should_stop_is_asked_before_every_step_and_stops_mid_epoch(tmp_path):
    cfg = _small_cfg()
    calls, hook = _asking()
    probe = Trainer(cfg, tmp_path / "probe", should_stop=hook)
    steps = len(probe.data.train)
    full = probe.fit()
    # Once before each epoch and once before each of its steps.
    assert len(calls) == cfg.train.epochs * (steps + 1)

    # Epoch 1, then epoch 2's first check and two steps: stop before its third step.
    calls, hook = _asking(stop_at=(steps + 1) + 3)
    trainer = Trainer(cfg, tmp_path / "run", should_stop=hook)
    with pytest.raises(Stopped):
        trainer.fit()
    assert len(calls) == (steps + 1) + 4
    assert _state(trainer.checkpoint_path)["epoch"] == 1
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    _, never = _asking()
    resumed = Trainer(cfg, tmp_path / "run", should_stop=never).fit()
    assert resumed.resumed_from_epoch == 1
    a, b = _state(full.student_path), _state(resumed.student_path)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_metric_rows_carry_wall_clock_time_and_epoch_seconds(tmp_path):
    before = time.time()
    trainer = Trainer(_small_cfg(), tmp_path)
    result = trainer.fit()
    after = time.time()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if "epoch" in r]
    assert epochs == result.history and len(epochs) == 2
    assert before <= epochs[0]["time"] <= epochs[1]["time"] <= after
    assert epochs[1]["time"] - epochs[0]["time"] >= epochs[1]["epoch_s"]
    for row in epochs:
        assert 0 < row["epoch_s"] <= after - before
        # epoch_s times the training steps, the span images_per_s is measured over.
        assert row["images_per_s"] * row["epoch_s"] == pytest.approx(len(trainer.data.train) * 32)


# --------------------------------------------------------------------------- runtimes


EAGER = RuntimeConfig(device="cpu", amp="off", cuda_graph="off", channels_last="off")
# What a GPU worker runs with; on the CPU these settings are inert.
GRAPHED = RuntimeConfig(device="cpu", amp="bf16", cuda_graph="on", channels_last="on")


def _with_runtime(cfg, runtime):
    return cfg.model_copy(update={"runtime": runtime})


def test_digest_ignores_the_runtime_only():
    base = _with_runtime(_small_cfg(), EAGER)
    assert _with_runtime(base, GRAPHED).digest() == base.digest()
    assert _with_runtime(base, RuntimeConfig(device="cuda:3", compile=True)).digest() == base.digest()
    assert _small_cfg(**{"train.lr": 0.05}).digest() != base.digest()


def test_checkpoint_resumes_under_another_runtime(tmp_path):
    eager = _with_runtime(_small_cfg(), EAGER)
    full = Trainer(eager, tmp_path / "full").fit()
    Trainer(eager, tmp_path / "run").fit(stop_after=1)
    resumed = Trainer(_with_runtime(eager, GRAPHED), tmp_path / "run").fit()
    assert resumed.resumed_from_epoch == 1 and resumed.epochs == 2
    a, b = _state(full.student_path), _state(resumed.student_path)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_checkpoint_of_a_graphed_run_resumes_eagerly_on_cpu(optimizer, tmp_path):
    """A CUDA-graphed run saves its learning rate as a tensor (and AdamW as capturable):
    an eager CPU run resumes from it, exactly as from its own checkpoint."""
    cfg = _small_cfg(**{"train.optimizer": optimizer, "train.lr": 0.01 if optimizer == "adamw" else 0.1})
    full = Trainer(cfg, tmp_path / "full").fit()
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.fit(stop_after=1)
    state = _state(trainer.checkpoint_path)
    for group in state["optimizer"]["param_groups"]:
        group["lr"] = torch.tensor(group["lr"], dtype=torch.float32)
        if optimizer == "adamw":
            group["capturable"] = True
    if optimizer == "adamw":
        assert all("step" in st for st in state["optimizer"]["state"].values())
    torch.save(state, trainer.checkpoint_path)

    resumed_trainer = Trainer(cfg, tmp_path / "run")
    resumed = resumed_trainer.fit()
    assert resumed.resumed_from_epoch == 1
    assert all(math.isfinite(row["loss"]) for row in resumed.history)
    for group in resumed_trainer.optimizer.param_groups:
        assert isinstance(group["lr"], float)
        assert not group.get("capturable", False)
    a, b = _state(full.student_path), _state(resumed.student_path)
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- unreadable last.pt


def _tensor_file(path):
    torch.save(torch.zeros(3), path)


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def _pickle_with_code(path):
    import pickle

    path.write_bytes(pickle.dumps({"epoch": 1, "method": _RunsCode()}, protocol=2))  # torch.save's protocol


@pytest.mark.parametrize(("write", "says"), [
    pytest.param(lambda p: p.write_bytes(os.urandom(2048)), "corrupt", id="garbage"),
    pytest.param(lambda p: p.write_bytes(p.read_bytes()[:4000]), "corrupt or unreadable", id="truncated"),
    pytest.param(lambda p: p.write_bytes(b""), "corrupt or unreadable", id="empty"),
    pytest.param(_tensor_file, "not a bkdsearch run checkpoint", id="not-a-run-checkpoint"),
    pytest.param(_pickle_with_code, "would run code", id="pickle-with-code"),
])
def test_unreadable_last_pt_is_a_clear_checkpoint_error(write, says, tmp_path, capsys):
    cfg = _small_cfg(**{"train.epochs": 1})
    Trainer(cfg, tmp_path).fit(stop_after=1)
    path = tmp_path / "last.pt"
    write(path)
    with pytest.raises(CheckpointError, match="--no-resume") as info:
        Trainer(cfg, tmp_path).fit(resume=True)
    assert str(path) in str(info.value) and says in str(info.value)
    assert isinstance(info.value, WeightsError)  # bad input: the CLI exits 2
    assert "this must never run" not in capsys.readouterr().out


def test_cli_train_with_a_corrupt_last_pt_exits_2_naming_the_file(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from bkdsearch.cli import main

    monkeypatch.chdir(tmp_path)
    spec = copy.deepcopy(TINY_SPEC)
    spec["method"] = "ce"
    spec["data"]["synthetic"].update(train_size=128, test_size=64)
    spec["train"]["epochs"] = 1
    path = write_spec(tmp_path / "spec.yaml", spec)
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"\x00garbage" * 100)
    result = CliRunner().invoke(main, ["train", path, "--out", str(out)])
    text = result.output + (result.stderr or "")
    assert result.exit_code == 2, text
    assert str(out / "last.pt") in text and "--no-resume" in text
    assert "Traceback" not in text
    # The advice works.
    result = CliRunner().invoke(main, ["train", path, "--out", str(out), "--no-resume"])
    assert result.exit_code == 0, result.output
    assert _state(out / "last.pt")["epoch"] == 1


# --------------------------------------------------------------------------- DKD warm-up


def _dkd_cfg(**overrides):
    """TINY_SPEC's DKD run on a small training set (7 steps per epoch)."""
    spec = copy.deepcopy(TINY_SPEC)
    spec["method"] = "dkd"
    spec["data"]["synthetic"].update(train_size=256, test_size=64)
    return resolve(Spec.model_validate(spec), Defaults(overrides), overrides=overrides)


def _scales(trainer):
    """An on_epoch callback recording the method's DKD factor each epoch, and its list."""
    seen = []
    trainer.on_epoch = lambda epoch, row: seen.append((epoch, trainer.method.warmup.scale.item()))
    return seen


def test_dkd_warmup_factor_is_set_for_every_epoch(teacher_ckpt, tmp_path):
    cfg = _dkd_cfg(**{"train.epochs": 6, "blockkd.dkd_warmup": 4})
    trainer = Trainer(cfg, tmp_path, teacher_weights=teacher_ckpt)
    seen = _scales(trainer)
    trainer.fit()
    assert seen == [(1, 0.25), (2, 0.5), (3, 0.75), (4, 1.0), (5, 1.0), (6, 1.0)]


def _first_losses(method, epochs):
    """Wrap ``method.forward``: keep (batch, teacher logits, StepOut) of the first step of
    each epoch in ``epochs`` (counted by the hook)."""
    kept, epoch = {}, [0]
    forward, start_epoch = method.forward, method.start_epoch

    def on_start(e):
        epoch[0] = e
        start_epoch(e)

    def spy(x, y):
        out = forward(x, y)
        if epoch[0] in epochs and epoch[0] not in kept:
            kept[epoch[0]] = (x.clone(), y.clone(), method._teacher_logits(x), out)
        return out

    method.forward, method.start_epoch = spy, on_start
    return kept


def test_dkd_warmup_scales_the_dkd_part_of_the_loss(teacher_ckpt, tmp_path):
    from bkdsearch.core.recipe.losses import dkd_loss

    cfg = _dkd_cfg(**{"train.epochs": 2, "blockkd.dkd_warmup": 4, "blockkd.beta": 2.0})
    trainer = Trainer(cfg, tmp_path, teacher_weights=teacher_ckpt)
    kept = _first_losses(trainer.method, {1, 2})
    trainer.fit()
    loss = cfg.loss
    for epoch, factor in ((1, 0.25), (2, 0.5)):
        x, y, t, out = kept[epoch]
        ce = torch.nn.functional.cross_entropy(out.logits.float(), y)
        dkd = dkd_loss(out.logits, t, y, loss.tau, loss.dkd_alpha, loss.dkd_beta)
        assert out.loss.item() == pytest.approx((loss.alpha * ce + loss.beta * factor * dkd).item(), rel=1e-6)
        assert out.loss.item() != pytest.approx((loss.alpha * ce + loss.beta * dkd).item(), rel=1e-3)


def test_blockkd_dkd_warmup_scales_the_dkd_terms_only(teacher_ckpt):
    from bkdsearch.core.engine.trainer import build_method_for
    from bkdsearch.core.recipe.losses import blockkd_loss, dkd_loss, kd_loss

    cfg = _cfg(**{"blockkd.logit_loss": "dkd", "blockkd.dkd_warmup": 4, "blockkd.gamma": 0.5})
    method = build_method_for(cfg, 10, (3, 32, 32), teacher_ckpt).eval()  # eval: repeatable forwards
    x, y = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.arange(8)
    stones = method._stones[0](x)
    loss = cfg.loss
    parts = blockkd_loss(stones.student, stones.teacher, stones.stones, method.weights, y, alpha=loss.alpha,
                         beta=loss.beta, gamma=loss.gamma, tau=loss.tau,
                         logit_loss=lambda s, t, y: dkd_loss(s, t, y, loss.tau, loss.dkd_alpha, loss.dkd_beta))
    for epoch, factor in ((1, 0.25), (3, 0.75), (4, 1.0)):
        method.start_epoch(epoch)
        expected = loss.alpha * parts.ce + loss.beta * factor * parts.kd + loss.gamma * parts.ensemble
        assert method(x, y).loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # A KL logit loss is never ramped, whatever dkd_warmup says.
    kl = build_method_for(cfg.model_copy(update={"loss": loss.model_copy(update={"logit_loss": "kl"})}),
                          10, (3, 32, 32), teacher_ckpt).eval()
    kl.start_epoch(1)
    stones = kl._stones[0](x)
    unramped = blockkd_loss(stones.student, stones.teacher, stones.stones, kl.weights, y, alpha=loss.alpha,
                            beta=loss.beta, gamma=loss.gamma, tau=loss.tau,
                            logit_loss=lambda s, t, y: kd_loss(s, t, loss.tau))
    assert kl(x, y).loss.item() == pytest.approx(unramped.total.item(), rel=1e-6)


@pytest.mark.parametrize("method", ["dkd", "blockkd"])
def test_dkd_warmup_zero_is_bit_identical_to_the_unramped_loss(method, teacher_ckpt, tmp_path, monkeypatch):
    """dkd_warmup 0 (also when not set) trains exactly as the loss did before warm-up existed."""
    from bkdsearch.core.recipe import methods
    from bkdsearch.core.recipe.losses import dkd_loss

    extra = {"blockkd.logit_loss": "dkd"} if method == "blockkd" else {}
    cfg = _dkd_cfg(method=method, **{"train.epochs": 1}, **extra)
    assert _dkd_cfg(method=method, **{"train.epochs": 1, "blockkd.dkd_warmup": 0}, **extra) == cfg
    run = Trainer(cfg, tmp_path / "run", teacher_weights=teacher_ckpt).fit()

    # The reference: the loss without any warm-up factor.
    def dkd_forward(self, x, y):
        logits = self.student(x)
        t = self._teacher_logits(x)
        loss = self.alpha * torch.nn.functional.cross_entropy(logits.float(), y) + self.beta * dkd_loss(
            logits, t, y, self.tau, self.dkd_alpha, self.dkd_beta)
        return methods.StepOut(loss, logits, {})

    unscaled = methods.blockkd_loss
    monkeypatch.setattr(methods.DKD, "forward", dkd_forward)
    monkeypatch.setattr(methods, "blockkd_loss", lambda *a, logit_scale, **kw: unscaled(*a, **kw))
    ref = Trainer(cfg, tmp_path / "ref", teacher_weights=teacher_ckpt).fit()
    a, b = _state(run.student_path), _state(ref.student_path)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resumed_run_gets_the_same_dkd_factor(teacher_ckpt, tmp_path):
    cfg = _dkd_cfg(**{"train.epochs": 4, "blockkd.dkd_warmup": 4})
    full_trainer = Trainer(cfg, tmp_path / "full", teacher_weights=teacher_ckpt)
    full_seen = _scales(full_trainer)
    full = full_trainer.fit()
    Trainer(cfg, tmp_path / "run", teacher_weights=teacher_ckpt).fit(stop_after=2)
    # A fresh process builds a new Trainer, whose method starts at factor 1.
    trainer = Trainer(cfg, tmp_path / "run", teacher_weights=teacher_ckpt)
    seen = _scales(trainer)
    resumed = trainer.fit()
    assert resumed.resumed_from_epoch == 2
    assert full_seen == [(1, 0.25), (2, 0.5), (3, 0.75), (4, 1.0)]
    assert seen == full_seen[2:]
    a, b = _state(full.student_path), _state(resumed.student_path)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_exported_script_warms_dkd_up_like_train(teacher_ckpt, tmp_path):
    import subprocess
    import sys

    from bkdsearch.export import render_script

    cfg = _dkd_cfg(**{"train.epochs": 2, "blockkd.dkd_warmup": 4})
    script = tmp_path / "train.py"
    script.write_text(render_script(cfg, {"study": "test"}))
    r = subprocess.run([sys.executable, str(script), "--teacher-checkpoint", teacher_ckpt, "--device", "cpu",
                        "--out", str(tmp_path / "exported"), "--val-fraction", str(cfg.data.val_fraction)],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd="/",
                       timeout=600)
    assert r.returncode == 0, r.stderr
    trained = Trainer(cfg, tmp_path / "trained", teacher_weights=teacher_ckpt).fit()
    a, b = _state(tmp_path / "exported" / "student.pt"), _state(trained.student_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
