"""Storage outages: workers wait for a database server that goes away (``patient.py``).

How grace and patience interact: during an outage no heartbeat can be recorded, so after
one longer than ``BKDSEARCH_GRACE_S`` every running trial looks stale to the stale check.
A worker that saw the outage therefore reports no stale trials until the server has been
back for one grace period (``PatientStorage.outage_ended_at``); by then the heartbeat
threads of live workers have beaten again, so only trials of really dead workers are failed
and retried. The study tests below use a grace period (10 s) *shorter* than the outage
(30 s) on purpose: they pass only because of that rule (every trial ends COMPLETE, none is
failed as stale). ``BKDSEARCH_STORAGE_PATIENCE_S`` (default 300 s) bounds how long a call
waits; past it the worker exits 1 and its trial is retried by another worker once the
server is back (after the grace period). A worker that did not see the outage (started
after it) cannot tell a cut-off worker from a dead one: against that, only a grace period
longer than the outage helps.
"""

import contextlib
import pickle
import re
import time
import uuid
from collections import Counter

import optuna
import pytest
import sqlalchemy
from click.testing import CliRunner
from conftest import SERVERS, _server_up, require
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState
from workerkit import finish, quick_spec, run_cmd, start, study_name

from bkdsearch.cli import main
from bkdsearch.errors import StorageError
from bkdsearch.search import make_storage, optuna_seam
from bkdsearch.search.patient import (
    BACKOFF_CAP_S,
    MAX_CONFLICT_RETRIES,
    WRITE_TOKEN,
    Patience,
    PatientStorage,
    StorageUnreachable,
    failure_kind,
    patience_setting,
)

START = "unreachable ("
BACK = "reachable again after"


# --------------------------------------------------------------------------- errors to raise

class _Driver(Exception):
    """A driver error with a PostgreSQL SQLSTATE / a MySQL error number."""

    def __init__(self, *args, sqlstate=None):
        super().__init__(*args)
        self.sqlstate = sqlstate


def _refused():
    """What connecting to a server that refuses connections raises (through optuna)."""
    cause = sqlalchemy.exc.OperationalError(None, None, _Driver("connection refused"))
    try:
        raise StorageInternalError("An exception is raised during the commit.") from cause
    except StorageInternalError as exc:
        return exc


def _dropped():
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, _Driver("server closed the connection"),
                                           connection_invalidated=True)


class FakeTime:
    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def clock(self):
        return self.now

    def sleep(self, s):
        assert s >= 0
        self.sleeps.append(s)
        self.now += s


def _patience(seconds=20.0, reachable=None):
    t, logs = FakeTime(), []
    return Patience(seconds, where="db", log=logs.append, reachable=reachable, clock=t.clock, sleep=t.sleep), t, logs


def _failing(n, error=_refused, result="ok"):
    """An attempt that raises ``error()`` ``n`` times, then returns ``result``; .calls counts."""
    def attempt():
        attempt.calls += 1
        if attempt.calls <= n:
            raise error()
        return result
    attempt.calls = 0
    return attempt


# --------------------------------------------------------------------------- the setting

@pytest.mark.parametrize("raw, expected", [("", 300.0), ("1", 1.0), ("2.5", 2.5), ("86400", 86400.0)])
def test_patience_setting(monkeypatch, raw, expected):
    monkeypatch.setenv("BKDSEARCH_STORAGE_PATIENCE_S", raw)
    assert patience_setting() == expected


@pytest.mark.parametrize("raw", ["abc", "0", "inf", "nan", "-5", "0.5", "86401"])
def test_bad_patience_is_a_storage_error(monkeypatch, raw):
    monkeypatch.setenv("BKDSEARCH_STORAGE_PATIENCE_S", raw)
    with pytest.raises(StorageError, match="BKDSEARCH_STORAGE_PATIENCE_S"):
        patience_setting()


@pytest.mark.parametrize("raw", ["abc", "0", "inf"])
def test_bad_patience_makes_run_exit_2_before_opening_the_storage(tmp_path, raw):
    spec = quick_spec(tmp_path / "spec.yaml")
    db = tmp_path / "studies" / "s.db"
    result = CliRunner().invoke(main, ["run", spec, "--storage", f"sqlite:///{db}", "--quiet", "--devices", "cpu"],
                                env={"BKDSEARCH_STORAGE_PATIENCE_S": raw})
    assert result.exit_code == 2, (result.output, result.exc_info)
    assert f"BKDSEARCH_STORAGE_PATIENCE_S={raw!r}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not db.exists()


# --------------------------------------------------------------------------- the retry loop

def test_patience_past_the_limit_raises_and_later_calls_fail_fast():
    p, t, logs = _patience(20.0)
    attempt = _failing(10**6)
    with pytest.raises(StorageUnreachable, match="unreachable for 20 s") as raised:
        p.call("create_new_trial", attempt)
    assert isinstance(raised.value.__cause__, StorageInternalError)
    assert 20.0 <= t.now - 1000.0 < 20.0 + BACKOFF_CAP_S + 1
    assert max(t.sleeps) <= BACKOFF_CAP_S
    assert t.sleeps[2:6] == sorted(t.sleeps[2:6]) or max(t.sleeps[2:6]) <= BACKOFF_CAP_S  # grows, jittered
    assert len(logs) == 2 and START in logs[0] and "create_new_trial" in logs[0] and "up to 20 s" in logs[0]
    assert "giving up" in logs[1]
    # Still out: the next call does not wait another 20 s.
    calls_before, now = attempt.calls, t.now
    with pytest.raises(StorageUnreachable):
        p.call("record_heartbeat", attempt)
    assert attempt.calls == calls_before + 1 and t.now == now
    assert len(logs) == 2
    # The server comes back: one line, and the calls work again.
    assert p.call("get_trial", lambda: 7) == 7
    assert len(logs) == 3 and BACK in logs[2]


def test_one_outage_one_line_each_way_and_the_quiet_window():
    p, t, logs = _patience(60.0)
    attempt = _failing(6)
    assert p.call("set_trial_intermediate_value", attempt) == "ok"
    assert attempt.calls == 7
    assert len(logs) == 2 and START in logs[0] and BACK in logs[1], logs
    assert re.search(r"after \d+\.\d s out", logs[1])
    assert p.outage_ended_at == t.now and not p.in_outage
    assert p.quiet(10.0)
    t.now += 10.5
    assert not p.quiet(10.0)


def test_a_single_dropped_connection_is_retried_without_a_line():
    p, _, logs = _patience()
    attempt = _failing(1, error=_dropped)
    assert p.call("get_trial", attempt) == "ok" and attempt.calls == 2
    assert logs == [] and p.outage_ended_at is None


def test_threads_share_one_outage():
    p, _, logs = _patience()
    p._failed("record_heartbeat", _refused(), 1000.0, quietly=False)  # another thread declared it
    assert p.call("get_all_trials", _failing(3)) == "ok"
    assert len(logs) == 2 and "record_heartbeat" in logs[0]


@pytest.mark.parametrize("error", [
    lambda: sqlalchemy.exc.IntegrityError("INSERT", {}, _Driver("duplicate key")),
    lambda: sqlalchemy.exc.ProgrammingError("SELECT", {}, _Driver("syntax error")),
    lambda: sqlalchemy.exc.DataError("INSERT", {}, _Driver("value too long")),
    lambda: UpdateFinishedTrialError("finished"),
    lambda: ValueError("bad value"),
    lambda: StorageInternalError("invalid data"),
    # The server answers, so this OperationalError is the statement's own.
    lambda: sqlalchemy.exc.OperationalError("SELECT", {}, _Driver("unknown column", sqlstate="42703")),
])
def test_errors_of_the_call_itself_are_never_retried(error):
    p, _, logs = _patience(reachable=lambda: True)
    attempt = _failing(1, error=error)
    with pytest.raises(Exception):  # noqa: B017 - the error as it came
        p.call("set_trial_user_attr", attempt)
    assert attempt.calls == 1 and logs == []


def test_failure_kinds():
    op = sqlalchemy.exc.OperationalError
    assert failure_kind(_refused()) == "outage"
    assert failure_kind(_dropped()) == "outage"
    assert failure_kind(op("SELECT", {}, _Driver("terminating connection", sqlstate="57P01"))) == "outage"
    assert failure_kind(op("SELECT", {}, _Driver(2013, "Lost connection"))) == "outage"
    assert failure_kind(op(None, None, _Driver(4151, "Access denied, this account is locked"))) == "outage"
    assert failure_kind(sqlalchemy.exc.InterfaceError("SELECT", {}, _Driver("connection already closed"))) == "outage"
    assert failure_kind(sqlalchemy.exc.DisconnectionError("pre-ping failed")) == "outage"
    assert failure_kind(op("UPDATE", {}, _Driver("deadlock detected", sqlstate="40P01"))) == "conflict"
    assert failure_kind(op("UPDATE", {}, _Driver(1213, "Deadlock found"))) == "conflict"
    odd = op("SELECT", {}, _Driver("something odd"))
    assert failure_kind(odd, reachable=lambda: True) is None
    assert failure_kind(odd, reachable=lambda: False) == "outage"
    # An error raised while handling a connection error is not an outage because of it.
    try:
        try:
            raise _dropped()
        except sqlalchemy.exc.OperationalError:
            raise KeyError("lookup") from None
    except KeyError as exc:
        assert failure_kind(exc) is None


def test_deadlocks_are_retried_quietly_a_few_times():
    deadlock = lambda: sqlalchemy.exc.OperationalError("UPDATE", {}, _Driver(1213, "Deadlock"))  # noqa: E731
    p, _, logs = _patience()
    assert p.call("create_new_trial", _failing(2, error=deadlock)) == "ok" and logs == []
    attempt = _failing(10**6, error=deadlock)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        p.call("create_new_trial", attempt)
    assert attempt.calls == MAX_CONFLICT_RETRIES + 1 and logs == []


def test_nested_calls_are_retried_once_by_the_outer_call():
    p, _, logs = _patience()
    inner = _failing(3)
    assert p.call("get_best_trial", lambda: p.call("get_trial", inner)) == "ok"
    assert len(logs) == 2


# --------------------------------------------------------------------------- the storage

def test_every_storage_call_under_optunas_cache_goes_through_the_patience(tmp_path):
    """Whichever call Optuna's cache makes (its private ones too), the patience sees it
    (that every storage method is wrapped at all: tests/test_optuna_seam.py)."""
    storage = PatientStorage(f"sqlite:///{tmp_path}/s.db", patience_s=30, heartbeat_interval=1, grace_period=2)
    seen: list[str] = []
    real = storage.patience.call

    def counting(what, attempt, landed=None):
        seen.append(what)
        return real(what, attempt, landed)

    storage.patience.call = counting
    study = optuna.create_study(storage=optuna_seam.with_cache(storage), study_name="cached")
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    study.tell(trial, 0.5)
    assert study.best_trial.number == 0 and len(study.get_trials()) == 1
    assert {"create_new_study", "create_new_trial", "set_trial_param", "set_trial_state_values",
            "get_all_trials"} <= set(seen)
    assert issubclass(PatientStorage, optuna_seam.WrappedStorage) and issubclass(PatientStorage, BaseHeartbeat)


def test_sqlite_storage_stays_plain(tmp_path):
    assert type(make_storage(f"sqlite:///{tmp_path}/s.db")) is RDBStorage


def _lose_acks(monkeypatch, n):
    """The next ``n`` transactions of PatientStorage's own writes commit, but their
    acknowledgement is lost (the connection drops right after the COMMIT)."""
    real = optuna_seam._create_scoped_session
    left = [n]

    @contextlib.contextmanager
    def lossy(scoped_session, ignore_integrity_error=False):
        with real(scoped_session, ignore_integrity_error) as session:
            yield session
        if left[0] > 0:
            left[0] -= 1
            raise StorageInternalError("An exception is raised during the commit.") from _dropped()

    monkeypatch.setattr(optuna_seam, "_create_scoped_session", lossy)
    return left


def test_a_write_whose_acknowledgement_was_lost_is_not_applied_twice(tmp_path, monkeypatch):
    logs = []
    storage = PatientStorage(f"sqlite:///{tmp_path}/s.db", patience_s=30, log=logs.append,
                             heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage, study_name="acks")
    left = _lose_acks(monkeypatch, 1)
    trial = study.ask()  # create_new_trial: lands, the ack is lost, the retry finds it
    assert left == [0]
    assert [t.number for t in study.get_trials()] == [0] and trial.number == 0
    trial.suggest_float("x", 0, 1)
    _lose_acks(monkeypatch, 1)
    study.tell(trial, 0.5)  # set_trial_state_values: lands; the retry must not fail as finished
    done = study.get_trials()
    assert len(done) == 1 and done[0].state == TrialState.COMPLETE and done[0].value == 0.5
    # A queued trial taken by this worker (WAITING -> RUNNING), ack lost: still this worker's.
    study.enqueue_trial({"x": 0.25})
    left = _lose_acks(monkeypatch, 1)
    queued = study.ask()  # pops the queued trial: set_trial_state_values(RUNNING) lands, ack lost
    assert left == [0] and queued.number == 1 and queued.suggest_float("x", 0, 1) == 0.25
    ts = study.get_trials()
    assert [t.number for t in ts] == [0, 1] and ts[1].state == TrialState.RUNNING
    assert len({t.system_attrs[WRITE_TOKEN] for t in ts}) == 2
    assert logs == []  # one dropped connection at a time: no outage


def test_no_stale_trials_during_an_outage_and_one_grace_period_after(tmp_path):
    storage = PatientStorage(f"sqlite:///{tmp_path}/s.db", patience_s=30, log=lambda m: None,
                             heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.2)
    storage.patience.outage_ended_at = time.monotonic()  # the server has just come back
    assert storage._get_stale_trial_ids(study._study_id) == []
    storage.patience.outage_ended_at = time.monotonic() - 1.5  # back for longer than the grace
    assert storage._get_stale_trial_ids(study._study_id) == [trial._trial_id]
    assert storage.outage_ended_at is not None and not storage.in_outage


def test_the_storage_pickles(tmp_path):
    storage = PatientStorage(f"sqlite:///{tmp_path}/s.db", patience_s=7, where="here")
    copied = pickle.loads(pickle.dumps(storage))
    assert isinstance(copied, PatientStorage) and copied.patience.patience_s == 7
    assert copied.get_all_studies() == []


# --------------------------------------------------------------------------- real servers

class Outage:
    """A database of its own on a real server (and, on MariaDB, a user of its own) whose
    connections can be refused: PostgreSQL ``ALLOW_CONNECTIONS false`` (and its backends
    terminated), MariaDB ``ACCOUNT LOCK`` (and its connections killed)."""

    def __init__(self, kind: str):
        admin, port, label = SERVERS[kind]
        require(_server_up(kind), f"{label} on 127.0.0.1:{port} is not reachable")
        self.kind = kind
        self.name = f"bkd_outage_{uuid.uuid4().hex[:10]}"
        self.admin = sqlalchemy.create_engine(admin, isolation_level="AUTOCOMMIT")
        base = admin.rsplit("/", 1)[0]
        self.password = uuid.uuid4().hex
        try:
            with self.admin.connect() as conn:
                conn.exec_driver_sql(f"CREATE DATABASE {self.name}")
                if kind == "mysql":
                    conn.exec_driver_sql(f"CREATE USER '{self.name}'@'%%' IDENTIFIED BY '{self.password}'")
                    conn.exec_driver_sql(f"GRANT ALL ON {self.name}.* TO '{self.name}'@'%%'")
        except BaseException:
            self.close()
            raise
        if kind == "mysql":
            self.url = f"mysql+pymysql://{self.name}:{self.password}@{base.split('@', 1)[1]}/{self.name}"
        else:
            self.url = f"{base}/{self.name}"

    def cut(self) -> None:
        with self.admin.connect() as conn:
            if self.kind == "postgresql":
                conn.exec_driver_sql(f"ALTER DATABASE {self.name} ALLOW_CONNECTIONS false")
                conn.exec_driver_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                     f"WHERE datname = '{self.name}' AND pid <> pg_backend_pid()")
            else:
                conn.exec_driver_sql(f"ALTER USER '{self.name}'@'%%' ACCOUNT LOCK")
                ids = conn.exec_driver_sql("SELECT id FROM information_schema.processlist "
                                           f"WHERE user = '{self.name}'").fetchall()
                for (pid,) in ids:
                    with contextlib.suppress(Exception):  # it may have ended on its own
                        conn.exec_driver_sql(f"KILL CONNECTION {pid}")

    def restore(self) -> None:
        with self.admin.connect() as conn:
            if self.kind == "postgresql":
                conn.exec_driver_sql(f"ALTER DATABASE {self.name} ALLOW_CONNECTIONS true")
            else:
                conn.exec_driver_sql(f"ALTER USER '{self.name}'@'%%' ACCOUNT UNLOCK")

    def close(self) -> None:
        try:
            with contextlib.suppress(Exception):
                self.restore()
            with self.admin.connect() as conn:
                if self.kind == "postgresql":
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
                else:
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {self.name}")
                    conn.exec_driver_sql(f"DROP USER IF EXISTS '{self.name}'@'%%'")
        finally:
            self.admin.dispose()


@pytest.fixture
def outage():
    made = []

    def make(kind):
        made.append(Outage(kind))
        return made[-1]

    yield make
    for o in made:
        o.close()


@pytest.mark.db
@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_patience_past_the_limit_raises_on_a_real_server(outage, monkeypatch, kind):
    server = outage(kind)
    monkeypatch.setenv("BKDSEARCH_STORAGE_PATIENCE_S", "2")
    storage = make_storage(server.url)
    patient_storage = optuna_seam.unwrap_cache(storage)
    assert isinstance(patient_storage, PatientStorage) and isinstance(storage, BaseHeartbeat)
    logs = []
    patient_storage.patience.log = logs.append
    study = optuna.create_study(storage=storage)
    assert isinstance(study._storage, BaseHeartbeat) and study._storage.get_heartbeat_interval()
    server.cut()
    began = time.monotonic()
    try:
        with pytest.raises(StorageUnreachable, match="unreachable for 2 s"):
            study.ask()
        assert 2 <= time.monotonic() - began < 15
    finally:
        server.restore()
    assert study.ask().number == 0  # a fresh try once the server is back
    assert [t.number for t in study.get_trials()] == [0]
    assert [START in logs[0], "giving up" in logs[1], BACK in logs[2]] == [True] * 3, logs
    assert server.password not in "\n".join(logs)
    patient_storage.backend.engine.dispose()


def _running(engine, name):
    """Numbers of the study's RUNNING trials (plain SQL: no tables are created here)."""
    with contextlib.suppress(Exception), engine.connect() as conn:  # no tables or study yet
        return sorted(n for (n,) in conn.exec_driver_sql(
            "SELECT t.number FROM trials t JOIN studies s ON s.study_id = t.study_id "
            f"WHERE s.study_name = '{name}' AND t.state = 'RUNNING'"))
    return []


def _clock():
    return time.strftime("%H:%M:%S")


@pytest.mark.db
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_a_study_rides_out_a_30s_outage(tmp_path, outage, kind):
    """Two workers; once trials are training the server refuses connections for 30 s: both
    workers wait, log the outage once each, and finish the study (all trials COMPLETE, none
    failed as stale although the grace period is shorter than the outage)."""
    server, name, n, cut_s = outage(kind), study_name(), 3, 30
    spec = quick_spec(tmp_path / "spec.yaml", epochs=2, train_size=320)
    env = {"BKDSEARCH_HEARTBEAT_S": "2", "BKDSEARCH_GRACE_S": "10", "BKDSEARCH_STORAGE_PATIENCE_S": "120",
           "BKDSEARCH_ARTIFACT_DIR": str(tmp_path / "artifacts")}
    procs = [start(run_cmd(spec, server.url, name, n), tmp_path / f"machine{i}", **env) for i in range(2)]
    timeline = [f"{_clock()} workers start"]
    poll = sqlalchemy.create_engine(server.url)
    try:
        deadline = time.monotonic() + 60
        while len(running := _running(poll, name)) < 2 and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), [finish(p) for p in procs]
            time.sleep(0.3)
        assert running, "no trial started"
        poll.dispose()
        server.cut()
        timeline.append(f"{_clock()} outage starts; running trials {running}")
        time.sleep(cut_s)
        server.restore()
        timeline.append(f"{_clock()} server back")
    finally:
        poll.dispose()
        server.restore()
        results = [finish(p, timeout=240) for p in procs]
    timeline.append(f"{_clock()} both workers done")
    for i, (rc, _, err) in enumerate(results):
        timeline += [f"worker {i} (exit {rc}): {m}" for m in err.splitlines() if m.startswith("storage ")]
    print("\n".join(timeline))
    for rc, out, err in results:
        assert rc == 0, (out, err)
        assert "Traceback" not in err, err
        assert sum(START in m for m in err.splitlines()) == 1, err
        assert sum(BACK in m for m in err.splitlines()) == 1, err
        assert server.password not in out + err
    ts = optuna.load_study(study_name=name, storage=server.url).get_trials()
    numbers = [t.number for t in ts]
    assert len(numbers) == len(set(numbers)) == n, [(t.number, t.state) for t in ts]
    assert Counter(t.state for t in ts) == {TrialState.COMPLETE: n}, [(t.number, t.state, t.user_attrs) for t in ts]
    params = [tuple(sorted(t.params.items())) for t in ts]
    assert len(set(params)) == n
    assert all(sorted(t.intermediate_values) == [1, 2] for t in ts)
    print("study:", [(t.number, t.state.name, round(t.value, 2)) for t in ts])


def test_the_pools_reset_errors_during_an_outage_are_one_line_without_traceback(db_url):
    """SQLAlchemy's pool logs a connection it cannot reset after the server went away with a
    whole traceback ("Exception during reset or similar"), which reached the user's terminal
    in a 30 s outage; a storage on a server makes each one a single line."""
    import logging

    make_storage(db_url("mysql"))
    pool = logging.getLogger("sqlalchemy.pool")
    assert not pool.propagate and pool.handlers
    try:
        raise sqlalchemy.exc.OperationalError("ROLLBACK", {}, Exception("(2013, 'Lost connection to MySQL server')"))
    except sqlalchemy.exc.OperationalError:
        import sys

        record = logging.getLogger("sqlalchemy.pool.impl.QueuePool").makeRecord(
            "sqlalchemy.pool.impl.QueuePool", logging.ERROR, __file__, 0, "Exception during reset or similar", (),
            sys.exc_info())
    shown = pool.handlers[0].format(record)
    assert shown.startswith("storage: Exception during reset or similar (OperationalError: ")
    assert "Traceback" not in shown and "\n" not in shown
