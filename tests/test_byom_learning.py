"""Block-KD learns across architectures and layouts (issue 22): CNN -> CNN, ViT -> ViT of
another width, and a CNN student distilled from a ViT teacher, one short epoch each on a tiny
synthetic task, reach well above chance on held-out images; the teacher never changes."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from bkdsearch.core.recipe.losses import blockkd_loss, kd_loss, stone_weights
from bkdsearch.core.recipe.traced import trace
from bkdsearch.core.recipe.traced_stones import TracedStones, traced_partition

CLASSES = 4
SIZE = (3, 32, 32)


def _colours(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images whose class is the colour cast of a random blob (chance: 1/4)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    casts = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0], [1.0, 1.0, -1.0]])
    x = torch.randn(n, *SIZE, generator=g)
    corners = torch.randint(0, 16, (n, 2), generator=g)
    for i, k in enumerate(y.tolist()):
        r, c = corners[i].tolist()
        x[i, :, r: r + 16, c: c + 16] += 0.5 * casts[k][:, None, None]
    return x, y


def _vit(width: int, depth: int) -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=width, depth=depth,
                             num_heads=2, num_classes=CLASSES)


def _fit(model: nn.Module) -> None:
    """One epoch of plain cross-entropy on the task."""
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    x, y = _colours(512, seed=3)
    for start in range(0, len(x), 32):
        loss = nn.functional.cross_entropy(model(x[start:start + 32]), y[start:start + 32])
        opt.zero_grad()
        loss.backward()
        opt.step()


PAIRS = {
    "cnn_to_cnn": (lambda: timm.create_model("resnet14t", num_classes=CLASSES),
                   lambda: timm.create_model("resnet10t", num_classes=CLASSES)),
    "vit_to_vit": (lambda: _vit(96, 4), lambda: _vit(48, 2)),
    "vit_to_cnn": (lambda: _vit(96, 4), lambda: timm.create_model("resnet10t", num_classes=CLASSES)),
}


@pytest.mark.parametrize("pair", list(PAIRS))
def test_one_epoch_of_blockkd_learns_above_chance(pair: str) -> None:
    torch.manual_seed(0)
    make_teacher, make_student = PAIRS[pair]
    teacher, student = make_teacher(), make_student()
    _fit(teacher)  # a teacher that knows the task: the stones then carry its knowledge
    t_net, s_net = trace(teacher, SIZE, "teacher"), trace(student, SIZE, "student")
    stones = TracedStones(t_net, s_net, traced_partition(t_net, s_net, {"uniform": 2})).train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    opt = torch.optim.AdamW([*student.parameters(), *stones.connectors.parameters()], lr=2e-3)
    weights = stone_weights("shallow_first", stones.active, stones.num_blocks, 0.5)
    x, y = _colours(512, seed=1)
    for start in range(0, len(x), 32):
        out = stones(x[start:start + 32])
        loss = blockkd_loss(out.student, out.teacher, out.stones, weights, y[start:start + 32], alpha=1.0,
                            beta=0.5, gamma=0.0, tau=4.0, logit_loss=lambda s, t, _y: kd_loss(s, t, 4.0))
        opt.zero_grad()
        loss.total.backward()
        opt.step()
    x_test, y_test = _colours(256, seed=2)
    student.eval()
    with torch.no_grad():
        accuracy = (student(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy > 0.5, f"{pair}: accuracy {accuracy:.2f} (chance 0.25)"
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
