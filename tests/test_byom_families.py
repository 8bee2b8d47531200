"""Cuts found by tracing across timm's families (issue 22): every stage cut recomposes the model
exactly, and a Block-KD step through layout connectors trains the student and the connectors
only, with the family on either side (its layout as the connector's source and destination).

The families run at a small input size with ``pretrained=False``; three layouts (NHWC, tokens
with two prefix tokens, tokens without) run in the fast suite, the rest are marked slow.
"""

from __future__ import annotations

import pytest
import timm
import torch

from bkdsearch.core.recipe.losses import blockkd_loss, kd_loss, stone_weights
from bkdsearch.core.recipe.partitions import Partition
from bkdsearch.core.recipe.traced import TracedNet, trace
from bkdsearch.core.recipe.traced_stones import TracedStones

VIT = {"img_size": 32, "patch_size": 4, "depth": 2}
FAST = {
    "swin_tiny_patch4_window7_224": {"img_size": 32, "window_size": 2, "depths": (1, 1, 1, 1)},  # NHWC
    "deit_tiny_distilled_patch16_224": VIT,  # tokens after CLS and distillation tokens
    "levit_128s": {"img_size": 32},  # tokens without prefix, grids 2 -> 1 -> 1
}
SLOW = {
    "resnet18": {}, "mobilenetv3_small_050": {}, "mobilenetv2_050": {}, "mobilenetv4_conv_small": {},
    "efficientnet_b0": {}, "convnext_atto": {}, "regnetx_002": {}, "ghostnet_050": {}, "repvit_m0_9": {},
    "rexnet_100": {}, "hgnetv2_b0": {}, "dla34": {}, "mobilevit_xxs": {}, "edgenext_xx_small": {},
    "pvt_v2_b0": {}, "mambaout_femto": {}, "fastvit_t8": {}, "starnet_s1": {},
    "vit_tiny_patch16_224": VIT, "cait_xxs24_224": VIT, "eva02_tiny_patch14_224": {"img_size": 28, "depth": 2},
    "coatnet_nano_rw_224": {"img_size": 64},
}
FAMILIES = [pytest.param(name, kw, id=name) for name, kw in FAST.items()] + \
    [pytest.param(name, kw, id=name, marks=pytest.mark.slow) for name, kw in SLOW.items()]


def _size(kwargs: dict) -> tuple[int, int, int]:
    return (3, kwargs.get("img_size", 32), kwargs.get("img_size", 32))


def _step(teacher: TracedNet, student: TracedNet, t_cut: str, s_cut: str, size: tuple[int, int, int]) -> None:
    """One Block-KD step (shallow_first, both stones) with the existing loss; checks who got
    gradients and that the teacher's state (BN/LN statistics and weights) did not move."""
    stones = TracedStones(teacher, student, Partition((t_cut,), (s_cut,))).train()
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    out = stones(torch.randn(4, *size))
    target = torch.randint(0, 10, (4,))
    loss = blockkd_loss(out.student, out.teacher, out.stones, stone_weights("shallow_first", stones.active, 2, 0.5),
                        target, alpha=1.0, beta=1.0, gamma=1.0, tau=4.0,
                        logit_loss=lambda s, t, _y: kd_loss(s, t, 4.0))
    loss.total.backward()
    assert torch.isfinite(loss.total)
    assert all(p.grad is None for p in teacher.model.parameters())
    connector_params = list(stones.connectors.parameters())
    assert connector_params and all(p.grad is not None for p in connector_params)
    student_params = [p for p in student.model.parameters() if p.requires_grad]
    assert sum(p.grad is not None for p in student_params) >= 0.9 * len(student_params)
    assert all(torch.equal(before[k], v) for k, v in teacher.model.state_dict().items())


@pytest.mark.parametrize(("name", "kwargs"), FAMILIES)
def test_every_stage_cut_recomposes_exactly_and_a_blockkd_step_trains_only_the_student(name, kwargs) -> None:
    torch.manual_seed(0)
    size = _size(kwargs)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    net = trace(model, size, f"timm:{name}")
    inner = net.stage_ends[:-1]
    assert inner, f"{name}: no stage end before the body's end ({net.stage_ends})"
    x = torch.randn(2, *size)
    model.eval()
    with torch.no_grad():
        want = model(x)
        for stage_end in inner:
            (first, second), head = net.split([stage_end])
            assert torch.equal(head(second(first(x))), want), stage_end
    cnn = trace(timm.create_model("resnet10t", num_classes=10), size, "resnet10t")
    middle = inner[(len(inner) - 1) // 2]
    _step(net, cnn, middle, "layer1", size)  # the family's layout as the connector's destination
    cnn_teacher = trace(timm.create_model("resnet10t", num_classes=10), size, "resnet10t")
    _step(cnn_teacher, net, "layer1", middle, size)  # ... and as its source
