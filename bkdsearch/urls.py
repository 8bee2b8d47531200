"""Storage URLs: passwords never reach logs, user attrs, reports or exported scripts."""

from __future__ import annotations

import re

_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<at>@)")


def redact(text: str) -> str:
    """Return ``text`` with the password of every URL in it replaced by ``***``."""
    return _PASSWORD.sub(lambda m: f"{m['head']}***{m['at']}", text)
