"""Storage URLs: passwords never reach logs, user attrs, reports or exported scripts."""

from __future__ import annotations

import re

_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<at>@)")


_QUERY_PASSWORD = re.compile(r"(?i)([?&](?:password|passwd|pwd)=)[^&\s]*")


def redact(text: str) -> str:
    """Return ``text`` with the password of every URL in it (user:password@ or a
    ``?password=`` query value) replaced by ``***``."""
    text = _PASSWORD.sub(lambda m: f"{m['head']}***{m['at']}", text)
    return _QUERY_PASSWORD.sub(r"\1***", text)
