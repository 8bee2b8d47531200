"""The runtime: everything one training run needs and nothing else, importing only torch,
torchvision, numpy and the standard library.

``zoo`` (models, registry, atoms, weights), ``data`` (datasets, split, loaders),
``partitions`` (cut points, blocks, generators), ``stones`` (connectors, stepping-stones),
``losses`` (pure tensor functions), ``methods`` (ce / kd / dkd / blockkd), ``optim``
(optimiser and schedule), ``cuda_graph`` (graph capture of a step), ``trainer`` (the loop)
and ``errors`` (the root of bkdsearch's errors). An exported script inlines exactly the
parts of these a trial reaches, so core never imports the spec or search side.
"""
