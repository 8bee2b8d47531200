"""Commands that only read a study never create a database; no error message of the
command line shows a storage password."""

import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import TINY_SPEC, write_spec

from bkdsearch.cli import handle_errors, main
from bkdsearch.errors import StorageError


def _missing(tmp_path):
    """A SQLite URL in a folder that does not exist either (mkdir would betray creation)."""
    path = tmp_path / "nowhere" / "typo.db"
    return path, f"sqlite:///{path}"


@pytest.mark.parametrize("command", [
    ["status"],
    ["status", "--json", "--study", "tiny"],
    ["export", "--study", "tiny", "--trial", "best", "-o", "{tmp}/train.py"],
    ["report", "--study", "tiny", "-o", "{tmp}/report"],
])
def test_reading_a_missing_sqlite_database_exits_2_and_creates_nothing(tmp_path, command):
    path, url = _missing(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    result = CliRunner().invoke(main, [*args, "--storage", url])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert isinstance(result.exception, SystemExit)  # handled, not an escaped exception
    assert f"no SQLite database at {path}" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no database, no folder for it, no script or report


def test_status_of_a_spec_never_run_creates_nothing(tmp_path, monkeypatch):
    """The spec's default storage (sqlite:///studies/<name>.db) before its first run."""
    spec = write_spec(tmp_path / "s.yaml", TINY_SPEC)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["status", spec])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "no SQLite database at studies/tiny.db" in result.stderr
    assert not (tmp_path / "studies").exists()


def test_dashboard_on_a_missing_database_exits_2_without_serving(tmp_path):
    path, url = _missing(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # A server that started would never exit: the timeout turns that into a failure.
    r = subprocess.run([sys.executable, "-m", "bkdsearch.cli", "dashboard", "--storage", url, "--port", str(port)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f"no SQLite database at {path}" in r.stderr and "Traceback" not in r.stderr
    assert not path.parent.exists()


@handle_errors
def _raise(exc: BaseException) -> None:
    raise exc


@pytest.mark.parametrize("exc, code, shown", [
    (RuntimeError("cannot reach postgresql+psycopg://bob:s3cret@db/x"), 1, "postgresql+psycopg://bob:***@db/x"),
    (ValueError("bad URL mysql+pymysql://bob@db/x?password=s3cret&charset=utf8"), 1, "?password=***&charset=utf8"),
    (StorageError("cannot open postgresql://bob:s3cret@db/x?pwd=s3cret"), 2, "postgresql://bob:***@db/x?pwd=***"),
])
def test_handle_errors_never_prints_a_password(capsys, exc, code, shown):
    with pytest.raises(SystemExit) as exit_:
        _raise(exc)
    assert exit_.value.code == code
    captured = capsys.readouterr()
    assert shown in captured.err  # the message itself still reaches the user
    assert "s3cret" not in captured.err + captured.out
