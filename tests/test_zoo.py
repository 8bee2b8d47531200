"""Model zoo: upstream-compatible state dicts, and atoms that reproduce forward exactly."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from bkdsearch import zoo
from bkdsearch.zoo import (
    atom_shapes,
    create_model,
    decompose,
    list_models,
    load_weights,
    model_entry,
)

COMPAT = json.loads((Path(__file__).parent / "data" / "cifar_state_dicts.json").read_text())
CIFAR_NAMES = sorted(COMPAT)
IMAGENET_NAMES = ["mobilenet_v2", "resnet18", "resnet34", "resnet50"]
# torchvision's models accept any input of at least 32 px; 64 px keeps the tests fast while
# leaving 2x2 maps at the end for train-mode BN.
IMAGENET_TEST_SIZE = (3, 64, 64)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Batches here are tiny: one intra-op thread is faster, and does not collapse when
    another process holds a core (OpenMP threads wait for each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _test_input_size(name: str) -> tuple[int, int, int]:
    entry = model_entry(name)
    return IMAGENET_TEST_SIZE if entry.family == "imagenet" else entry.input_size


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN weight, bias and statistic (and every other bias) a non-default value,
    so that a skipped or reordered BN, or a buffer that fails to load, changes the outputs.
    Weight tensors keep their random initialisation, which keeps activations in range."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + 1.0)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


@functools.cache
def _randomized(name: str) -> nn.Module:
    torch.manual_seed(0)
    return _randomize(create_model(name, num_classes=10))


def _atoms_then_head(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    dec = decompose(model)
    for name, atom in dec.atoms:
        before = x.clone()
        out = atom(x)
        # Atom outputs feed several consumers (teacher suffix, connectors): none may be
        # modified in place by the next atom.
        assert torch.equal(x, before), f"atom {name} modified its input in place"
        x = out
    return dec.head(x)


# --- upstream compatibility (CIFAR) -----------------------------------------------------


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_cifar_state_dict_matches_upstream(name: str) -> None:
    ref = COMPAT[name]
    model = create_model(name, num_classes=100)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(got) == list(ref["state_dict"]), "state dict keys (or their order) differ"
    assert got == ref["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == ref["num_parameters"]

    shapes = dict(atom_shapes(model, model_entry(name).input_size))
    features = [list(shapes[a]) for a in zoo.stage_ends(model)]
    assert features == ref["feature_shapes"]

    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(2, *model_entry(name).input_size))
    assert list(logits.shape) == [2, *ref["logits_shape"]]


def test_compat_file_names_are_registered_cifar_models() -> None:
    assert set(CIFAR_NAMES) <= set(list_models("cifar"))
    assert all(model_entry(n).input_size == (3, 32, 32) for n in CIFAR_NAMES)
    assert list_models("imagenet") == IMAGENET_NAMES


def test_upstream_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = _randomize(create_model("wrn_16_2", num_classes=100)).eval()
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": source.state_dict(), "epoch": 240}, path)

    x = torch.randn(2, 3, 32, 32)
    fresh = create_model("wrn_16_2", num_classes=100).eval()
    with torch.no_grad():
        assert not torch.equal(fresh(x), source(x))
        fresh.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)
        assert torch.equal(fresh(x), source(x))
        via_zoo = load_weights(create_model("wrn_16_2", num_classes=100), path).eval()
        assert torch.equal(via_zoo(x), source(x))


# --- atoms ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_atoms_then_head_equal_forward(name: str, mode: str) -> None:
    model = _randomized(name)
    torch.manual_seed(0)
    x = torch.randn(2, *_test_input_size(name))
    # Two copies: train-mode BN updates its running stats on every pass.
    whole, parts = copy.deepcopy(model), copy.deepcopy(model)
    whole.train(mode == "train")
    parts.train(mode == "train")
    with torch.no_grad():
        torch.manual_seed(1)  # torchvision's MobileNetV2 head has dropout
        expected = whole(x)
        torch.manual_seed(1)
        got = _atoms_then_head(parts, x)
    assert expected.shape == (2, 10)
    assert torch.isfinite(expected).all() and expected.std() > 0
    assert torch.equal(got, expected)


@pytest.mark.parametrize("name", list_models())
def test_atoms_are_views_of_the_model(name: str) -> None:
    model = create_model(name, num_classes=10)
    keys = list(model.state_dict())
    dec = decompose(model)
    assert list(model.state_dict()) == keys, "decompose() changed the model's state dict"

    names = dec.names
    assert len(names) == len(set(names)), "atom names are not unique"
    assert names[0] in ("stem", "block0.0", "features.0")
    shapes = atom_shapes(model, _test_input_size(name))
    assert [n for n, _ in shapes] == names
    assert all(len(s) == 3 for _, s in shapes)
    assert set(zoo.stage_ends(model)) <= set(names)

    # Together the atoms and the head hold exactly the model's parameters and buffers,
    # as children: .train()/.eval()/.to() on a block built from atoms reaches them.
    def held(attr: str) -> set[int]:
        modules = [m for _, m in dec.atoms] + [dec.head]
        return {id(t) for m in modules for t in getattr(m, attr)()}

    assert held("parameters") == {id(p) for p in model.parameters()}
    assert held("buffers") == {id(b) for b in model.buffers()}


EXPECTED_ATOMS = {
    "resnet8": ["stem", "layer1.0", "layer2.0", "layer3.0"],
    "wrn_16_2": ["stem"] + [f"block{b}.layer.{i}" for b in (1, 2, 3) for i in (0, 1)],
    "vgg8": ["block0.0", "block1.0", "block2.0", "block3.0", "block4.0"],
    "vgg13": [f"block{b}.{i}" for b in range(5) for i in (0, 3)],
    "MobileNetV2": ["stem"]
    + [f"blocks.{i}.{j}" for i, n in enumerate([1, 2, 3, 4, 3, 3, 1]) for j in range(n)]
    + ["conv2"],
    "ShuffleV1": ["stem"] + [f"layer{s}.{i}" for s, n in ((1, 4), (2, 8), (3, 4)) for i in range(n)],
    "ShuffleV2": ["stem"]
    + [f"layer{s}.{i}" for s, n in ((1, 4), (2, 8), (3, 4)) for i in range(n)]
    + ["conv2"],
    "ResNet50": ["stem"]
    + [f"layer{s}.{i}" for s, n in ((1, 3), (2, 4), (3, 6), (4, 3)) for i in range(n)],
    "resnet18": ["stem"] + [f"layer{s}.{i}" for s in (1, 2, 3, 4) for i in (0, 1)],
    "mobilenet_v2": [f"features.{i}" for i in range(19)],
}


@pytest.mark.parametrize("name", sorted(EXPECTED_ATOMS))
def test_atom_names(name: str) -> None:
    assert decompose(create_model(name, num_classes=10)).names == EXPECTED_ATOMS[name]


def test_resnet110_atoms_follow_state_dict_prefixes() -> None:
    names = decompose(create_model("resnet110")).names
    assert names == ["stem"] + [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(18)]


@pytest.mark.parametrize(
    ("name", "ends"),
    [
        ("resnet110", ["stem", "layer1.17", "layer2.17", "layer3.17"]),
        ("resnet32x4", ["stem", "layer1.4", "layer2.4", "layer3.4"]),
        ("wrn_40_2", ["stem", "block1.layer.5", "block2.layer.5", "block3.layer.5"]),
        ("vgg13", ["block0.3", "block1.3", "block2.3", "block3.3", "block4.3"]),
        ("MobileNetV2", ["stem", "blocks.1.1", "blocks.2.2", "blocks.4.2", "blocks.6.0"]),
        ("ShuffleV2", ["stem", "layer1.3", "layer2.7", "layer3.3"]),
        ("ResNet50", ["stem", "layer1.2", "layer2.3", "layer3.5", "layer4.2"]),
        ("resnet34", ["stem", "layer1.2", "layer2.3", "layer3.5", "layer4.2"]),
        ("mobilenet_v2", ["features.0", "features.3", "features.6", "features.13", "features.17"]),
    ],
)
def test_stage_ends(name: str, ends: list[str]) -> None:
    assert zoo.stage_ends(create_model(name)) == ends


def test_imagenet_stage_shapes() -> None:
    model = create_model("resnet50", num_classes=1000)
    shapes = dict(atom_shapes(model, (3, 224, 224)))
    got = [shapes[a] for a in zoo.stage_ends(model)]
    assert got == [(64, 56, 56), (256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]
    assert model_entry("resnet50").input_size == (3, 224, 224)


def test_decompose_rejects_foreign_models() -> None:
    with pytest.raises(TypeError, match="Linear"):
        decompose(nn.Linear(2, 2))


# --- behaviour that the state-dict comparison cannot see ---------------------------------


def test_vgg_pool3_only_for_64px_inputs() -> None:
    model = create_model("vgg13").eval()
    at32 = dict(atom_shapes(model, (3, 32, 32)))
    at64 = dict(atom_shapes(model, (3, 64, 64)))
    assert at32["block3.3"] == (512, 4, 4) and at32["block4.3"] == (512, 4, 4)
    # Upstream pools before block4 only for 64 px inputs: 8x8 -> 4x4.
    assert at64["block3.3"] == (512, 8, 8) and at64["block4.3"] == (512, 4, 4)
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64)
        assert torch.equal(_atoms_then_head(model, x), model(x))


def test_channel_shuffle_interleaves_groups() -> None:
    from bkdsearch.core.recipe.zoo.shufflenet import channel_shuffle

    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]


def test_shufflev2_unit_passes_first_half_through() -> None:
    model = _randomize(create_model("ShuffleV2")).eval()
    unit = model.layer1[1]
    x = torch.randn(1, 116, 8, 8)
    with torch.no_grad():
        out = unit(x)
    # The untouched half lands on the even channels after the 2-group shuffle.
    assert torch.equal(out[:, 0::2], x[:, :58])


def test_shufflev1_downsampling_unit_concatenates_pooled_input() -> None:
    model = _randomize(create_model("ShuffleV1")).eval()
    unit = model.layer2[0]  # 240 -> 480 channels: 240 computed, then the pooled input
    x = torch.randn(1, 240, 8, 8)
    with torch.no_grad():
        out = unit(x)
    pooled = nn.functional.avg_pool2d(x, 3, stride=2, padding=1)
    assert torch.equal(out[:, 240:], torch.relu(pooled))
    # The stem has too few channels for grouped 1x1 convs: the first unit uses one group.
    assert model.layer1[0].conv1.groups == 1 and model.layer1[1].conv1.groups == 3


def test_wrn_projection_block_preactivates_its_shortcut() -> None:
    model = _randomize(create_model("wrn_16_2")).eval()
    block = model.block2.layer[0]  # 32 -> 64 channels, stride 2
    x = torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        act = torch.relu(block.bn1(x))
        expected = block.convShortcut(act) + block.conv2(torch.relu(block.bn2(block.conv1(act))))
        assert torch.allclose(block(x), expected)
        identity = model.block2.layer[1]
        y = torch.randn(1, 64, 4, 4)
        act = torch.relu(identity.bn1(y))
        expected = y + identity.conv2(torch.relu(identity.bn2(identity.conv1(act))))
        assert torch.allclose(identity(y), expected)


@pytest.mark.parametrize("name", ["resnet32", "wrn_16_1", "vgg8", "MobileNetV2", "ResNet50"])
def test_upstream_initialisation(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() >= 4096]
    for conv in convs:
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        std = conv.weight.std().item()
        assert abs(std - (2.0 / fan_out) ** 0.5) < 0.15 * (2.0 / fan_out) ** 0.5
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)



def _upstream_vgg_init(model: nn.Module) -> None:
    """RepDistiller's loop in VGG and MobileNetV2 (``_initialize_weights``), verbatim."""
    import math

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / n))
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear):
            m.weight.data.normal_(0, 0.01)
            m.bias.data.zero_()


@pytest.mark.parametrize("name", ["vgg8", "vgg13", "MobileNetV2"])
def test_vgg_style_init_is_upstreams_loop_bit_for_bit(name: str) -> None:
    from bkdsearch.core.recipe.zoo.atoms import init_vgg_style

    torch.manual_seed(0)
    model = create_model(name)
    reference = copy.deepcopy(model)
    torch.manual_seed(1)
    init_vgg_style(model)
    torch.manual_seed(1)
    _upstream_vgg_init(reference)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


# --- registry ------------------------------------------------------------------------------


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(KeyError) as info:
        create_model("resnet9000")
    message = str(info.value)
    assert "resnet9000" in message
    assert all(n in message for n in ("resnet110", "wrn_40_2", "ShuffleV2", "resnet18"))


@pytest.mark.parametrize("name", ["resnet8", "vgg8", "MobileNetV2", "ShuffleV1", "resnet18"])
def test_num_classes_respected(name: str) -> None:
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(1, *_test_input_size(name))).shape == (1, 7)
