"""What the commands share: the consoles, the studies folder, loading a spec (its errors
printed, exit 2) and the study name a command works on."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from ..urls import redact

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

STUDIES = Path("studies")
STUDY_HELP = "Study name: letters, digits, '-', '_', '.'; 1 to 64 characters"


def load_spec_or_exit(spec_path: str) -> Any:
    """Return the spec at ``spec_path``; on a bad spec, print its errors and exit with 2."""
    from ..spec import SpecError, load_spec

    try:
        return load_spec(spec_path)
    except SpecError as exc:
        err.print(redact(exc.format(spec_path)), soft_wrap=True, markup=False)
        err.print(f"{len(exc.errors)} error(s) in {spec_path}")
        sys.exit(2)


def study_name_of(given: str | None, spec: Any | None) -> str | None:
    """The study a command works on: ``--study`` (checked against the naming rule), else
    the spec's name (checked too), else None.

    Raises:
        PreflightError: the name breaks the rule (exit 2).
    """
    from ..preflight import check_study_name

    if given is not None:
        return check_study_name(given, "--study")
    if spec is not None:
        return check_study_name(spec.name, "name (the spec's, used as the study name)")
    return None



def device_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--devices`` (one device: auto, cpu, cuda, cuda:N), the name ``run`` and ``confirm``
    use, passed as ``device``; the old ``--device`` still works for a release, with a notice."""

    @functools.wraps(fn)
    def wrapper(*args: Any, device_alias: str | None = None, **kwargs: Any) -> Any:
        if device_alias is not None:
            err.print("note: --device is now --devices, as in `run` and `confirm`; the old name works "
                      "until the next release", soft_wrap=True)
            kwargs["device"] = kwargs.get("device") or device_alias
        return fn(*args, **kwargs)

    wrapper = click.option("--device", "device_alias", default=None, hidden=True)(wrapper)
    return click.option("--devices", "device", default=None, help="auto, cpu, cuda, cuda:N.")(wrapper)
