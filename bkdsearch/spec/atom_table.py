"""The zoo's atoms as plain data, so that ``bkdsearch validate`` checks partitions without
building a model or importing torch.

For every registered architecture the table holds its family, the input size it is defined
for and, per tabulated input size, its atoms in order with each one's output shape (C, H, W);
also the synthetic dataset's defaults (they set its input size). It is generated from the
models, stored next to this module as ``atom_table.json``, and the test suite fails when it
no longer matches them. After adding or changing a model, regenerate it::

    python -m bkdsearch.spec.atom_table

An architecture or input size the table lacks is measured on the model instead (torch).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.recipe.cuts import Atom, Shape

TABLE_PATH = Path(__file__).with_name("atom_table.json")
"""Where the table is stored (package data)."""

REGENERATE = "python -m bkdsearch.spec.atom_table"
"""The command that regenerates the table from the zoo."""

CIFAR_SIZE: Shape = (3, 32, 32)
"""What CIFAR, Fashion-MNIST (padded) and the default synthetic set give the models."""

IMAGEFOLDER_CROP = 224
"""The crop size of image folders when the data section sets none."""


def tabulated_sizes(input_size: Sequence[int]) -> list[Shape]:
    """Return the input sizes tabulated for a model defined for ``input_size``: that one, and
    CIFAR's 3x32x32 (ImageNet models may train on CIFAR-sized data too)."""
    return list(dict.fromkeys([tuple(input_size), CIFAR_SIZE]))


def size_key(input_size: Sequence[int]) -> str:
    """Return the table's key of an input size: ``"3x32x32"``."""
    return "x".join(str(d) for d in input_size)


@functools.cache
def stored_table() -> dict[str, Any]:
    """Return the stored table (read once): ``synthetic_defaults``, and ``models`` mapping each
    architecture to its ``family``, ``input_size`` and ``atoms`` (per input size key, a list of
    ``[name, [C, H, W]]``).

    Raises:
        OSError: the table file cannot be read.
    """
    return json.loads(TABLE_PATH.read_text(encoding="utf-8"))


def atoms(arch: str, input_size: Sequence[int]) -> tuple[Atom, ...]:
    """Return the atoms of ``arch`` for inputs of ``input_size``: ``(name, output shape)`` in
    execution order, from the table, else measured on the model (imports torch).

    Raises:
        KeyError: ``arch`` is not a registered model.
        RuntimeError: the model cannot run on inputs of that size (torch's own error).
    """
    return _atoms(arch, tuple(input_size))


@functools.cache
def _atoms(arch: str, input_size: Shape) -> tuple[Atom, ...]:
    stored = stored_table()["models"].get(arch, {}).get("atoms", {}).get(size_key(input_size))
    if stored is not None:
        return tuple((name, tuple(shape)) for name, shape in stored)
    from ..core.engine.models import create_model
    from ..core.recipe.zoo import atom_shapes

    # Shapes and atom names do not depend on the number of classes.
    return tuple(atom_shapes(create_model(arch, num_classes=10).eval(), input_size))


def arch_facts(arch: str) -> tuple[str, Shape]:
    """Return the family (``cifar``, ``imagenet``) of ``arch`` and the input size it is defined
    for, from the table, else from the registry (imports torch).

    Raises:
        KeyError: ``arch`` is not a registered model.
    """
    entry = stored_table()["models"].get(arch)
    if entry is not None:
        return entry["family"], tuple(entry["input_size"])
    from ..core.engine.models import model_entry

    found = model_entry(arch)
    return found.family, found.input_size


def synthetic_defaults() -> dict[str, Any]:
    """Return the default of every option of the synthetic dataset (``data.synthetic``)."""
    return dict(stored_table()["synthetic_defaults"])


def model_input_size(data: Any) -> Shape:
    """Return the (C, H, W) the models see for a data section, as
    :func:`bkdsearch.core.recipe.data.input_size_of` does but without torch (a test holds the two
    equal). ``data`` needs ``dataset`` and ``synthetic`` attributes; an ``image_size`` one,
    where present, sets the crop of image folders.

    Raises:
        ValueError: an unknown dataset.
    """
    if data.dataset == "synthetic":
        options = {**synthetic_defaults(), **(data.synthetic or {})}
        return options["channels"], options["image_size"], options["image_size"]
    if data.dataset == "imagefolder":
        crop = getattr(data, "image_size", None) or IMAGEFOLDER_CROP
        return 3, crop, crop
    if data.dataset in ("cifar10", "cifar100", "fashion_mnist"):
        return CIFAR_SIZE
    raise ValueError(f"unknown dataset {data.dataset!r}")


def measure(arch: str) -> dict[str, Any]:
    """Return the table's entry of ``arch`` measured on its model (imports torch).

    Raises:
        KeyError: ``arch`` is not a registered model.
    """
    from ..core.engine.models import create_model, model_entry
    from ..core.recipe.zoo import atom_shapes

    entry = model_entry(arch)
    model = create_model(arch, num_classes=10).eval()
    return {
        "family": entry.family,
        "input_size": list(entry.input_size),
        "atoms": {size_key(size): [[name, list(shape)] for name, shape in atom_shapes(model, size)]
                  for size in tabulated_sizes(entry.input_size)},
    }


def measured_synthetic_defaults() -> dict[str, Any]:
    """Return the defaults of :class:`bkdsearch.core.recipe.data.SyntheticConfig` (imports torch)."""
    from ..core.recipe.data import SyntheticConfig

    return {f.name: f.default for f in dataclasses.fields(SyntheticConfig)}


def generate() -> dict[str, Any]:
    """Return the whole table measured on the zoo (imports torch; builds every model)."""
    from ..core.engine.models import list_models

    return {"regenerate": REGENERATE, "synthetic_defaults": measured_synthetic_defaults(),
            "models": {arch: measure(arch) for arch in list_models()}}


def render(value: Any, indent: int = 0) -> str:
    """Return ``value`` as JSON with one atom (or one key) per line, for readable diffs."""
    pad = " " * (indent + 1)
    if isinstance(value, dict):
        items = [f"{pad}{json.dumps(k)}: {render(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(value, list) and any(isinstance(x, list) and any(isinstance(y, list) for y in x) for x in value):
        return "[\n" + ",\n".join(pad + render(x, indent + 1) for x in value) + "\n" + " " * indent + "]"
    return json.dumps(value)


def main() -> None:
    """Regenerate :data:`TABLE_PATH` from the zoo."""
    table = generate()
    TABLE_PATH.write_text(render(table) + "\n", encoding="utf-8")
    print(f"wrote {TABLE_PATH} ({len(table['models'])} architectures)")


if __name__ == "__main__":
    main()
