"""Opening an Optuna RDB storage from a URL (SQLite, PostgreSQL, MySQL/MariaDB), and the
secrets of a URL that must never be printed.

Storages on a server (PostgreSQL, MySQL/MariaDB) wait for it through outages
(:mod:`bkdsearch.search.patient`, ``BKDSEARCH_STORAGE_PATIENCE_S``); SQLite files do not.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

from optuna.storages import BaseStorage, RDBStorage
from sqlalchemy.exc import SQLAlchemyError

from ..errors import StorageError
from ..urls import redact, storage_url_problem
from .heartbeat import MAX_RETRY, RetryDeadTrial, heartbeat_settings
from .optuna_seam import with_cache
from .patient import PatientStorage, patience_setting

POOL_RECYCLE_S = 1800
"""Server connections are replaced after this many seconds (before a server's or a
firewall's idle timeout cuts them); dead ones are caught by ``pool_pre_ping`` anyway."""


SHORT_SECRET = 4
"""A literal secret shorter than this is masked only as a whole word: a one-letter password
"p" must not turn "mysql+pymysql" into "mysql+***ymysql"."""


def clean(text: str, secrets: list[str]) -> str:
    """``text`` with URL passwords (and the literal ``secrets``) replaced by ``***``; a short
    secret (under :data:`SHORT_SECRET` characters) only where no letter or digit touches it."""
    import re

    text = redact(text)
    for secret in secrets:
        if len(secret) >= SHORT_SECRET:
            text = text.replace(secret, "***")
        else:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
    return text


def _creation_race(exc: BaseException) -> bool:
    """True for the errors of several processes creating Optuna's tables at once."""
    text = str(exc).lower()
    return any(s in text for s in ("already exists", "duplicate", "unique", "deadlock", "lock wait"))


def make_storage(url: str, *, create: bool = True) -> BaseStorage:
    """Return an RDB storage for ``url`` with heartbeats and retry of trials whose worker died.

    SQLite gets a busy timeout and WAL journaling so several local workers do not hit
    "database is locked"; a server (PostgreSQL, MySQL/MariaDB) a connect timeout, TCP
    keepalives (PostgreSQL) or read/write timeouts (MySQL) so a vanished host is noticed,
    recycled connections, and a :class:`~bkdsearch.search.patient.PatientStorage` whose calls
    wait for the server through an outage (up to ``BKDSEARCH_STORAGE_PATIENCE_S`` seconds).
    ``create=False`` refuses a SQLite file that does not exist yet (for commands that only
    read, e.g. ``status``).

    Raises:
        StorageError: malformed URL, a SQLite URL without a file, an unknown MySQL charset,
            missing driver, missing SQLite file (``create=False``),
            a bad ``BKDSEARCH_STORAGE_PATIENCE_S``, or a server unreachable at the start;
            the message never contains the password.
    """
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - sqlalchemy raises ArgumentError, ValueError, ...
        raise StorageError(
            f"malformed storage URL {redact(url)!r}: expected e.g. sqlite:///studies/NAME.db, "
            "postgresql+psycopg://USER@HOST/DB or mysql+pymysql://USER@HOST/DB") from None
    secrets = url_secrets(url)
    shown = clean(url, secrets)
    problem = storage_url_problem(url, in_memory=True)  # a program may keep a study in memory
    if problem is not None:
        raise StorageError(clean(problem, secrets))
    beat, grace = heartbeat_settings()
    patience = patience_setting()
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    backend = parsed.get_backend_name()
    server = backend in ("postgresql", "mysql")
    if backend == "sqlite":
        db = parsed.database or ""
        if db != ":memory:" and not db.startswith("file:"):
            path = Path(db)
            if not create and not path.is_file():
                raise StorageError(f"no SQLite database at {path} (storage {shown})")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
                raise StorageError(f"cannot create the folder of storage {shown}: "
                                   f"{getattr(exc, 'strerror', None) or exc}") from None
        kwargs = {"connect_args": {"timeout": 60}}
    elif server:
        _pool_errors_on_one_line()
        kwargs["pool_recycle"] = POOL_RECYCLE_S
        kwargs["connect_args"] = _server_connect_args(backend, parsed.get_driver_name(), set(parsed.query))
    attempts = 6
    for attempt in range(attempts):
        try:
            options: dict[str, Any] = dict(
                engine_kwargs=kwargs, heartbeat_interval=beat, grace_period=grace,
                heartbeat_stale_trial_callback=RetryDeadTrial(max_retry=MAX_RETRY, inherit_intermediate_values=True))
            storage = (with_cache(PatientStorage(url, patience_s=patience, where=shown, **options)) if server
                       else RDBStorage(url, **options))
            break
        except Exception as exc:  # noqa: BLE001 - sqlalchemy raises many types; all mean "this URL does not work"
            if attempt < attempts - 1 and _creation_race(exc):
                time.sleep(0.2 + random.random())
                continue
            from ..core.engine.weights import first_line  # here: reading commands open storages without torch

            raise StorageError(f"cannot open storage {shown}: {clean(first_line(exc), secrets)}") from None
    if isinstance(storage, RDBStorage):  # SQLite
        with contextlib.suppress(SQLAlchemyError), storage.engine.connect() as conn:  # WAL is an optimisation
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    return storage


def _server_connect_args(backend: str, driver: str, given: set[str]) -> dict[str, Any]:
    """Driver options that bound how long a dead server or host can hold a call (options
    given in the URL's query win)."""
    if backend == "postgresql":
        # libpq: fail a connection attempt after 10 s; probe an idle connection after 30 s
        # of silence, and drop it after 3 unanswered probes 10 s apart.
        wanted: dict[str, Any] = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30,
                                  "keepalives_interval": 10, "keepalives_count": 3}
        if driver not in ("psycopg", "psycopg2"):
            wanted = {"connect_timeout": 10} if driver != "pg8000" else {}
    elif driver in ("pymysql", "mysqldb", "mysqlconnector"):
        # No answer to a query for 2 minutes means a dead connection (innodb_lock_wait_timeout
        # is 50 s by default, so a wait for a lock is not cut short).
        wanted = {"connect_timeout": 10}
        if driver in ("pymysql", "mysqldb"):
            wanted.update(read_timeout=120, write_timeout=120)
    else:
        wanted = {}
    return {k: v for k, v in wanted.items() if k not in given}


_QUERY_SECRETS = ("password", "passwd", "pwd")


def url_secrets(url: str) -> list[str]:
    """The secrets of a storage URL: its password, decoded, and any ``?password=`` style
    query values (what :func:`bkdsearch.urls.redact` may not see)."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:  # noqa: BLE001
        return []
    found = [parsed.password] if isinstance(parsed.password, str) else []
    for key, value in parsed.query.items():
        if key.lower() in _QUERY_SECRETS:
            found += [value] if isinstance(value, str) else list(value)
    return sorted({s for s in found if s}, key=len, reverse=True)


class _FirstLineOnly(logging.Formatter):
    """``message (ErrorType: first line of the error)``: no traceback."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            text += f" ({type(error).__name__}: {redact(str(error).splitlines()[0] if str(error) else '')})"
        return f"storage: {text}"


def _pool_errors_on_one_line() -> None:
    """During a server outage SQLAlchemy's pool logs each connection it cannot reset with a
    whole traceback ("Exception during reset or similar"); the patient storage already says
    that the server is out and when it is back, so those become one line each on stderr."""
    pool = logging.getLogger("sqlalchemy.pool")
    if any(isinstance(h.formatter, _FirstLineOnly) for h in pool.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_FirstLineOnly())
    handler.setLevel(logging.WARNING)
    pool.addHandler(handler)
    pool.propagate = False
