"""The entry point of exported scripts: command-line flags over the embedded configuration,
then one training run.

The exporter copies this module's definitions after the inlined runtime and writes the
trial's configuration as the literal ``CONFIG`` (and ``TEACHER_CHECKPOINT``) at the top of
the script; the values here are placeholders.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from bkdsearch.core.optim import scale_milestones
from bkdsearch.core.trainer import Trainer

CONFIG: dict[str, Any] = {}
TEACHER_CHECKPOINT: str | None = None


class Config(dict):
    """Attribute access over the embedded configuration (the fields of bkdsearch's RunConfig)."""

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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _milestones(text: str) -> list[int]:
    try:
        return [int(m) for m in text.split(",") if m.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected epochs like 150,180,210, got {text!r}") from None


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
    parser.add_argument("--epochs", type=_positive_int, default=train["epochs"],
                        help="training epochs; explicit lr milestones scale with them")
    parser.add_argument("--milestones", type=_milestones, default=None,
                        help="lr milestones as comma-separated epochs; None: the trial's, scaled to --epochs")
    parser.add_argument("--out", default="run", help="output folder (checkpoints, metrics.jsonl, student.pt)")
    parser.add_argument("--val-fraction", type=_fraction, default=0.0,
                        help="validation share of the training set (0: train on all of it)")
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
    data["root"], data["val_fraction"] = args.data, args.val_fraction
    train["epochs"] = args.epochs
    cfg["runtime"]["device"] = args.device
    return args, cfg


def main(argv: list[str] | None = None) -> None:
    """Train the exported configuration and print each epoch and the test accuracy."""
    args, cfg = parse_args(argv)

    def report(epoch: int, row: dict[str, float]) -> None:
        val = f", val {row['val_acc']:.2f}%" if "val_acc" in row else ""
        print(f"epoch {epoch}/{args.epochs}: loss {row['loss']:.4f}{val} ({row['images_per_s']:.0f} img/s)",
              flush=True)

    trainer = Trainer(Config(cfg), args.out, teacher_weights=args.teacher_checkpoint if cfg["method"] != "ce"
                      else None, on_epoch=report)
    result = trainer.fit(resume=True)
    print(f"test accuracy {result.test_acc:.2f}%; student weights: {result.student_path}")


if __name__ == "__main__":
    main()
