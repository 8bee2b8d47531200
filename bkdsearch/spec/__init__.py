"""The declarative side: the spec format, :class:`RunConfig`, resolution and loading.

``schema`` (the spec file's sections and search distributions), ``config`` (the resolved
:class:`RunConfig`), ``resolve`` (spec + suggestions -> RunConfig, partitions to cut atoms),
``checks`` (semantic checks pydantic cannot see), ``errors`` (pydantic errors -> SpecError
with YAML lines) and ``loading`` (YAML files, ``--set`` overrides). Import from
``bkdsearch.spec``.
"""

from __future__ import annotations

from ..errors import SpecError
from .config import (
    BlockKDConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    PartitionConfig,
    Recipe,
    RunConfig,
    RuntimeConfig,
)
from .loading import load_spec, parse_overrides, parse_spec
from .resolve import Defaults, Suggest, parameter_names, resolve, resolve_partition, searched
from .schema import (
    METHODS,
    Choice,
    Distribution,
    ExplicitPartition,
    FloatRange,
    GeneratedPartition,
    IntRange,
    SearchSettings,
    Spec,
    TeacherSpec,
)

__all__ = [
    "METHODS",
    "BlockKDConfig",
    "Choice",
    "DataConfig",
    "Defaults",
    "Distribution",
    "ExplicitPartition",
    "FloatRange",
    "GeneratedPartition",
    "IntRange",
    "LossConfig",
    "ModelConfig",
    "PartitionConfig",
    "Recipe",
    "RunConfig",
    "RuntimeConfig",
    "SearchSettings",
    "Spec",
    "SpecError",
    "Suggest",
    "TeacherSpec",
    "load_spec",
    "parameter_names",
    "parse_overrides",
    "parse_spec",
    "resolve",
    "resolve_partition",
    "searched",
]
