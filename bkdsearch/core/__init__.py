"""The runtime, in two layers with arrows one way: ``engine`` -> ``recipe``.

``recipe`` is what a run *is*, in plain PyTorch: model families, cuts, stepping-stones,
losses, methods, data, optimiser and schedule, and the loop (``train_one_epoch``,
``evaluate``, ``fit``). An exported script inlines the recipe and nothing else.

``engine`` is what makes a run fast and robust inside the tool: CUDA-graph capture, several
runs per device, progress and stop hooks, registries by name, friendly error wording and
resume across runtimes. ``bkdsearch train`` and every trial go through it; on the CPU its
step is the recipe's step.

Both import only torch, torchvision, numpy and the standard library.
"""
