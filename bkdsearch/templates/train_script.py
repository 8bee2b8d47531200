"""Template of the exported script's entry point (the part after the inlined modules).

Only the text after the marker is copied into exported scripts; it uses names defined by
the inlined bkdsearch modules (Trainer, ...).
"""
# ruff: noqa: F821
# --- template ---


class Config(dict):
    """Attribute access over the embedded JSON configuration (what RunConfig holds)."""

    def __getattr__(self, name):
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return Config(value) if isinstance(value, dict) else value

    def digest(self):
        """A short hash of what the run computes (``runtime`` only says how it executes)."""
        import hashlib

        blob = json.dumps({k: v for k, v in self.items() if k != "runtime"}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def main(argv=None):
    import argparse

    cfg_dict = json.loads(CONFIG_JSON)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=cfg_dict["data"]["root"], help="dataset root folder")
    parser.add_argument("--teacher-checkpoint", default=(cfg_dict.get("teacher") or {}).get("checkpoint"),
                        help="teacher weights (plain state dict or {'model': ...}); needed unless method is ce")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--epochs", type=int, default=cfg_dict["train"]["epochs"])
    parser.add_argument("--out", default="run", help="output folder (checkpoints, metrics.jsonl, student.pt)")
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="validation share of the training set (default 0: train on all of it)")
    args = parser.parse_args(argv)
    cfg_dict["data"]["root"] = args.data
    cfg_dict["data"]["val_fraction"] = args.val_fraction
    cfg_dict["train"]["epochs"] = args.epochs
    cfg_dict["runtime"]["device"] = args.device
    cfg = Config(cfg_dict)

    def report(epoch, row):
        val = f" val {row['val_acc']:.2f}%" if "val_acc" in row else ""
        print(f"epoch {epoch}/{args.epochs} loss {row['loss']:.4f}{val} ({row['images_per_s']:.0f} img/s)")

    trainer = Trainer(cfg, args.out, teacher_weights=args.teacher_checkpoint, on_epoch=report, progress=False)
    result = trainer.fit(resume=True)
    print(f"test accuracy {result.test_acc:.2f}%  student weights: {result.student_path}")


if __name__ == "__main__":
    main()
