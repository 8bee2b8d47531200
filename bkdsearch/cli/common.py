"""What the commands share: the consoles, the studies folder, loading a spec (its errors
printed, exit 2) and the study name a command works on."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from ..urls import redact

if TYPE_CHECKING:  # loaded on first use: `bkdsearch schema` never imports the spec's models
    from ..spec import Spec

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

STUDIES = Path("studies")
STUDY_HELP = "Study name: letters, digits, '-', '_', '.'; 1 to 64 characters"


def load_spec_or_exit(spec_path: str) -> Spec:
    """Return the spec at ``spec_path``; on a bad spec, print its errors and exit with 2."""
    from ..spec import SpecError, load_spec

    try:
        return load_spec(spec_path)
    except SpecError as exc:
        err.print(redact(exc.format(spec_path)), soft_wrap=True, markup=False)
        err.print(f"{len(exc.errors)} error(s) in {spec_path}")
        sys.exit(2)


def study_name_of(given: str | None, spec: Spec | None) -> str | None:
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

