"""Storage URLs: passwords never reach logs, user attrs, reports or exported scripts.

A password may hold any character, spaces, ``@``, ``:``, ``/``, ``#`` and ``%`` included,
encoded or not, so :func:`redact` errs on the side of hiding too much: in a URL
``scheme://user:...@host`` everything from after ``user:`` to the *last* ``@`` that
precedes a host (before the next URL or the end of the line) is hidden.
"""

from __future__ import annotations

import re

MASK = "***"

# After "scheme://": the user part (no ':', '/', '@' or whitespace: encoded, they are %xx) and ':'.
_USER = re.compile(r"[^:/@\s]*:")

_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")

# An '@' followed by what a host starts with (a name, an address, [IPv6]).
_AT_HOST = re.compile(r"@(?=[A-Za-z0-9_\[%-])")

# A password given as a query value: up to the next '&', '#', whitespace or quote.
_QUERY_PASSWORD = re.compile(r"(?i)([?&;](?:password|passwd|pwd)=)[^&#\s'\"]*")

# The same, in a text that is one URL alone: spaces belong to the value.
_QUERY_PASSWORD_WHOLE = re.compile(r"(?i)([?&;](?:password|passwd|pwd)=)[^&#]*")

# A text that is one URL alone (no line break), perhaps with spaces in it.
_ONE_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\r\n]*")


def redact(text: str) -> str:
    """Return ``text`` with the password of every URL in it replaced by ``***``: a
    ``user:password@`` part and a ``password=`` (or ``passwd=``, ``pwd=``) query value.

    A text that is one URL alone is parsed as SQLAlchemy does (``make_url``) and written back
    with its password hidden; any other text, or a URL SQLAlchemy cannot parse (or parses
    with an ``@`` left in its host), is masked from after ``user:`` to the last ``@`` before
    the host. Text without URLs comes back unchanged.
    """
    if not isinstance(text, str) or "://" not in text and "=" not in text:
        return text
    bare = text.strip()
    whole = _ONE_URL.fullmatch(bare) is not None and "://" not in bare[bare.find("://") + 3:]
    if whole:
        text = _redact_one_url(text)
    if "://" in text:
        text = _mask_userinfo(text)
    return (_QUERY_PASSWORD_WHOLE if whole else _QUERY_PASSWORD).sub(lambda m: m[1] + MASK, text)


def _redact_one_url(text: str) -> str:
    """``text`` (one URL) rebuilt by SQLAlchemy with its password hidden; ``text`` itself
    when SQLAlchemy cannot parse it, it has no password, or the parse looks wrong."""
    try:
        from sqlalchemy.engine import make_url

        url = make_url(text.strip())
        if url.password is None or "@" in (url.host or ""):
            return text
        shown = url.render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - any failure to parse: the plain masking below applies
        return text
    password = str(url.password)
    if password and password in shown.replace(MASK, ""):
        return text
    lead = text[:len(text) - len(text.lstrip())]
    return lead + shown + text[len(text.rstrip()):]


def _scheme_start(text: str, sep: int) -> int | None:
    """The index where the scheme before the ``://`` at ``sep`` starts; None when there is none
    (looking back at most 64 characters, so that long texts stay linear)."""
    i = sep
    while i > 0 and sep - i < 64 and text[i - 1] in _SCHEME_CHARS:
        i -= 1
    return i if i < sep and text[i].isalpha() else None


def _next_url(line: str, start: int) -> int:
    """Where the next URL (its scheme) after ``start`` begins in ``line``; its end when none."""
    sep = line.find("://", start)
    while sep >= 0:
        scheme = _scheme_start(line, sep)
        if scheme is not None:
            return max(start, scheme)
        sep = line.find("://", sep + 3)
    return len(line)


def _mask_userinfo(text: str) -> str:
    """Mask ``user:password@`` in every URL of ``text``: from after ``user:`` to the last
    ``@`` followed by a host, looking no further than the next URL or line break."""
    return "".join(_mask_line(line) if "://" in line else line for line in text.splitlines(keepends=True))


def _mask_line(line: str) -> str:
    out: list[str] = []
    pos = 0
    sep = line.find("://")
    while sep >= 0:
        user = _USER.match(line, sep + 3) if _scheme_start(line, sep) is not None else None
        if user is None:
            sep = line.find("://", sep + 3)
            continue
        start = user.end()
        ats = list(_AT_HOST.finditer(line, start, _next_url(line, start)))
        if ats:
            out.append(line[pos:start] + MASK)
            pos = ats[-1].start()
        sep = line.find("://", max(start, pos))
    out.append(line[pos:])
    return "".join(out)
