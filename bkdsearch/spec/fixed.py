"""A study's fixed configuration: what every trial of a spec shares, as flat ``section.key``
values, its digest, and how two of them differ.

The fixed configuration is the spec after ``run --set``, without

- the values the search chooses (a searched parameter shows as :data:`SEARCHED`: fixing it
  or starting to search it is a difference, its range is the search's business);
- what only changes how or where trials run, never what they compute: the spec's name (the
  study's is ``--study``), its storage URL, ``runtime`` (devices, precision, graphs), the
  search's bookkeeping (cap, timeout, sampler, pruner, objectives, enqueued trials: the study
  checks its objectives itself) and the data section's ``root``, ``download``,
  ``num_workers``, ``decode`` and ``eval_batch_size`` (where the files are and how batches are
  read; another machine may keep them elsewhere).

Two workers whose fixed configurations are equal train comparable trials; a study records
the first one's (:func:`bkdsearch.search.study.open_study`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .schema import Choice, FloatRange, IntRange, SearchBlockKD, Spec

SEARCHED = "<searched>"
"""The value of a searched parameter in a fixed configuration."""

METHOD_DEFAULT = "<method's default>"
"""The value of a Block-KD weight the spec leaves to the method (kd's published 0.1/0.9,
dkd's warm-up share): what the run uses depends on the method, not on a number given."""

ABSENT = "<not given>"
"""How :func:`config_differences` shows a key one configuration does not have."""

_RUNTIME_TOP = ("name", "storage", "runtime", "search")
_RUNTIME_DATA = ("root", "download", "num_workers", "decode", "eval_batch_size")
_SEARCH_KEPT = ("fidelity",)  # the search settings that change what a trial trains
_METHOD_DEFAULTS = ("alpha", "beta", "dkd_warmup")


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value


def fixed_configuration(spec: Spec) -> dict[str, Any]:
    """Return the fixed configuration of ``spec`` (see the module's docstring): flat
    ``section.key`` names to JSON values, sorted by name."""
    data = spec.model_dump(mode="json", by_alias=True)
    for section, prefix in ((spec.train, "train"), (spec.blockkd, "blockkd")):
        for key in type(section).model_fields:
            if isinstance(getattr(section, key), FloatRange | IntRange | Choice):
                data[prefix][key] = SEARCHED
    if isinstance(spec.method, Choice):
        data["method"] = SEARCHED
    for key in _METHOD_DEFAULTS:
        if key not in spec.blockkd.model_fields_set and data["blockkd"][key] != SEARCHED:
            data["blockkd"][key] = METHOD_DEFAULT
    kept_search = {k: data["search"][k] for k in _SEARCH_KEPT if data["search"].get(k) is not None}
    for key in _RUNTIME_TOP:
        data.pop(key, None)
    for key in _RUNTIME_DATA:
        data["data"].pop(key, None)
    if kept_search:
        data["search"] = kept_search
    flat: dict[str, Any] = {}
    _flatten(data, "", flat)
    return dict(sorted(flat.items()))


def config_digest(config: dict[str, Any]) -> str:
    """Return a short stable hash (12 hex digits) of a fixed configuration."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def config_differences(recorded: dict[str, Any], given: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Return ``(name, recorded value, given value)`` for every name whose values differ
    (a name only one of them has shows :data:`ABSENT` on the other side), sorted by name."""
    names = sorted(set(recorded) | set(given))
    return [(n, recorded.get(n, ABSENT), given.get(n, ABSENT)) for n in names
            if recorded.get(n, ABSENT) != given.get(n, ABSENT)]


def set_arguments(differences: list[tuple[str, Any, Any]]) -> list[str]:
    """Return ``KEY=VALUE`` for ``run --set`` giving the recorded side of ``differences``,
    where ``--set`` can give it (a plain value of a key it accepts)."""
    from .resolve import _TRAIN_KEYS, SPEC_KEYS

    settable = {*SPEC_KEYS, "seed", "method", *(f"train.{k}" for k in _TRAIN_KEYS)}
    settable |= {f"blockkd.{k}" for k in SearchBlockKD.model_fields}
    out = []
    for name, recorded, _ in differences:
        if name in settable and recorded not in (SEARCHED, METHOD_DEFAULT, ABSENT):
            out.append(f"{name}={json.dumps(recorded) if not isinstance(recorded, str) else recorded}")
    return out
