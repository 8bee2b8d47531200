"""The declarative side: the spec format, :class:`RunConfig`, resolution and loading.

``schema`` (the spec file's sections and search distributions), ``config`` (the resolved
:class:`RunConfig`), ``resolution`` (spec + suggestions -> RunConfig, partitions to cut atoms),
``checks`` (semantic checks pydantic cannot see), ``errors`` (pydantic errors -> SpecError
with YAML lines) and ``loading`` (YAML files, ``--set`` overrides). Import from
``bkdsearch.spec``.

Each public name is imported on first use (PEP 562): ``schema``, ``config`` and ``loading``
need pydantic and PyYAML only, so ``bkdsearch schema`` and reading a spec never import torch;
``resolution`` (and the checks ``parse_spec`` runs) build models, and import it when first used.
The submodule is not called ``resolve``: importing it would set the package's attribute
``resolve`` (the function) to the module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_attributes

if TYPE_CHECKING:  # what the lazy names resolve to, for type checkers and editors
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
    from .resolution import Defaults, Suggest, parameter_names, resolve, resolve_partition, searched
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
        spec_json_schema,
    )

_WHERE = {
    "SpecError": "bkdsearch.errors",
    **dict.fromkeys(("BlockKDConfig", "DataConfig", "LossConfig", "ModelConfig", "PartitionConfig", "Recipe",
                     "RunConfig", "RuntimeConfig"), "bkdsearch.spec.config"),
    **dict.fromkeys(("load_spec", "parse_overrides", "parse_spec"), "bkdsearch.spec.loading"),
    **dict.fromkeys(("Defaults", "Suggest", "parameter_names", "resolve", "resolve_partition", "searched"),
                    "bkdsearch.spec.resolution"),
    **dict.fromkeys(("METHODS", "Choice", "Distribution", "ExplicitPartition", "FloatRange", "GeneratedPartition",
                     "IntRange", "SearchSettings", "Spec", "TeacherSpec", "spec_json_schema"),
                    "bkdsearch.spec.schema"),
}
"""The module each public name lives in."""

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
    "spec_json_schema",
]


__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, __all__)

