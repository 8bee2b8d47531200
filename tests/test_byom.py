"""Bring your own model (issue 22): naming timm / torchvision / user models, cuts found by
tracing, the blocks: fallback, layout-aware connectors, and each bad input's clear error."""

from __future__ import annotations

import os
import sys
import time

import pytest
import timm
import torch
import torchvision
from torch import nn

from bkdsearch.core.engine.external import TIMM_EXTRA, ModelSourceError
from bkdsearch.core.recipe.chained import ChainedNet
from bkdsearch.core.recipe.errors import BadInput, PartitionError, WeightsError
from bkdsearch.core.recipe.layouts import Layout, infer_layout, make_layout_connector
from bkdsearch.core.recipe.partitions import Partition
from bkdsearch.core.recipe.traced import TraceFailure, trace
from bkdsearch.core.recipe.traced_stones import TracedStones, traced_partition
from bkdsearch.zoo import create_model

# -- naming models ---------------------------------------------------------------------------

def test_timm_and_torchvision_names_build_the_sources_own_models_with_their_state_dicts() -> None:
    model = create_model("timm:resnet18", 7)
    assert type(model).__module__.startswith("timm.") and model.fc.out_features == 7
    assert set(model.state_dict()) == set(timm.create_model("resnet18", num_classes=7).state_dict())
    tv = create_model("torchvision:mobilenet_v2", 5, kwargs={"width_mult": 0.5})
    assert isinstance(tv, torchvision.models.MobileNetV2) and tv.classifier[-1].out_features == 5
    assert tv.features[0][0].out_channels == 16  # width_mult reached the constructor
    assert type(create_model("resnet8", 10)).__name__ == "CifarResNet"  # zoo names unchanged


def _write_user_module(folder, module: str) -> None:
    (folder / f"{module}.py").write_text(
        "from torch import nn\n"
        "def tiny_net(num_classes=10, width=8):\n"
        "    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),\n"
        "                         nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))\n"
        "def not_a_model(num_classes=10):\n"
        "    return 42\n")


def test_a_user_module_from_the_specs_folder_is_imported_and_given_its_kwargs(tmp_path, monkeypatch) -> None:
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    _write_user_module(spec_dir, "byom_user_nets_a")
    monkeypatch.chdir(tmp_path)  # the module is not in the working directory: found beside the spec
    monkeypatch.setattr(sys, "path", list(sys.path))
    model = create_model("byom_user_nets_a:tiny_net", 4, kwargs={"width": 6}, search_paths=[spec_dir])
    assert model[0].out_channels == 6 and model[-1].out_features == 4
    with pytest.raises(ModelSourceError, match="returned int, not a torch.nn.Module"):
        create_model("byom_user_nets_a:not_a_model", 4, search_paths=[spec_dir])
    with pytest.raises(ModelSourceError, match=r"no factory 'tiny_nett'.*did you mean tiny_net"):
        create_model("byom_user_nets_a:tiny_nett", 4, search_paths=[spec_dir])


def test_a_bad_import_path_names_where_it_looked(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelSourceError, match=rf"cannot import 'no_such_pkg.nets'.*{tmp_path}") as info:
        create_model("no_such_pkg.nets:build", 10, search_paths=[tmp_path / "specs"])
    assert isinstance(info.value, BadInput)
    with pytest.raises(ModelSourceError, match="timm has no model 'resnet_18'.*did you mean"):
        create_model("timm:resnet_18", 10)
    with pytest.raises(ModelSourceError, match="torchvision has no model"):
        create_model("torchvision:resnet_18", 10)
    with pytest.raises(ModelSourceError, match="cannot read model name"):
        create_model("timm:", 10)


def test_timm_not_installed_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # what Python does for a package that is absent
    with pytest.raises(ModelSourceError) as info:
        create_model("timm:resnet18", 10)
    assert TIMM_EXTRA in str(info.value) and "pip install 'bkdsearch[timm]'" in str(info.value)


def test_pretrained_without_cached_weights_fails_fast_with_the_offline_fix(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    for name in ("timm:resnet18", "torchvision:resnet18"):
        with pytest.raises(ModelSourceError, match="not in the local cache|are not in") as info:
            create_model(name, 1000, pretrained=True)
        assert "no network" in str(info.value) and "checkpoint:" in str(info.value)
    assert time.monotonic() - start < 20  # an error, never a download that hangs


def test_pretrained_loads_weights_already_in_the_local_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(3)
    source = timm.create_model("resnet18", num_classes=1000)
    url = timm.models.get_pretrained_cfg("resnet18").url
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(source.state_dict(), cache / os.path.basename(url))
    model = create_model("timm:resnet18", 1000, pretrained=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values(),
                                                strict=True))


def test_checkpoints_load_strictly_and_a_wrong_models_checkpoint_is_named(tmp_path) -> None:
    torch.manual_seed(0)
    source = timm.create_model("resnet18", num_classes=10)
    torch.save({"model": source.state_dict()}, tmp_path / "r18.pt")
    model = create_model("timm:resnet18", 10, checkpoint=tmp_path / "r18.pt")
    assert torch.equal(model.fc.weight, source.fc.weight)
    with pytest.raises(WeightsError, match=r"checkpoint does not fit ResNet: missing \(\d+\): layer1\.2"):
        create_model("timm:resnet34", 10, checkpoint=tmp_path / "r18.pt")
    with pytest.raises(WeightsError, match=r"shape \(2\): .*fc.weight: checkpoint \(10, 512\) vs model \(3, 512\)"):
        create_model("timm:resnet18", 3, checkpoint=tmp_path / "r18.pt")


# -- cuts found by tracing -------------------------------------------------------------------

def test_traced_cuts_are_named_by_module_path_and_an_illegal_cut_lists_legal_ones_near_it() -> None:
    net = trace(timm.create_model("resnet18", num_classes=10), (3, 32, 32), "timm:resnet18")
    names = [c.name for c in net.cuts]
    assert names[:4] == ["conv1", "bn1", "act1", "maxpool"] and "layer1.0" in names and net.body_end == "layer4.1"
    assert net.cut("layer2").name == "layer2.1"  # a stage's name selects its last block
    assert net.stage_ends == ["act1", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    assert net.cut("layer3.0").shape == (256, 2, 2) and net.cut("layer3.0").layout.kind == "NCHW"
    with pytest.raises(PartitionError, match=r"'layer2\.0\.conv1' is not a legal cut.*more than one tensor is live"
                                             r".*legal cuts near it: .*layer1\.1.*layer2\.0") as info:
        net.split(["layer2.0.conv1"])
    assert isinstance(info.value, BadInput)
    with pytest.raises(PartitionError, match=r"'global_pool' is not a legal cut.*in the head, after the body's end"):
        net.cut("global_pool")
    with pytest.raises(PartitionError, match=r"'layer2\.0\.downsample' is not a legal cut.*skip connection.*"
                                             r"near it: .*layer2\.0\.add"):  # a module path, not a node's
        net.cut("layer2.0.downsample")
    with pytest.raises(PartitionError, match="has no cut named 'layer9'"):
        net.cut("layer9")
    with pytest.raises(PartitionError, match="distinct and in network order"):
        net.split(["layer3", "layer2"])
    with pytest.raises(PartitionError, match="ends the body"):
        net.split(["layer4"])


def test_split_recomposes_exactly_in_eval_and_follows_the_models_train_mode() -> None:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=3, num_classes=10,
                              drop_rate=0.5)
    net = trace(model, (3, 32, 32), "vit")
    blocks, head = net.split(["blocks.0", "blocks.1"])
    x = torch.randn(3, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(head(blocks[2](blocks[1](blocks[0](x)))), model(x))
        model.train()  # the train graph runs now: dropout before the head makes two calls differ
        assert not torch.equal(head(blocks[2](blocks[1](blocks[0](x)))), head(blocks[2](blocks[1](blocks[0](x)))))
    assert all(not n.startswith(("train_part", "eval_part")) for n in model.state_dict())


class _NoisyInEval(nn.Module):
    """Traceable, but its forward draws noise: no split can recompose it exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b(self.a(x) + torch.randn_like(self.a(x)))
        return self.head(x.mean((2, 3)))


def test_a_split_that_does_not_recompose_is_refused() -> None:
    net = trace(_NoisyInEval(), (3, 8, 8), "noisy")
    with pytest.raises(PartitionError, match="does not recompose the model exactly"):
        net.split([])


class _DataDependent(nn.Module):
    """A chain of named children whose forward branches on the data: not traceable."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.stage = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if x.mean() > 10:  # data-dependent control flow
            x = x * 0
        return self.head(self.stage(x))


def test_an_untraceable_model_names_the_failing_operation_and_the_blocks_fallback_works() -> None:
    model = _DataDependent()
    with pytest.raises(TraceFailure, match=r"cannot trace mine.*test_byom\.py:\d+: if x\.mean\(\) > 10.*blocks:"):
        trace(model, (3, 16, 16), "mine")
    chained = ChainedNet(model, ["stem", "stage", "head"], (3, 16, 16), "mine")
    assert [(c.name, c.shape) for c in chained.cuts] == [("stem", (8, 16, 16)), ("stage", (16, 8, 8))]
    blocks, head = chained.split(["stem"])
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        assert torch.equal(head(blocks[1](blocks[0](x))), model(x))
    teacher = trace(timm.create_model("resnet10t", num_classes=3), (3, 16, 16), "r10t")
    partition = traced_partition(teacher, chained, {"teacher": ["layer1"], "student": ["stem"]})
    stones = TracedStones(teacher, chained, partition).train()
    assert stones(x).stones[0].shape == (2, 3)  # an untraceable student distils through its chain
    with pytest.raises(PartitionError, match="do not give mine's output exactly"):  # runs, but skips BN + ReLU
        ChainedNet(model, ["stem.0", "stage", "head"], (3, 16, 16), "mine")
    with pytest.raises(PartitionError, match="cannot take what the modules before it give"):
        ChainedNet(model, ["stem", "head"], (3, 16, 16), "mine")
    with pytest.raises(PartitionError, match="has no module 'stages'; its children are stem, stage, head"):
        ChainedNet(model, ["stem", "stages", "head"], (3, 16, 16), "mine")


def test_a_model_built_for_another_input_size_is_a_clear_error() -> None:
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=1, num_classes=10)
    with pytest.raises(TraceFailure, match=r"fails on an input of size \(3, 48, 48\).*img_size"):
        trace(model, (3, 48, 48), "vit")


# -- connectors across layouts ---------------------------------------------------------------

def test_layouts_are_read_from_shapes_with_prefix_tokens() -> None:
    assert infer_layout((64, 8, 8), (3, 32, 32)) == Layout("NCHW", 64, (8, 8))
    assert infer_layout((8, 8, 96), (3, 32, 32)) == Layout("NHWC", 96, (8, 8))
    assert infer_layout((66, 192), (3, 32, 32), 2) == Layout("NLC", 192, (8, 8), 2)  # DeiT: CLS + dist
    assert infer_layout((65, 192), (3, 32, 32)) == Layout("NLC", 192, (8, 8), 1)
    assert infer_layout((16, 128), (3, 64, 64)) == Layout("NLC", 128, (4, 4), 0)  # LeViT: no prefix
    assert infer_layout((10,), (3, 32, 32)).kind == "NC"


def test_connectors_map_every_pair_of_layouts_and_synthesise_prefix_tokens() -> None:
    cnn, nhwc = Layout("NCHW", 32, (8, 8)), Layout("NHWC", 48, (4, 4))
    vit, levit = Layout("NLC", 64, (4, 4), 2), Layout("NLC", 16, (7, 7), 0)
    x = {cnn: torch.randn(2, 32, 8, 8), nhwc: torch.randn(2, 4, 4, 48), vit: torch.randn(2, 18, 64),
         levit: torch.randn(2, 49, 16)}
    want = {cnn: (2, 32, 8, 8), nhwc: (2, 4, 4, 48), vit: (2, 18, 64), levit: (2, 49, 16)}
    for src in x:
        for dst in x:
            out = make_layout_connector("conv1x1", src, dst)(x[src])
            assert tuple(out.shape) == want[dst], (src, dst)
    to_vit = make_layout_connector("conv1x1", cnn, vit)
    assert to_vit.prefix_tokens.shape == (1, 2, 64) and to_vit.pos_embed.shape == (1, 18, 64)
    out = to_vit(x[cnn])
    out.sum().backward()
    assert to_vit.prefix_tokens.grad is not None and to_vit.pos_embed.grad is not None
    assert torch.equal(out[0, :2], out[1, :2])  # prefix tokens are learned, not taken from the input
    with pytest.raises(PartitionError, match="identity connector needs equal layouts"):
        make_layout_connector("identity", cnn, vit)
    with pytest.raises(PartitionError, match="cannot connect a NC tensor"):
        make_layout_connector("conv1x1", cnn, Layout("NC", 10))


def test_traced_stones_train_student_and_connectors_while_the_teacher_never_changes() -> None:
    torch.manual_seed(0)
    teacher = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2, num_classes=10)
    student = timm.create_model("resnet10t", num_classes=10)
    t_net, s_net = trace(teacher, (3, 32, 32), "vit"), trace(student, (3, 32, 32), "r10t")
    partition = traced_partition(t_net, s_net, "stage_aligned")
    assert partition == Partition(("blocks.0",), ("layer1.0",))  # both at the 8x8 grid
    stones = TracedStones(t_net, s_net, partition).train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    params = [*student.parameters(), *stones.connectors.parameters()]
    opt = torch.optim.SGD(params, lr=0.1)
    for _ in range(2):
        out = stones(torch.randn(8, 3, 32, 32))
        assert out.student.shape == out.teacher.shape == (8, 10) and len(out.stones) == 2
        loss = sum(torch.nn.functional.cross_entropy(y, torch.zeros(8, dtype=torch.long)) for y in out.stones)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in teacher.parameters())
        assert all(p.grad is not None for p in stones.connectors.parameters())
        opt.step()
    assert teacher.training is False
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # LN weights, everything


# -- traced cuts vs the zoo's tables ----------------------------------------------------------

@pytest.mark.parametrize(("arch", "size", "stem"), [("resnet32", (3, 32, 32), "relu"),
                                                    ("wrn_16_2", (3, 32, 32), "conv1"),
                                                    ("resnet18", (3, 64, 64), "maxpool")])
def test_every_zoo_atom_is_a_traced_cut_with_the_same_features(arch, size, stem) -> None:
    from bkdsearch.zoo import decompose

    torch.manual_seed(0)
    model = create_model(arch, 10).eval()
    net = trace(model, size, arch)
    atoms = decompose(model).atoms
    x = torch.randn(2, *size)
    with torch.no_grad():
        for i, (name, _) in enumerate(atoms[:-1]):
            cut = stem if name == "stem" else name  # the zoo's stem is no module; tracing names its end
            (prefix, _rest), _head = net.split([cut])
            want = x
            for _, atom in atoms[: i + 1]:
                want = atom(want)
            assert torch.equal(prefix(x), want), name


def test_stones_for_keeps_the_zoo_path_for_zoo_pairs_and_traces_any_other_pair() -> None:
    from bkdsearch.core.recipe.stones import SteppingStones
    from bkdsearch.core.recipe.traced_stones import stones_for

    zoo_pair = stones_for(create_model("resnet14", 10), create_model("resnet8", 10),
                          Partition(("layer1.1",), ("layer1.0",)))
    assert type(zoo_pair) is SteppingStones
    mixed = stones_for(create_model("resnet14", 10), create_model("timm:resnet10t", 10),
                       Partition(("layer2.1",), ("layer1",)), input_size=(3, 32, 32))
    assert isinstance(mixed, TracedStones)
    out = mixed.train()(torch.randn(2, 3, 32, 32))
    assert out.teacher.shape == out.student.shape == out.stones[0].shape == (2, 10)


def test_deep_first_student_norm_statistics_come_from_its_own_forward_only() -> None:
    import copy

    torch.manual_seed(0)
    teacher = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2, num_classes=10)
    student = timm.create_model("resnet10t", num_classes=10)
    twin = copy.deepcopy(student).train()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    t_net, s_net = trace(teacher, (3, 32, 32), "vit"), trace(student, (3, 32, 32), "r10t")
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())  # tracing moved nothing
    stones = TracedStones(t_net, s_net, Partition(("blocks.0",), ("layer1",)), order="deep_first").train()
    x = torch.randn(4, 3, 32, 32)
    out = stones(x)
    assert len(out.stones) == 1 and out.stones[0].shape == (4, 10)
    twin(x)  # the student's own forward alone
    assert all(torch.equal(twin.state_dict()[k], v) for k, v in student.state_dict().items())


def test_partition_generators_work_on_traced_cuts() -> None:
    t_net = trace(timm.create_model("resnet18", num_classes=10), (3, 32, 32), "r18")
    s_net = trace(timm.create_model("resnet10t", num_classes=10), (3, 32, 32), "r10t")
    base = traced_partition(t_net, s_net, "stage_aligned")
    assert base == Partition(("act1", "layer1.1", "layer2.1", "layer3.1"), ("act1", "layer1.0", "layer2.0", "layer3.0"))
    per_stage = traced_partition(t_net, s_net, {"per_stage": 2})
    assert len(per_stage.teacher) == len(per_stage.student) == 2 * len(base.teacher) + 1
    assert set(base.teacher) <= set(per_stage.teacher) and set(base.student) <= set(per_stage.student)
    uniform = traced_partition(t_net, s_net, {"uniform": 3})
    assert len(uniform.teacher) == len(uniform.student) == 2
    explicit = traced_partition(t_net, s_net, {"teacher": ["layer2"], "student": ["layer2"]})
    assert explicit == Partition(("layer2.1",), ("layer2.0",))  # stage names select their last block
    with pytest.raises(PartitionError, match="cannot be cut into 9 blocks"):
        traced_partition(t_net, s_net, {"per_stage": 9})
    vit = trace(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=4, num_classes=10),
                (3, 32, 32), "vit")
    with pytest.raises(PartitionError, match="share no stage end at a common feature grid"):
        traced_partition(vit, trace(timm.create_model("resnet10t", num_classes=10), (3, 48, 48), "r"),
                         "stage_aligned")


def test_parts_follow_the_model_to_another_device() -> None:
    model = timm.create_model("swin_tiny_patch4_window7_224", img_size=32, window_size=2, depths=(2, 1, 1, 1),
                              num_classes=10).eval()
    net = trace(model, (3, 32, 32), "swin")  # traced on the CPU: its attention masks are constants there
    (first, second), head = net.split(["layers.1"])
    model.to("meta")  # another device, as .to("cuda") would be; parameters and buffers move, constants do not
    out = head(second(first(torch.empty(2, 3, 32, 32, device="meta"))))
    assert out.device.type == "meta" and tuple(out.shape) == (2, 10)
