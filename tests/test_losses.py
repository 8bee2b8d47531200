"""Losses against hand computations of their published definitions."""

import math

import pytest
import torch
import torch.nn.functional as F

from bkdsearch.core.recipe.losses import (
    blockkd_loss,
    dkd_loss,
    dkd_warmup_factor,
    kd_loss,
    stone_weights,
)


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def _softmax(v: list[float], tau: float = 1.0) -> list[float]:
    e = [math.exp(x / tau) for x in v]
    return [x / sum(e) for x in e]


def test_kd_matches_hand_computation():
    s = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    t = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    tau = 2.0
    expected = sum(_kl(_softmax(ti, tau), _softmax(si, tau)) for si, ti in zip(s, t, strict=True)) / 2 * tau**2
    got = kd_loss(torch.tensor(s), torch.tensor(t), tau).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert kd_loss(torch.tensor(t), torch.tensor(t), tau).item() == pytest.approx(0.0, abs=1e-7)


def test_dkd_worked_example():
    # One sample, 3 classes, target 0, tau 1: TCKD on (p_gt, 1-p_gt), NCKD on classes {1,2}.
    s, t, tau = [1.0, 2.0, 0.0], [3.0, 1.0, 0.5], 1.0
    ps, pt = _softmax(s), _softmax(t)
    tckd = _kl([pt[0], 1 - pt[0]], [ps[0], 1 - ps[0]])
    nckd = _kl(_softmax(t[1:]), _softmax(s[1:]))
    alpha, beta = 1.0, 8.0
    got = dkd_loss(torch.tensor([s]), torch.tensor([t]), torch.tensor([0]), tau, alpha, beta).item()
    assert got == pytest.approx(alpha * tckd + beta * nckd, rel=1e-5)
    # Temperature scales logits and multiplies by tau^2.
    tau = 3.0
    ps, pt = _softmax(s, tau), _softmax(t, tau)
    tckd = _kl([pt[0], 1 - pt[0]], [ps[0], 1 - ps[0]])
    nckd = _kl(_softmax(t[1:], tau), _softmax(s[1:], tau))
    got = dkd_loss(torch.tensor([s]), torch.tensor([t]), torch.tensor([0]), tau, 2.0, 4.0).item()
    assert got == pytest.approx((2.0 * tckd + 4.0 * nckd) * tau**2, rel=1e-5)


def test_stone_weights_follow_teacher_blocks():
    assert stone_weights("shallow_first", [1, 2, 3], 3, 0.5) == [0.25, 0.5, 1.0]
    assert stone_weights("deep_first", [1, 2], 3, 0.5) == [0.5, 0.25]
    with pytest.raises(ValueError):
        stone_weights("sideways", [1], 3, 0.5)


def test_blockkd_total_equals_formula():
    g = torch.Generator().manual_seed(0)
    y_s, y_t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    stones = [torch.randn(4, 5, generator=g) for _ in range(3)]
    target = torch.tensor([0, 1, 2, 3])
    tau, alpha, beta, gamma = 3.0, 0.7, 1.3, 0.4
    w = stone_weights("shallow_first", [1, 2, 3], 3, 0.5)
    got = blockkd_loss(y_s, y_t, stones, w, target, alpha=alpha, beta=beta, gamma=gamma, tau=tau,
                       logit_loss=lambda s, t, _: kd_loss(s, t, tau))

    def kd(a, b):
        pairs = zip(a.tolist(), b.tolist(), strict=True)
        return sum(_kl(_softmax(bi, tau), _softmax(ai, tau)) for ai, bi in pairs) / 4 * tau**2

    ce = F.cross_entropy(y_s, target).item()
    ce += sum(wi * F.cross_entropy(y, target).item() for wi, y in zip(w, stones, strict=True))
    kdt = kd(y_s, y_t) + sum(wi * kd(y, y_t) for wi, y in zip(w, stones, strict=True))
    e = (stones[0] + stones[1] + stones[2]) / 3
    ens = kd(y_s, e) + sum(kd(y, e) for y in stones)
    assert got.ce.item() == pytest.approx(ce, rel=1e-5)
    assert got.kd.item() == pytest.approx(kdt, rel=1e-5)
    assert got.ensemble.item() == pytest.approx(ens, rel=1e-5)
    assert got.total.item() == pytest.approx(alpha * ce + beta * kdt + gamma * ens, rel=1e-5)


def test_ensemble_target_is_detached():
    y_s = torch.randn(2, 3, requires_grad=True)
    stones = [torch.randn(2, 3, requires_grad=True) for _ in range(2)]
    out = blockkd_loss(y_s, torch.randn(2, 3), stones, [1.0, 1.0], torch.tensor([0, 1]),
                       alpha=0.0, beta=0.0, gamma=1.0, tau=1.0, logit_loss=lambda s, t, _: kd_loss(s, t, 1.0))
    out.total.backward()
    # With e detached, the gradient w.r.t. stone 0 comes only from KD(y_0, e): it equals
    # (softmax(y_0) - softmax(e)) / batch.
    e = (stones[0] + stones[1]).detach() / 2
    expected = (F.softmax(stones[0].detach(), 1) - F.softmax(e, 1)) / 2
    assert torch.allclose(stones[0].grad, expected, atol=1e-6)


def test_no_stones_no_ensemble():
    y = torch.randn(2, 3)
    out = blockkd_loss(y, y, [], [], torch.tensor([0, 1]), alpha=1.0, beta=1.0, gamma=1.0, tau=4.0,
                       logit_loss=lambda s, t, _: kd_loss(s, t, 4.0))
    assert out.ensemble.item() == 0.0
    assert out.total.item() == pytest.approx(F.cross_entropy(y, torch.tensor([0, 1])).item(), rel=1e-6)


def test_dkd_warmup_factor_ramps_linearly_from_epoch_one():
    # mdistiller's DKD: min(epoch / warmup, 1) with 1-based epochs.
    assert [dkd_warmup_factor(e, 4) for e in range(1, 7)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert dkd_warmup_factor(1, 20) == 0.05 and dkd_warmup_factor(240, 20) == 1.0
    assert all(dkd_warmup_factor(e, 0) == 1.0 for e in (1, 2, 240))
    for epoch, warmup in ((0, 4), (1, -1)):
        with pytest.raises(ValueError):
            dkd_warmup_factor(epoch, warmup)


def test_logit_scale_multiplies_the_logit_loss_term_only():
    g = torch.Generator().manual_seed(1)
    y_s, y_t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    stones = [torch.randn(4, 5, generator=g) for _ in range(2)]
    target = torch.tensor([0, 1, 2, 3])
    kw = dict(alpha=0.7, beta=1.3, gamma=0.4, tau=3.0, logit_loss=lambda s, t, y: dkd_loss(s, t, y, 3.0, 1.0, 8.0))
    plain = blockkd_loss(y_s, y_t, stones, [0.5, 1.0], target, **kw)
    scale = torch.tensor(0.25)
    scaled = blockkd_loss(y_s, y_t, stones, [0.5, 1.0], target, logit_scale=scale, **kw)
    assert torch.equal(scaled.kd, plain.kd)  # the reported term stays unscaled
    expected = 0.7 * plain.ce + 1.3 * 0.25 * plain.kd + 0.4 * plain.ensemble
    assert scaled.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert scaled.total.item() != pytest.approx(plain.total.item(), rel=1e-3)
    # A scale of one changes no bit: warm-up off is the loss as it always was.
    assert torch.equal(blockkd_loss(y_s, y_t, stones, [0.5, 1.0], target, logit_scale=torch.tensor(1.0), **kw).total,
                       plain.total)


def _mdistiller_dkd(student, teacher, target, tau, alpha, beta):
    """DKD as mdistiller writes it (probability space), evaluated in float64 where nothing
    underflows: the reference."""
    gt = F.one_hot(target, student.shape[1]).double()
    other = 1 - gt
    p_s = F.softmax(student / tau, dim=1)
    p_t = F.softmax(teacher / tau, dim=1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * other).sum(1)], dim=1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * other).sum(1)], dim=1)
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") * tau**2 / target.shape[0]
    p_t2 = F.softmax(teacher / tau - 1000.0 * gt, dim=1)
    log_p_s2 = F.log_softmax(student / tau - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_p_s2, p_t2, reduction="sum") * tau**2 / target.shape[0]
    return alpha * tckd + beta * nckd


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0, 8.0])
def test_dkd_agrees_with_mdistiller_when_the_target_mass_underflows(tau):
    g = torch.Generator().manual_seed(int(tau))
    student = torch.randn(8, 10, generator=g) * 2
    teacher = torch.randn(8, 10, generator=g) * 2
    target = torch.randint(0, 10, (8,), generator=g)
    # A 30-logit gap: the student's target probability is ~e^-30 / tau, below float32's
    # reach at tau 1 once exponentiated and summed.
    student[torch.arange(8), target] -= 30.0
    ours_in = student.clone().requires_grad_(True)
    ref_in = student.double().clone().requires_grad_(True)
    ours = dkd_loss(ours_in, teacher, target, tau, 1.0, 8.0)
    ref = _mdistiller_dkd(ref_in, teacher.double(), target, tau, 1.0, 8.0)
    ours.backward()
    ref.backward()
    assert math.isclose(ours.item(), ref.item(), rel_tol=1e-4)
    assert torch.allclose(ours_in.grad.double(), ref_in.grad, rtol=1e-3, atol=1e-6)
