"""The names of the model zoo's architectures, without importing torch: the ``enum`` of the
``arch`` fields in the spec's JSON Schema (editor completion).

The registry (:func:`bkdsearch.core.recipe.zoo.list_models`) stays the authority: a spec is checked
against it (``unknown model ...; known: ...``), and a test asserts this tuple equals it, so
registering a model means adding its name here too.
"""

from __future__ import annotations

ARCH_NAMES: tuple[str, ...] = (
    "MobileNetV2",
    "ResNet50",
    "ShuffleV1",
    "ShuffleV2",
    "mobilenet_v2",
    "resnet110",
    "resnet14",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet32x4",
    "resnet34",
    "resnet44",
    "resnet50",
    "resnet56",
    "resnet8",
    "resnet8x4",
    "vgg13",
    "vgg8",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
)
"""Every registered architecture name, sorted as :func:`bkdsearch.core.recipe.zoo.list_models` returns them."""
