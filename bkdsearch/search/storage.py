"""Opening an Optuna RDB storage from a URL (SQLite, PostgreSQL, MySQL/MariaDB), and the
secrets of a URL that must never be printed."""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path
from typing import Any

from optuna.storages import RDBStorage

from ..core.zoo.weights import first_line
from ..errors import StorageError
from ..urls import redact
from .heartbeat import MAX_RETRY, RetryDeadTrial, heartbeat_settings


def clean(text: str, secrets: list[str]) -> str:
    """``text`` with URL passwords (and the literal ``secrets``) replaced by ``***``."""
    text = redact(text)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _creation_race(exc: BaseException) -> bool:
    """True for the errors of several processes creating Optuna's tables at once."""
    text = str(exc).lower()
    return any(s in text for s in ("already exists", "duplicate", "unique", "deadlock", "lock wait"))


def make_storage(url: str, *, create: bool = True) -> RDBStorage:
    """Return an RDB storage for ``url`` with heartbeats and retry of trials whose worker died.

    SQLite gets a busy timeout and WAL journaling so several local workers do not hit
    "database is locked"; PostgreSQL a connect timeout. ``create=False`` refuses a SQLite
    file that does not exist yet (for commands that only read, e.g. ``status``).

    Raises:
        StorageError: malformed URL, missing driver, missing SQLite file (``create=False``)
            or unreachable server; the message never contains the password.
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
    beat, grace = heartbeat_settings()
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        db = parsed.database or ""
        if db and db != ":memory:" and not db.startswith("file:"):
            path = Path(db)
            if not create and not path.is_file():
                raise StorageError(f"no SQLite database at {path} (storage {shown})")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
                raise StorageError(f"cannot create the folder of storage {shown}: "
                                   f"{getattr(exc, 'strerror', None) or exc}") from None
        kwargs = {"connect_args": {"timeout": 60}}
    elif backend == "postgresql" and "connect_timeout" not in parsed.query:
        kwargs["connect_args"] = {"connect_timeout": 10}
    attempts = 6
    for attempt in range(attempts):
        try:
            storage = RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=beat, grace_period=grace,
                heartbeat_stale_trial_callback=RetryDeadTrial(max_retry=MAX_RETRY, inherit_intermediate_values=True),
            )
            break
        except Exception as exc:  # noqa: BLE001 - sqlalchemy raises many types; all mean "this URL does not work"
            if attempt < attempts - 1 and _creation_race(exc):
                time.sleep(0.2 + random.random())
                continue
            raise StorageError(f"cannot open storage {shown}: {clean(first_line(exc), secrets)}") from None
    if backend == "sqlite":
        with contextlib.suppress(Exception), storage.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    return storage


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
