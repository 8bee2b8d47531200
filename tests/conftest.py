"""Shared test setup.

The suite runs under pytest-xdist with one worker per core; each worker uses one torch
thread, since oversubscribed BLAS/OpenMP threads slow CPU convolutions down many times.
"""

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a grouped test whose xdist group is lost: its module's shared fixture (the study
    of test_search) would be built once per worker, which costs minutes and fails nothing."""
    if not item.config.getoption("loadgroup", False) or item.get_closest_marker("xdist_group") is None:
        return
    if "@" not in item.nodeid:
        pytest.fail("--dist loadgroup did not group this test: this pytest and pytest-xdist do not work "
                    "together (pytest-xdist#1386); install the versions pyproject.toml names", pytrace=False)


def require(condition: bool, reason: str) -> None:
    """Skip with ``reason`` on a laptop, but fail in CI (where everything must run)."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


TINY_SPEC = {
    "name": "tiny",
    "seed": 0,
    "data": {"dataset": "synthetic", "val_fraction": 0.2, "batch_size": 32, "eval_batch_size": 256,
             # An easy variant of the synthetic task, so that 2-3 CPU epochs learn it.
             "synthetic": {"num_classes": 10, "train_size": 1200, "test_size": 320, "modes_per_class": 1,
                           "group_size": 1, "mix": 0.2, "max_rotation": 0.0, "pixel_noise": 0.1,
                           "clutter": 0.2, "max_shift": 0.1}},
    "teacher": {"arch": "resnet14", "recipe": {"epochs": 3, "lr": 0.1, "schedule": "cosine"}},
    "student": {"arch": "resnet8"},
    "method": "blockkd",
    "train": {"epochs": 2, "lr": 0.1, "schedule": "cosine"},
    "partitions": {"stage": "stage_aligned"},
    "runtime": {"device": "cpu"},
}


def write_spec(path, spec: dict) -> str:
    """Write ``spec`` as YAML to ``path`` and return the path as a string."""
    import yaml

    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory) -> str:
    """A resnet14 teacher trained with CE on TINY_SPEC's data, shared by the xdist workers."""
    from filelock import FileLock

    from bkdsearch.spec import Defaults, Spec, resolve
    from bkdsearch.teacher import cached_teacher_path, teacher_weights

    shared = tmp_path_factory.getbasetemp().parent
    cfg = resolve(Spec.model_validate(TINY_SPEC), Defaults())
    with FileLock(str(shared / "teacher.lock")):
        path = cached_teacher_path(cfg, shared / "teachers")
        if not path.exists():
            teacher_weights(cfg, shared / "teachers")
    return str(path)


# --------------------------------------------------------------------------- database servers
# (added for the worker/failure tests: fresh databases on the servers of docs/design.md)

SERVERS = {
    "postgresql": ("postgresql+psycopg://postgres@127.0.0.1:5432/test", 5432, "PostgreSQL"),
    "mysql": ("mysql+pymysql://root@127.0.0.1:3306/test", 3306, "MariaDB"),
}


def _server_up(kind: str) -> bool:
    import sqlalchemy

    url, port, _ = SERVERS[kind]
    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
        return True
    except Exception:  # noqa: BLE001 - driver missing, server down, auth refused
        return False


@pytest.fixture
def db_url(request):
    """``db_url(kind)`` -> the URL of a fresh, empty database on the PostgreSQL
    (``postgresql``) or MariaDB (``mysql``) server of docs/design.md, dropped after the test.
    Unreachable server: skip on a laptop, fail in CI."""
    import uuid

    import sqlalchemy

    made = []

    def make(kind: str) -> str:
        url, port, label = SERVERS[kind]
        require(_server_up(kind), f"{label} on 127.0.0.1:{port} (see docs/design.md) is not reachable")
        name = f"bkd_{uuid.uuid4().hex[:12]}"
        engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        made.append((engine, kind, name))
        return url.rsplit("/", 1)[0] + f"/{name}"

    yield make
    for engine, kind, name in made:
        try:
            with engine.connect() as conn:
                force = " WITH (FORCE)" if kind == "postgresql" else ""
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
        finally:
            engine.dispose()
