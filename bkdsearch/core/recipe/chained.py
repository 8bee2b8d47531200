"""The ``blocks:`` fallback for a model torch.fx cannot trace: the spec lists module paths that,
run in order, are the model (the last one is the head), and the cuts are between them.

:class:`ChainedNet` offers what :class:`bkdsearch.core.recipe.traced.TracedNet` offers (cuts with
shapes and layouts, stage ends, ``split``), so partitions and :class:`TracedStones` take
either; the chain is checked once, by recomposition, against the model's own forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .errors import PartitionError
from .layouts import infer_layout
from .traced import Cut
from .zoo.atoms import Chain

__all__ = ["ChainedNet"]


class ChainedNet:
    """A model given as a chain of its named submodules.

    Attributes:
        model: the module itself (weights and state dict unchanged).
        cuts: one per listed module before the head, named by its path.
        stage_ends: cuts after which the feature grid changes, and the body's end.
        body_end: the last cut before the head.

    Raises (constructor):
        PartitionError: a path the model does not have, fewer than two paths, or a chain
            that does not recompose the model's forward exactly (``torch.equal``, eval mode).
    """

    def __init__(self, model: nn.Module, paths: Sequence[str], input_size: Sequence[int], label: str = "model") -> None:
        self.model, self.label, self.input_size = model, label, tuple(input_size)
        if len(paths) < 2:
            raise PartitionError(f"blocks: for {label} needs at least two module paths (a body and the head)")
        known = dict(model.named_modules())
        if missing := [p for p in paths if p not in known or not p]:
            children = ", ".join(n for n, _ in model.named_children())
            raise PartitionError(f"blocks: {label} has no module {', '.join(map(repr, missing))}; "
                                 f"its children are {children}")
        self._modules = [(p, known[p]) for p in paths]
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        self.probe = torch.randn(2, *self.input_size, generator=torch.Generator().manual_seed(0)).to(device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                want, x, shapes = model(self.probe), self.probe, []
                for path, module in self._modules:
                    try:
                        x = module(x)
                    except Exception as exc:  # a module fed what it does not take: the list is wrong
                        raise PartitionError(f"blocks: {list(paths)} of {label}: {path!r} cannot take what the "
                                             f"modules before it give ({str(exc).splitlines()[0]})") from None
                    shapes.append(tuple(x.shape[1:]))
        finally:
            model.train(was_training)
        if not (isinstance(want, Tensor) and want.shape == x.shape and torch.equal(want, x)):
            raise PartitionError(f"blocks: {list(paths)} run in order do not give {label}'s output exactly: "
                                 "its forward does more than call them in sequence (list every step as a module)")
        prefix = getattr(model, "num_prefix_tokens", None)
        self.cuts = [Cut(p, (p,), s, infer_layout(s, self.input_size, prefix))
                     for (p, _), s in zip(self._modules[:-1], shapes, strict=False)]
        self.body_end = self.cuts[-1].name
        self.stage_ends = [a.name for a, b in zip(self.cuts, self.cuts[1:], strict=False)
                           if a.layout.grid != b.layout.grid]
        self.stage_ends.append(self.body_end)

    def cut(self, name: str) -> Cut:
        """Return the cut after module ``name``.

        Raises:
            PartitionError: ``name`` is not one of the listed modules before the head.
        """
        for c in self.cuts:
            if c.name == name:
                return c
        raise PartitionError(f"{name!r} is not a cut of {self.label}: its blocks: list allows "
                             f"{', '.join(c.name for c in self.cuts)}")

    def split(self, cuts: Sequence[str]) -> tuple[list[Chain], Chain]:
        """Return the blocks after each cut in ``cuts`` and the head.

        Raises:
            PartitionError: an unknown cut, cuts out of order, or the body's end.
        """
        order = [c.name for c in self.cuts]
        positions = [order.index(self.cut(c).name) + 1 for c in cuts]
        if any(b <= a for a, b in zip(positions, positions[1:], strict=False)):
            raise PartitionError(f"{self.label} cuts must be distinct and in network order: {list(cuts)}")
        if positions and positions[-1] == len(order):
            raise PartitionError(f"{self.label} cut {cuts[-1]!r} ends the body: the last block would be empty")
        edges = [0, *positions, len(order)]
        modules = [m for _, m in self._modules]
        blocks = [Chain(*modules[a:b]) for a, b in zip(edges, edges[1:], strict=False)]
        return blocks, Chain(modules[-1])

    def table(self) -> list[tuple[str, tuple[int, ...], str]]:
        """Return ``(cut name, shape, layout)`` for every cut."""
        return [(c.name, c.shape, c.layout.kind) for c in self.cuts]
