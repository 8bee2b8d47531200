"""The family table of issue 22: for each timm family the tests cover (tests/test_byom_families.py,
the one list), the legal cuts tracing finds, the stage ends, whether every stage cut
recomposes the model exactly (``torch.equal``, eval mode, on a fresh batch) and the layouts
at the cuts. ``--zoo`` adds the zoo's models: their atom tables against the traced cuts.

    python bench/traced_families.py [--zoo] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_byom_families import FAST, SLOW  # noqa: E402

from bkdsearch.core.recipe.traced import trace  # noqa: E402
from bkdsearch.zoo import atom_shapes, create_model, list_models, model_entry  # noqa: E402


def family_row(name: str, kwargs: dict) -> dict:
    """Trace one timm family and check each stage cut by recomposition."""
    import timm

    size = (3, kwargs.get("img_size", 32), kwargs.get("img_size", 32))
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
    net = trace(model, size, name)
    x = torch.randn(2, *size)
    with torch.no_grad():
        want = model(x)
        exact = []
        for stage_end in net.stage_ends[:-1]:
            (first, second), head = net.split([stage_end])
            exact.append(torch.equal(head(second(first(x))), want))
    layouts = sorted({net.cut(s).layout.kind for s in net.stage_ends})
    return {"model": name, "input": size[1], "cuts": len(net.cuts), "stage_cuts": len(exact),
            "exact": f"{sum(exact)}/{len(exact)}", "stage_layouts": "/".join(layouts)}


def zoo_row(arch: str) -> dict:
    """The zoo's atoms against the traced cuts of the same model."""
    entry = model_entry(arch)
    size = entry.input_size if entry.family == "cifar" else (3, 64, 64)
    model = create_model(arch, 10).eval()
    try:
        net = trace(model, size, arch)
    except Exception as exc:  # reported as the row
        return {"model": arch, "result": f"not traceable: {str(exc).split(' at ')[0]}"}
    atoms = atom_shapes(model, size)
    same = [a for a, shape in atoms if any(a in c.aliases and c.shape == shape for c in net.cuts)]
    others = [a for a, _ in atoms if a not in same]
    return {"model": arch, "zoo_atoms": len(atoms), "traced_cuts": len(net.cuts), "atoms_that_are_cuts": len(same),
            "other_atoms": others, "traced_body_end": net.body_end, "zoo_last_atom": atoms[-1][0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [family_row(name, kw) for name, kw in {**FAST, **SLOW}.items()]
    print("| model | input | legal cuts | stage cuts exact | layouts at stage ends |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['model']} | {r['input']} | {r['cuts']} | {r['exact']} | {r['stage_layouts']} |")
    zoo = []
    if args.zoo:
        zoo = [zoo_row(a) for a in list_models() if model_entry(a).family == "cifar" or a in ("resnet18",
                                                                                           "mobilenet_v2")]
        for r in zoo:
            print(json.dumps(r))
    if args.out:
        Path(args.out).write_text(json.dumps({"families": rows, "zoo": zoo}, indent=2))


if __name__ == "__main__":
    main()
