"""Cuts found by tracing: any ``nn.Module`` whose forward torch.fx can trace is cut into blocks
where one tensor carries the whole state (DESIGN.md, "Atoms and partitions").

The model is traced twice with torchvision's feature-extraction tracer (timm's non-traceable
modules kept as leaves when timm is loaded): once in train mode and once in eval mode, since
Python branches on ``self.training`` are fixed at trace time. A *legal cut* is a node after
which exactly one computed value is live, a tensor, in both graphs; parameter accesses and
values computed from parameters alone are not state (each part re-creates them, unlike
``torch.fx.passes.split_module``, which would pass them in as extra inputs). Cuts are named by
module path (``layer2``, ``blocks.3``); every alias a cut has (the enclosing modules it ends)
names it too. :meth:`TracedNet.split` returns blocks that recompose the model exactly and
checks that once per set of cuts (``torch.equal`` in eval mode on a probe batch).
"""

from __future__ import annotations

import difflib
import math
import re
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchvision
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata
from torchvision.models.feature_extraction import NodePathTracer

from .errors import BadInput, PartitionError
from .layouts import Layout, infer_layout

__all__ = ["Cut", "Segment", "TraceFailure", "TracedNet", "trace"]

_POOLING_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.Flatten)
_POOLING_FUNCTIONS = {"adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d", "flatten", "mean", "amax"}
_NEAR = 3  # legal cuts listed on each side of an illegal one


class TraceFailure(BadInput):
    """A model torch.fx cannot trace; the message names the failing operation and the
    ``blocks:`` fallback."""


@dataclass(frozen=True)
class Cut:
    """A legal cut: the state after it is one tensor.

    Attributes:
        name: the module path it is named by (``layer2``, ``blocks.3``, ``stem.act``).
        aliases: every name that selects it (the modules it ends, and the traced node's path).
        shape: the tensor's shape without the batch, for the traced input size.
        layout: how that tensor is laid out (NCHW, NHWC, NLC tokens or flat).
    """

    name: str
    aliases: tuple[str, ...]
    shape: tuple[int, ...]
    layout: Layout


class _PathTracer(NodePathTracer):
    """NodePathTracer that also records the module each node was created in."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.node_module: dict[fx.Node, str] = {}
        self._seen: dict[str, int] = {}

    def _get_node_qualname(self, module_qualname: str, node: fx.Node) -> str:
        # torchvision's version searches every earlier name with a regex (quadratic: seconds
        # for a ViT); a counter per name gives the same names.
        name = module_qualname if node.op == "call_module" else \
            f"{module_qualname}.{node}" if module_qualname else str(node)
        if re.match(r".+_[0-9]+$", name) is not None:
            name = name.rsplit("_", 1)[0]
        count = self._seen.get(name, 0)
        self._seen[name] = count + 1
        return f"{name}_{count}" if count else name

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, *rest):  # type: ignore[no-untyped-def]
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, *rest)
        self.node_module[proxy.node] = target if kind == "call_module" else self.current_module_qualname
        return proxy


@dataclass
class _Graph:
    """One traced graph with the names of its nodes."""

    module: fx.GraphModule
    qualname: dict[fx.Node, str]
    names: dict[str, fx.Node]  # every alias of every legal cut -> its node
    legal: list[str]  # canonical names of the legal cuts, in execution order
    aliases: dict[str, tuple[str, ...]]
    order: list[str]  # every node's path, in execution order (for "near" listings)


class Segment(nn.Module):
    """Runs the part of a traced model between two cuts: the eval graph's part while the model
    is in eval mode, the train graph's otherwise. Its modules are the model's own. Tensors the
    graph reads directly follow the model: parameters and buffers are re-read from it when
    ``model.to(...)`` replaced them, and constants of the trace (a Swin attention mask, a
    relative position index), which nothing else moves, go to the input's device."""

    def __init__(self, root: nn.Module, train_part: fx.GraphModule, eval_part: fx.GraphModule) -> None:
        super().__init__()
        self.train_part, self.eval_part = train_part, eval_part
        self._root = [root]  # a list: the root model is followed, not owned (no second state_dict)
        self._reads = {id(part): _tensor_reads(part, root) for part in (train_part, eval_part)}

    def forward(self, x: Tensor) -> Tensor:
        """Return the part's output for the state ``x`` at its first cut."""
        part = self.train_part if self._root[0].training else self.eval_part
        for owner, field, source in self._reads[id(part)]:
            have = getattr(owner, field)
            if source is not None:
                if (want := getattr(source, field)) is not have:
                    setattr(owner, field, want)
            elif have.device != x.device:
                setattr(owner, field, have.to(x.device))
        return part(x)


def _tensor_reads(part: fx.GraphModule, root: nn.Module) -> list[tuple[nn.Module, str, nn.Module | None]]:
    """``(holder in the part, name, the model's module that owns it)`` for every tensor the part
    reads directly; the owner is None for a constant of the trace (no parameter or buffer)."""
    reads = []
    for node in part.graph.nodes:
        if node.op == "get_attr":
            owner_path, _, field = str(node.target).rpartition(".")
            source: nn.Module | None = root.get_submodule(owner_path)
            if field not in source._parameters and field not in source._buffers:
                source = None
            reads.append((part.get_submodule(owner_path), field, source))
    return reads


def _tracer_kwargs() -> dict[str, object]:
    """torchvision's feature-extraction settings (its ops as leaves, ``math`` wrapped) plus
    timm's non-traceable modules and functions when timm is in use."""
    leaves = [m for m in vars(torchvision.ops).values() if isinstance(m, type) and issubclass(m, nn.Module)]
    functions: tuple[object, ...] = ()
    timm_layers = sys.modules.get("timm.layers")
    if timm_layers is not None:
        leaves += list(timm_layers.get_notrace_modules())
        functions = tuple(timm_layers.get_notrace_functions())
    return {"autowrap_modules": (math, torchvision.ops), "leaf_modules": leaves, "autowrap_functions": functions}


def _failing_operation(exc: BaseException) -> str:
    """Return ``file:line: code`` of the innermost frame outside torch that was running."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "/torch/" not in f.filename and "/torchvision/" not in f.filename and f.filename != __file__]
    if not frames:
        return type(exc).__name__
    frame = frames[-1]
    return f"{frame.filename}:{frame.lineno}: {(frame.line or '').strip()}"


def _trace_graph(model: nn.Module, train: bool, label: str) -> tuple[fx.GraphModule, _PathTracer]:
    tracer = _PathTracer(**_tracer_kwargs())
    model.train(train)
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError... for untraceable code
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TraceFailure(
            f"cannot trace {label} ({'train' if train else 'eval'} mode): {reason}"
            f" at {_failing_operation(exc)}. Fallback: list the model's chain of named children in the spec as "
            f"`blocks: [...]` (module paths run in order; the last one is the head)") from None
    return fx.GraphModule(tracer.root, graph), tracer


def _constant_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes computed from parameters and constants only: re-created in each part, not state."""
    const: set[fx.Node] = set()
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    const.update(inputs[1:])  # forward's optional extra arguments (masks, flags): their defaults
    for node in graph.nodes:
        if node.op == "get_attr" or (node.op in ("call_function", "call_method", "call_module")
                                      and all(n in const for n in node.all_input_nodes)
                                      and node.op != "call_module"):
            const.add(node)
    return const


def _legal_nodes(graph: fx.Graph) -> list[fx.Node]:
    """Nodes after which exactly one non-constant value is live: the node's own tensor."""
    nodes = list(graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    const = _constant_nodes(graph)
    last_use = {n: max((pos[u] for u in n.users), default=pos[n]) for n in nodes}
    live: set[fx.Node] = set()
    legal = []
    for i, node in enumerate(nodes):
        if node.op == "output":
            break
        if node not in const:
            live.add(node)
        live = {n for n in live if last_use[n] > i}
        if live == {node} and isinstance(node.meta.get("tensor_meta"), TensorMetadata) and node.op != "placeholder":
            legal.append(node)
    return legal


def _names(nodes: Sequence[fx.Node], tracer: _PathTracer, legal: Sequence[fx.Node]) -> dict[fx.Node, tuple[str, ...]]:
    """Aliases of each legal node, canonical first: the modules it is the last node of
    (deepest non-leaf module first), then its traced path."""
    last_of: dict[str, fx.Node] = {}
    for node in nodes:
        path = tracer.node_module.get(node, "")
        parts = path.split(".") if path else []
        for k in range(1, len(parts) + 1):
            last_of[".".join(parts[:k])] = node
    leaves = {n.target for n in nodes if n.op == "call_module"}
    out = {}
    for node in legal:
        path = tracer.node_module.get(node, "")
        parts = path.split(".") if path else []
        ends = [".".join(parts[:k]) for k in range(len(parts), 0, -1) if last_of[".".join(parts[:k])] is node]
        inner = [p for p in ends if p not in leaves] + [p for p in ends if p in leaves]
        qualname = tracer.node_to_qualname[node]
        out[node] = tuple(dict.fromkeys([*inner, qualname]))
    return out


def _analyse(module: fx.GraphModule, tracer: _PathTracer) -> _Graph:
    nodes = list(module.graph.nodes)
    legal = _legal_nodes(module.graph)
    aliases = _names(nodes, tracer, legal)
    names: dict[str, fx.Node] = {}
    canonical: list[str] = []
    for node in legal:
        first = next((a for a in aliases[node] if a not in names), tracer.node_to_qualname[node])
        canonical.append(first)
        for alias in aliases[node]:
            names.setdefault(alias, node)
        names[first] = node
    return _Graph(module, dict(tracer.node_to_qualname), names, canonical,
                  {c: aliases[names[c]] for c in canonical},
                  [tracer.node_to_qualname[n] for n in nodes if n in tracer.node_to_qualname])


def _shape_prop(module: fx.GraphModule, root: nn.Module, probe: Tensor, train: bool) -> None:
    """Record every node's output shape; a train-mode pass leaves no trace in buffers or RNG."""
    saved = [b.detach().clone() for b in root.buffers()]
    root.train(train)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        ShapeProp(module).propagate(probe)
    with torch.no_grad():
        for buffer, value in zip(root.buffers(), saved, strict=True):
            buffer.copy_(value)


def _part(module: fx.GraphModule, start: fx.Node | None, stop: fx.Node | None) -> fx.GraphModule:
    """The sub-graph after node ``start`` (None: from the input) up to ``stop`` (None: to the
    output), as a GraphModule over the same submodules; constants are re-created in it."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    nodes = list(module.graph.nodes)
    begin = 0 if start is None else nodes.index(start) + 1
    if start is not None:
        env[start] = graph.placeholder("x")
    const = _constant_nodes(module.graph)

    def lookup(node: fx.Node) -> fx.Node:
        if node not in env:
            if node not in const and node.op != "placeholder":
                raise PartitionError(f"internal: value {node.name} crosses a legal cut")
            env[node] = graph.node_copy(node, lookup)
        return env[node]

    result = None
    for node in nodes[begin:]:
        if node.op == "output":
            graph.output(fx.map_arg(node.args[0], lookup))
            break
        if node.op == "placeholder":
            lookup(node)
            continue
        env[node] = graph.node_copy(node, lookup)
        if node is stop:
            result = env[node]
            break
    if result is not None:
        graph.output(result)
    part = fx.GraphModule(module, graph)
    part.graph.eliminate_dead_code()
    part.recompile()
    return part


class TracedNet:
    """A model traced into legal cuts: their names, shapes, layouts and stage ends, and the
    blocks a list of cuts splits it into.

    Attributes:
        model: the traced module itself (weights and state dict unchanged).
        cuts: every legal cut in execution order, up to the end of the body.
        stage_ends: names of the cuts ending a stage (from timm's ``feature_info``, else where
            the spatial size changes); the last one ends the body.
        body_end: the cut after which the head (pooling, classifier) runs.
    """

    def __init__(self, model: nn.Module, input_size: Sequence[int], label: str = "model") -> None:
        self.model, self.label, self.input_size = model, label, tuple(input_size)
        was_training = model.training
        try:
            train_gm, train_tracer = _trace_graph(model, True, label)
            eval_gm, eval_tracer = _trace_graph(model, False, label)
            generator = torch.Generator().manual_seed(0)
            param = next(model.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            self.probe = torch.randn(2, *self.input_size, generator=generator).to(device)
            try:
                _shape_prop(train_gm, model, self.probe, True)
                _shape_prop(eval_gm, model, self.probe, False)
            except Exception as exc:  # the model's own error for an input it was not built for
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise TraceFailure(f"{label} fails on an input of size {self.input_size}: {reason}; build it for this "
                                   "input size (timm models: img_size in the model kwargs)") from None
        finally:
            model.train(was_training)
        self._train, self._eval = _analyse(train_gm, train_tracer), _analyse(eval_gm, eval_tracer)
        prefix = getattr(model, "num_prefix_tokens", None)
        all_cuts = []
        for name in self._eval.legal:
            if self._train.names.get(name) is None:
                continue  # legal in eval mode only: the train graph keeps more state there
            node = self._eval.names[name]
            shape = tuple(node.meta["tensor_meta"].shape[1:])
            all_cuts.append(Cut(name, self._eval.aliases[name], shape, infer_layout(shape, self.input_size, prefix)))
        self.body_end = self._body_end(all_cuts)
        end = next(i for i, c in enumerate(all_cuts) if c.name == self.body_end)
        self.cuts: list[Cut] = all_cuts[: end + 1]
        self.stage_ends = self._stage_ends()
        self._verified: set[tuple[str, ...]] = set()

    def _body_end(self, cuts: Sequence[Cut]) -> str:
        info = getattr(self.model, "feature_info", None)
        if isinstance(info, list) and info and isinstance(info[-1], dict):
            found = self._find(cuts, str(info[-1].get("module", "")))
            if found is not None:
                return found.name
        spatial = [c for c in cuts if c.layout.kind != "NC"]
        while len(spatial) > 1 and self._is_pooling(self._eval.names[spatial[-1].name]):
            spatial.pop()
        if not spatial:
            raise TraceFailure(f"{self.label} has no legal cut with a spatial or token layout: nothing to cut into "
                               "blocks. Fallback: a `blocks:` list of module paths in the spec")
        return spatial[-1].name

    def _is_pooling(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(self.model.get_submodule(str(node.target)), _POOLING_MODULES)
        return getattr(node.target, "__name__", str(node.target)) in _POOLING_FUNCTIONS

    @staticmethod
    def _find(cuts: Sequence[Cut], name: str) -> Cut | None:
        return next((c for c in cuts if name == c.name or name in c.aliases), None)

    def _stage_ends(self) -> list[str]:
        info = getattr(self.model, "feature_info", None)
        ends: list[str] = []
        if isinstance(info, list) and info and all(isinstance(f, dict) for f in info):
            for entry in info:
                found = self._find(self.cuts, str(entry.get("module", "")))
                if found is not None and found.name not in ends:
                    ends.append(found.name)
        else:
            ends = [a.name for a, b in zip(self.cuts, self.cuts[1:], strict=False) if a.layout.grid != b.layout.grid]
        if self.body_end not in ends:
            ends.append(self.body_end)
        return ends

    def _position(self, name: str) -> int | None:
        """Where ``name`` (a node path, or a module path: its last node) runs in the eval graph."""
        order = self._eval.order
        if name in self._eval.names:
            return order.index(self._eval.qualname[self._eval.names[name]])
        if name in order:
            return order.index(name)
        inside = [i for i, path in enumerate(order) if path.startswith(name + ".")]
        return inside[-1] if inside else None

    def cut(self, name: str) -> Cut:
        """Return the legal cut ``name`` (any of its aliases).

        Raises:
            PartitionError: ``name`` is not a legal cut; the message lists the legal cuts near
                it (or, for an unknown name, the closest names).
        """
        found = self._find(self.cuts, name)
        if found is not None:
            return found
        legal = [c.name for c in self.cuts]
        at = self._position(name)
        if at is not None:
            position = {c: self._position(c) for c in legal}
            before = [c for c in legal if (position[c] or 0) < at]
            after = [c for c in legal if c not in before]
            near = before[-_NEAR:] + after[:_NEAR]
            why = "more than one tensor is live there (a skip connection or a second branch)"
            if name in self._eval.names:
                why = f"it is in the head, after the body's end {self.body_end!r}" if not after else \
                    "in train mode more than one tensor is live there"
            raise PartitionError(f"{name!r} is not a legal cut of {self.label}: {why}; legal cuts near it: "
                                 f"{', '.join(near)}")
        close = difflib.get_close_matches(name, legal, n=2 * _NEAR, cutoff=0.4) or legal[: 2 * _NEAR]
        raise PartitionError(f"{self.label} has no cut named {name!r}; legal cuts like it: {', '.join(close)} "
                             f"({len(legal)} legal cuts in all)")

    def split(self, cuts: Sequence[str]) -> tuple[list[Segment], Segment]:
        """Return the blocks after each cut in ``cuts`` (n = len(cuts) + 1 blocks, the last one
        ending at the body's end) and the head; checked by recomposition once per cut list.

        Raises:
            PartitionError: an illegal or unknown cut, cuts out of order, the body's end (the
                last block would be empty), or parts that do not recompose the model exactly.
        """
        chosen = [self.cut(c).name for c in cuts]
        order = [c.name for c in self.cuts]
        positions = [order.index(c) for c in chosen]
        if any(b <= a for a, b in zip(positions, positions[1:], strict=False)):
            raise PartitionError(f"{self.label} cuts must be distinct and in network order: {list(cuts)}")
        if chosen and chosen[-1] == self.body_end:
            raise PartitionError(f"{self.label} cut {chosen[-1]!r} ends the body: the last block would be empty")
        bounds = [*chosen, self.body_end]
        parts = []
        for start, stop in zip([None, *bounds], [*bounds, None], strict=True):
            pieces = [_part(g.module, g.names[start] if start else None, g.names[stop] if stop else None)
                      for g in (self._train, self._eval)]
            parts.append(Segment(self.model, *pieces))
        blocks, head = parts[:-1], parts[-1]
        key = tuple(chosen)
        if key not in self._verified:
            self._verify(blocks, head, chosen)
            self._verified.add(key)
        return blocks, head

    @torch.no_grad()
    def _verify(self, blocks: Sequence[Segment], head: Segment, cuts: Sequence[str]) -> None:
        was_training = self.model.training
        self.model.eval()
        try:
            want = self.model(self.probe)
            x = self.probe
            for block in blocks:
                x = block(x)
            got = head(x)
        finally:
            self.model.train(was_training)
        if not (isinstance(want, Tensor) and isinstance(got, Tensor) and torch.equal(want, got)):
            diff = (want - got).abs().max().item() if isinstance(want, Tensor) and isinstance(got, Tensor) \
                and want.shape == got.shape else "shape"
            raise PartitionError(f"{self.label} split at {list(cuts)} does not recompose the model exactly "
                                 f"(max difference {diff}); choose other cuts")

    def table(self) -> list[tuple[str, tuple[int, ...], str]]:
        """Return ``(cut name, shape, layout)`` for every legal cut: what ``bkdsearch cuts``
        lists."""
        return [(c.name, c.shape, c.layout.kind) for c in self.cuts]


def trace(model: nn.Module, input_size: Sequence[int], label: str = "model") -> TracedNet:
    """Return ``model`` traced into legal cuts for inputs of shape ``input_size`` (C, H, W).

    Raises:
        TraceFailure: torch.fx cannot trace it (the message names the failing operation and
            the ``blocks:`` fallback), or it has no cut with a spatial or token layout.
    """
    return TracedNet(model, input_size, label)
