"""The recipe: one Block-KD run in plain PyTorch, written to be read and to be inlined into
an exported script.

``zoo`` (model families, atoms, weights), ``cuts`` / ``partitions`` (where the networks are
cut), ``stones`` (connectors, stepping-stones), ``losses`` (pure tensor functions),
``methods`` (ce / kd / dkd / blockkd, one small module each), ``data`` (datasets, split,
loaders), ``optim`` (optimiser and schedule), ``distributed`` (DDP under torchrun),
``loop`` (``train_one_epoch``, ``evaluate``, ``fit`` with per-epoch checkpoint and resume)
and ``errors``. It imports nothing of the engine, the spec, the search or the CLI
(tests/test_architecture.py checks it).
"""
