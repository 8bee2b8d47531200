"""The entry point of exported scripts: command-line flags over the embedded configuration,
then one training run of the recipe (:func:`bkdsearch.core.recipe.loop.fit`).

The exporter copies this module's definitions after the inlined recipe and writes the
trial's configuration as the literal ``CONFIG`` (and ``TEACHER_CHECKPOINT``) at the top of
the script, and the trial's model builders (``resnet32``...) in place of ``STUDENT_MODEL``
and ``TEACHER_MODEL``; the values here are placeholders.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from bkdsearch.core.recipe.distributed import end_group, rank_device, ranks_from_env, start_group
from bkdsearch.core.recipe.loop import fit
from bkdsearch.core.recipe.optim import scale_milestones

CONFIG: dict[str, Any] = {}
TEACHER_CHECKPOINT: str | None = None
STUDENT_MODEL: Callable[[int], nn.Module] = nn.Identity
TEACHER_MODEL: Callable[[int], nn.Module] | None = None
FLAG_KEYS = ("train.epochs", "train.milestones", "data.root", "data.val_fraction", "runtime.device")
"""The configuration values :func:`parse_args` may set from flags; the script fixes all others."""


class Config(dict):
    """Attribute access over the embedded configuration: ``cfg.train.lr`` reads CONFIG["train"]["lr"]."""

    def __getattr__(self, name: str) -> Any:
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return Config(value) if isinstance(value, dict) else value

    def digest(self) -> str:
        """Return a short hash of what the run computes (``runtime`` only says how it runs)."""
        blob = json.dumps({k: v for k, v in self.items() if k != "runtime"}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def _checked(convert: Callable[[str], Any], ok: Callable[[Any], bool], want: str) -> Callable[[str], Any]:
    """Return an argparse ``type``: ``convert`` the flag's text, refusing what fails or is not
    ``ok`` with "expected ``want``" (a usage error, exit status 2)."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return value

    return parse


_EPOCHS = _checked(int, lambda v: v >= 1, "a whole number of at least 1")
_FRACTION = _checked(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
_MILESTONES = _checked(lambda text: [int(m) for m in text.split(",") if m.strip()], lambda v: True,
                       "epochs like 150,180,210")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Return the parsed flags and the configuration they give (CONFIG with the flags applied).

    Exits with a usage error (status 2) for bad flags, a missing teacher checkpoint, or
    milestones at or past the last epoch.
    """
    cfg = copy.deepcopy(CONFIG)
    train, data = cfg["train"], cfg["data"]
    needs_teacher = cfg["method"] != "ce"
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default=data["root"], help="dataset root folder")
    parser.add_argument("--teacher-checkpoint", default=TEACHER_CHECKPOINT,
                        help="teacher weights (plain state dict or {'model': ...})"
                             + ("" if needs_teacher else "; unused: this trial trains with CE"))
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--epochs", type=_EPOCHS, default=train["epochs"],
                        help="training epochs; explicit lr milestones scale with them")
    parser.add_argument("--milestones", type=_MILESTONES, default=None,
                        help="lr milestones as comma-separated epochs; None: the trial's, scaled to --epochs")
    parser.add_argument("--out", default="run", help="output folder (checkpoints, metrics.jsonl, student.pt)")
    parser.add_argument("--val-fraction", type=_FRACTION, default=0.0,
                        help="validation share of the training set (0: train on all of it)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    parser.add_argument("--compile", action="store_true", help="run the model through torch.compile")
    args = parser.parse_args(argv)
    if needs_teacher and not args.teacher_checkpoint:
        parser.error("--teacher-checkpoint is required: this trial distils from a teacher "
                     f"({cfg['teacher']['arch']}) whose weights file was not found")
    if needs_teacher and not Path(args.teacher_checkpoint).is_file():
        parser.error(f"--teacher-checkpoint {args.teacher_checkpoint}: no such file")
    if args.milestones is not None:
        train["milestones"] = args.milestones
    elif train.get("milestones") and args.epochs != train["epochs"]:
        train["milestones"] = scale_milestones(train["milestones"], train["epochs"], args.epochs)
    late = [m for m in train.get("milestones") or [] if m >= args.epochs]
    if train["schedule"] == "multistep" and late:
        parser.error(f"milestones {late} are at or past the last epoch ({args.epochs})")
    size = ranks_from_env().world_size
    if data["batch_size"] % size:
        parser.error(f"the batch size {data['batch_size']} cannot be shared by {size} processes")
    data["root"], data["val_fraction"] = args.data, args.val_fraction
    train["epochs"] = args.epochs
    cfg["runtime"]["device"] = args.device
    return args, cfg


def main(argv: list[str] | None = None) -> None:
    """Train the exported configuration, printing each epoch and the test accuracy (rank 0
    alone when torchrun starts several processes: ``torchrun --nproc_per_node G train.py``)."""
    args, cfg = parse_args(argv)
    ranks = ranks_from_env()
    device = rank_device(ranks, args.device)
    start_group(ranks, device)

    def report(row: dict[str, float]) -> None:
        val = f", val {row['val_acc']:.2f}%" if "val_acc" in row else ""
        print(f"epoch {row['epoch']}/{args.epochs}: loss {row['loss']:.4f}{val} ({row['images_per_s']:.0f} img/s)",
              flush=True)

    try:
        test_acc = fit(Config(cfg), args.out, STUDENT_MODEL, TEACHER_MODEL, teacher_weights=args.teacher_checkpoint,
                       device=device, ranks=ranks, resume=args.resume, compile=args.compile, log=report)
    finally:
        end_group()
    if ranks.is_main:
        print(f"test accuracy {test_acc:.2f}%; student weights: {Path(args.out) / 'student.pt'}")


if __name__ == "__main__":
    main()
