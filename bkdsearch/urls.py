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

# What a user or password may not hold unencoded (RFC 3986): with one of these, where the
# userinfo ends cannot be known for sure, so none of it is shown.
_UNSAFE = re.compile(r"[@/?#\s\"'<>\\\[\]]|%(?![0-9A-Fa-f]{2})")

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
    bare = text.strip()
    sep = bare.find("://")
    ats = list(_AT_HOST.finditer(bare, sep + 3))
    if ats and _UNSAFE.search(bare, sep + 3, ats[-1].start()):
        return text  # not reliably parsed: the plain masking hides all of the userinfo
    try:
        from sqlalchemy.engine import make_url

        url = make_url(bare)
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
            # A password holding what must be encoded was not parsed reliably: its user goes too.
            shown_to = start if not _UNSAFE.search(line, start, ats[-1].start()) else sep + 3
            out.append(line[pos:shown_to] + MASK)
            pos = ats[-1].start()
        sep = line.find("://", max(start, pos))
    out.append(line[pos:])
    return "".join(out)


SQLITE_EXAMPLE = "sqlite:///studies/x.db"
"""A SQLite storage URL naming a file, for messages."""


def storage_url_problem(url: str, *, in_memory: bool = False) -> str | None:
    """Return why the storage URL ``url`` cannot hold a study, from its form alone (no
    connection is made), or None: a user or password with characters that must be
    percent-encoded, a SQLite URL without a file (``sqlite:///``; in-memory
    ``sqlite:///:memory:`` too unless ``in_memory``: a study of the command line there would
    vanish with the process), or a MySQL charset the driver does not know. The message never
    contains the password."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - a malformed URL: opening the storage says so
        return None
    userinfo = _raw_userinfo(url)
    if userinfo is not None and _UNSAFE.search(userinfo):
        return (f"storage {redact(url)}: its user or password holds characters that must be percent-encoded "
                "('@', '/', '?', '#', spaces, quotes, a '%' not starting %XX), so where it ends is unsure; "
                "encode them, e.g. with python3 -c 'import urllib.parse,sys; print(urllib.parse.quote(sys.argv[1], "
                "safe=\"\"))' PASSWORD")
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        memory = database == ":memory:" or database.startswith("file::memory:")
        if not database or (memory and not in_memory):
            what = "an in-memory database" if database else "no file"
            return f"storage {redact(url)} names {what}; give a file: {SQLITE_EXAMPLE}"
        return None
    charset = parsed.query.get("charset")
    if parsed.get_backend_name() == "mysql" and parsed.get_driver_name() == "pymysql" and charset is not None:
        try:
            from pymysql.charset import charset_by_name
        except ImportError:  # no driver: opening the storage says so
            return None
        names = [charset] if isinstance(charset, str) else list(charset)
        unknown = [n for n in names if charset_by_name(n) is None]
        if unknown:
            return f"unknown charset {unknown[0]!r} in storage {redact(url)}; use e.g. ?charset=utf8mb4"
    return None


def _raw_userinfo(url: str) -> str | None:
    """The text between ``scheme://`` and the last ``@`` before a host in ``url`` as written
    (its user and password, unencoded characters and all); None without one."""
    sep = url.find("://")
    if sep < 0:
        return None
    ats = list(_AT_HOST.finditer(url, sep + 3))
    return url[sep + 3:ats[-1].start()] if ats else None
