"""How this tool was started, so that the commands it prints for the user to run start it
the same way (``bkdsearch``, ``.venv/bin/bkdsearch`` or ``python -m bkdsearch``)."""

from __future__ import annotations

import os
import shutil
import sys


def program() -> list[str]:
    """Return the words that start this tool again from the shell it was started in: plain
    ``bkdsearch`` when that name on ``PATH`` is this installation, else the path it was
    invoked by (``.venv/bin/bkdsearch``, relative when it was given so), else
    ``PYTHON -m bkdsearch`` with the interpreter that runs now (``python -m bkdsearch``)."""
    invoked = sys.argv[0] if sys.argv and sys.argv[0] else ""
    on_path = shutil.which("bkdsearch")
    if os.path.basename(invoked) == "bkdsearch":  # the console script
        if on_path and _same_file(on_path, invoked):
            return ["bkdsearch"]
        return [invoked if os.sep in invoked else os.path.abspath(invoked)]
    # `python -m bkdsearch`: the script beside this interpreter is the same installation.
    if on_path and _same_file(os.path.dirname(on_path), os.path.dirname(sys.executable)):
        return ["bkdsearch"]
    python = shutil.which("python")
    return ["python" if python and _same_file(python, sys.executable) else sys.executable, "-m", "bkdsearch"]


def _same_file(a: str, b: str) -> bool:
    """True when paths ``a`` and ``b`` name one file (False when either is missing)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
