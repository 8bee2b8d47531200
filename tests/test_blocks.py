"""Partitions, connectors and stepping-stones against hand-built compositions."""

import copy

import pytest
import torch
import torch.nn.functional as F

from bkdsearch.core.recipe.partitions import Partition, per_stage, stage_aligned, uniform
from bkdsearch.core.recipe.stones import SteppingStones, make_connector
from bkdsearch.errors import PartitionError
from bkdsearch.zoo import create_model, decompose

SIZE = (3, 32, 32)


def _pair(t: str, s: str, seed: int = 0):
    torch.manual_seed(seed)
    return create_model(t, num_classes=10), create_model(s, num_classes=10)


def _resnet_stem(m, x):
    return F.relu(m.bn1(m.conv1(x)))


def _resnet_head(m, h):
    return m.fc(torch.flatten(m.avgpool(h), 1))


def test_stage_aligned_matches_design_for_r110_r32():
    t, s = _pair("resnet110", "resnet32")
    part = stage_aligned(t, s, SIZE)
    assert part == Partition(("layer1.17", "layer2.17"), ("layer1.4", "layer2.4"))


@pytest.mark.parametrize("n", range(2, 9))
def test_uniform_partitions_exist_for_every_n(n):
    t, s = _pair("resnet56", "resnet20")
    part = uniform(t, s, n)
    assert part.num_blocks == n
    SteppingStones(t, s, part, input_size=SIZE)  # connectable for every cut


def test_per_stage_refines_stage_aligned():
    t, s = _pair("resnet110", "resnet32")
    base = stage_aligned(t, s, SIZE)
    fine = per_stage(t, s, SIZE, 2)
    assert fine.num_blocks == 6
    assert set(base.teacher) <= set(fine.teacher) and set(base.student) <= set(fine.student)


def test_shallow_first_stones_equal_hand_composition():
    t, s = _pair("resnet56", "resnet20")
    net = SteppingStones(t, s, Partition(("layer1.8", "layer2.8"), ("layer1.2", "layer2.2")),
                         order="shallow_first", input_size=SIZE).eval()
    x = torch.randn(4, *SIZE)
    out = net(x)
    c = net.connectors
    with torch.no_grad():
        f1 = s.layer1(_resnet_stem(s, x))
        f2 = s.layer2(f1)
        f3 = s.layer3(f2)
        expect = [
            _resnet_head(t, t.layer3(t.layer2(c["1"](f1)))),
            _resnet_head(t, t.layer3(c["2"](f2))),
            _resnet_head(t, c["3"](f3)),
        ]
        assert torch.allclose(out.student, _resnet_head(s, f3), atol=1e-5)
        assert torch.allclose(out.teacher, t(x), atol=1e-5)
    for got, want in zip(out.stones, expect, strict=True):
        assert torch.allclose(got, want, atol=1e-5)


def test_deep_first_stones_equal_hand_composition():
    t, s = _pair("resnet56", "resnet20")
    net = SteppingStones(t, s, Partition(("layer1.8", "layer2.8"), ("layer1.2", "layer2.2")),
                         order="deep_first", input_size=SIZE).eval()
    x = torch.randn(4, *SIZE)
    out = net(x)
    c = net.connectors
    assert sorted(c.keys()) == ["1", "2"]
    with torch.no_grad():
        g1 = t.layer1(_resnet_stem(t, x))
        g2 = t.layer2(g1)
        expect = [_resnet_head(s, s.layer3(s.layer2(c["1"](g1)))), _resnet_head(s, s.layer3(c["2"](g2)))]
    for got, want in zip(out.stones, expect, strict=True):
        assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("pair", [("vgg13", "MobileNetV2"), ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "wrn_16_2")])
@pytest.mark.parametrize("order", ["shallow_first", "deep_first"])
def test_heterogeneous_stones_equal_atom_composition(pair, order):
    t, s = _pair(*pair)
    part = stage_aligned(t, s, SIZE)
    net = SteppingStones(t, s, part, order=order, input_size=SIZE).eval()
    td, sd = decompose(t), decompose(s)
    x = torch.randn(2, *SIZE)
    out = net(x)
    first, second = (sd, td) if order == "shallow_first" else (td, sd)
    first_cuts, second_cuts = (part.student, part.teacher) if order == "shallow_first" else (part.teacher, part.student)
    with torch.no_grad():
        for k, i in enumerate(net.active):
            h = x
            stop = first.names.index(first_cuts[i - 1]) + 1 if i <= len(first_cuts) else len(first.atoms)
            for _, m in first.atoms[:stop]:
                h = m(h)
            h = net.connectors[str(i)](h)
            start = second.names.index(second_cuts[i - 1]) + 1 if i <= len(second_cuts) else len(second.atoms)
            for _, m in second.atoms[start:]:
                h = m(h)
            assert torch.allclose(out.stones[k], second.head(h), atol=1e-4)


def test_teacher_frozen_and_gradients_route_correctly():
    t, s = _pair("resnet20", "resnet8")
    t_before = copy.deepcopy(t.state_dict())
    part = Partition(("layer1.2", "layer2.2"), ("layer1.0", "layer2.0"))
    net = SteppingStones(t, s, part, order="shallow_first", input_size=SIZE).train()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    x, y = torch.randn(8, *SIZE), torch.randint(0, 10, (8,))
    for _ in range(3):
        out = net(x)
        loss = F.cross_entropy(out.student, y) + sum(F.cross_entropy(z, y) for z in out.stones)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not t.training
    for k, v in t.state_dict().items():
        assert torch.equal(v, t_before[k]), k
    assert all(p.grad is None for p in t.parameters())

    # Stone 1 alone: gradient reaches student block 1 (stem, layer1) only, and connector 1 only.
    net.zero_grad(set_to_none=True)
    out = net(x)
    out.stones[0].sum().backward()
    assert s.conv1.weight.grad is not None and s.layer1[0].conv1.weight.grad is not None
    assert s.layer2[0].conv1.weight.grad is None and s.layer3[0].conv1.weight.grad is None
    assert s.fc.weight.grad is None
    assert net.connectors["1"][0].weight.grad is not None
    assert net.connectors["2"][0].weight.grad is None and net.connectors["3"][0].weight.grad is None

    net.zero_grad(set_to_none=True)
    out = net(x)
    out.stones[1].sum().backward()
    assert s.layer2[0].conv1.weight.grad is not None and s.layer3[0].conv1.weight.grad is None
    assert net.connectors["1"][0].weight.grad is None and net.connectors["2"][0].weight.grad is not None


def test_subset_of_stones():
    t, s = _pair("resnet20", "resnet8")
    net = SteppingStones(t, s, stage_aligned(t, s, SIZE), active=[2], input_size=SIZE)
    assert list(net.connectors.keys()) == ["2"]
    assert len(net(torch.randn(2, *SIZE)).stones) == 1
    with pytest.raises(PartitionError, match="do not exist"):
        SteppingStones(t, s, stage_aligned(t, s, SIZE), order="deep_first", active=[3], input_size=SIZE)


def test_impossible_partitions_are_rejected_with_shapes():
    t, s = _pair("resnet20", "resnet8")
    with pytest.raises(PartitionError, match="no atom 'layer9.0'"):
        SteppingStones(t, s, Partition(("layer9.0",), ("layer1.0",)), input_size=SIZE)
    with pytest.raises(PartitionError, match="in network order"):
        SteppingStones(t, s, Partition(("layer2.0", "layer1.0"), ("layer1.0", "layer2.0")), input_size=SIZE)
    with pytest.raises(PartitionError, match=r"identity.*\(16, 32, 32\)"):
        SteppingStones(t, s, Partition(("layer1.2",), ("layer2.0",)), connector="identity", input_size=SIZE)


def test_connector_resampling():
    down = make_connector("conv1x1", (16, 32, 32), (64, 8, 8))
    up = make_connector("conv3x3", (160, 2, 2), (512, 4, 4))
    assert down(torch.randn(2, 16, 32, 32)).shape == (2, 64, 8, 8)
    assert up(torch.randn(2, 160, 2, 2)).shape == (2, 512, 4, 4)
    with pytest.raises(PartitionError, match="integer factor"):
        make_connector("conv1x1", (16, 7, 7), (16, 4, 4))
