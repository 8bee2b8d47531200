"""The engine: runs the recipe inside the tool.

``trainer`` (:class:`Trainer`: the recipe's step eager on the CPU, captured in a CUDA graph on
a GPU; progress and stop hooks; checkpoints that resume across runtimes) and ``cuda_graph``
(the capture). It imports the recipe; the recipe never imports it.
"""
