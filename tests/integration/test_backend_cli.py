"""`celerydiag probe backend` as a user runs it: Ctrl-C mid-experiment, limited users, bad URLs.

Every case is one line on stderr at most, never a traceback, never the password from the URL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The venv's console script, with no CELERY_* variable of the developer's shell deciding the target.
CLI = [str(Path(sys.executable).with_name("celerydiag"))]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("CELERY")}

pytestmark = [pytest.mark.integration]

SCRATCH_LIKE = "celerydiag\\_%\\_bk\\_taskmeta"


def _sql(url: str, *statements: str, autocommit: bool = True) -> list[Any]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT" if autocommit else None)
    try:
        with engine.connect() as conn:
            return [conn.execute(text(s)).all() if s.lstrip().upper().startswith("SELECT") else conn.execute(text(s))
                    for s in statements]
    finally:
        engine.dispose()


def _pg_scratch_tables(pg_url: str) -> list[str]:
    rows = _sql(pg_url, f"SELECT tablename FROM pg_tables WHERE tablename LIKE '{SCRATCH_LIKE}'")[0]
    return [r[0] for r in rows]


def _no_leak(text: str, secret: str) -> None:
    assert "Traceback" not in text, text
    assert secret not in text, "the password reached the output"


@pytest.mark.postgres
@pytest.mark.slow
def test_sigint_mid_experiment_drops_the_scratch_table(pg_url: str) -> None:
    before = set(_pg_scratch_tables(pg_url))
    proc = subprocess.Popen(
        [*CLI, "probe", "backend", "--backend", f"db+{pg_url}", "--broker", "memory://", "--format", "json",
         "--duration", "0.2", "--samples", "100000", "--max-seconds", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 60
        ours: set[str] = set()
        while time.monotonic() < deadline and not ours and proc.poll() is None:
            ours = set(_pg_scratch_tables(pg_url)) - before
            time.sleep(0.1)
        assert ours, f"the experiment's scratch table never appeared (exit {proc.poll()})"
        time.sleep(1.0)  # writers are busy now
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (proc.returncode, err)
    assert "Traceback" not in err, err
    assert "interrupted" in err
    assert ours.isdisjoint(_pg_scratch_tables(pg_url)), f"scratch table left behind after SIGINT: {err[-1500:]}"


@pytest.fixture
def pg_limited_user(pg_url: str) -> Iterator[tuple[str, str]]:
    """A login role with no pg_monitor and no CREATE on schema public: can read, cannot create."""
    name = f"cdtest_ro_{uuid.uuid4().hex[:8]}"
    secret = f"pw-{uuid.uuid4().hex}"
    _sql(pg_url, f"CREATE ROLE {name} LOGIN PASSWORD '{secret}'", f"GRANT CONNECT ON DATABASE test TO {name}",
         f"REVOKE CREATE ON SCHEMA public FROM {name}")
    try:
        url = pg_url.replace("postgres@", f"{name}:{secret}@", 1)
        yield url, secret
    finally:
        _sql(pg_url, f"DROP OWNED BY {name}", f"DROP ROLE IF EXISTS {name}")


@pytest.fixture
def mariadb_limited_user(mysql_url: str) -> Iterator[tuple[str, str]]:
    """SELECT on the test database only: no PROCESS (lock views), no CREATE (the experiment)."""
    name = f"cdro{uuid.uuid4().hex[:8]}"
    secret = f"pw-{uuid.uuid4().hex}"
    hosts = ("localhost", "127.0.0.1")
    _sql(mysql_url, *[f"CREATE USER '{name}'@'{h}' IDENTIFIED BY '{secret}'" for h in hosts],
         *[f"GRANT SELECT ON test.* TO '{name}'@'{h}'" for h in hosts])
    try:
        yield mysql_url.replace("root@", f"{name}:{secret}@", 1), secret
    finally:
        _sql(mysql_url, *[f"DROP USER IF EXISTS '{name}'@'{h}'" for h in hosts])


def _run(run_cli: Any, backend: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("probe", "backend", "--backend", backend, "--broker", "memory://", "--format", "json",
                   "--duration", "0.5", "--samples", "60", "--max-seconds", "5", *extra, timeout=120)


@pytest.mark.postgres
def test_pg_user_without_monitor_or_create_degrades_with_notes(run_cli: Any, pg_limited_user: tuple[str, str],
                                                                 check_report: Any) -> None:
    url, secret = pg_limited_user
    proc = _run(run_cli, f"db+{url}")
    _no_leak(proc.stdout + proc.stderr, secret)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    check_report(doc)
    assert doc["probes"][0]["status"] == "ran", doc["probes"]
    by_id = {f["id"]: f for f in doc["findings"]}
    assert "read-only user" in by_id["backend.experiment"]["title"]
    assert "permission denied" in by_id["backend.experiment"]["detail"]
    assert any("pg_monitor" in n for n in by_id["backend.server"]["evidence"]["notes"])
    assert by_id["backend.lock-wait"]["severity"] == "ok"  # it still sampled what it may see


@pytest.mark.mariadb
def test_mariadb_user_without_process_or_create_degrades_with_notes(run_cli: Any,
                                                                     mariadb_limited_user: tuple[str, str]) -> None:
    url, secret = mariadb_limited_user
    proc = _run(run_cli, f"db+{url}")
    _no_leak(proc.stdout + proc.stderr, secret)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["probes"][0]["status"] == "ran", doc["probes"]
    by_id = {f["id"]: f for f in doc["findings"]}
    assert "not sampled" in by_id["backend.lock-wait"]["title"]
    assert "PROCESS" in by_id["backend.lock-wait"]["detail"]
    assert "read-only user" in by_id["backend.experiment"]["title"]


@pytest.mark.postgres
def test_wrong_database_name_is_one_line_exit_3(run_cli: Any, pg_url: str) -> None:
    secret = f"pw-{uuid.uuid4().hex}"
    url = pg_url.replace("postgres@", f"postgres:{secret}@", 1).rsplit("/", 1)[0] + "/no_such_db_celerydiag"
    proc = _run(run_cli, f"db+{url}")
    _no_leak(proc.stdout + proc.stderr, secret)
    assert proc.returncode == 3, proc.stderr
    first = proc.stderr.strip().splitlines()[0]
    assert first.startswith("celerydiag: error: result backend") and "no_such_db_celerydiag" in first
    doc = json.loads(proc.stdout)  # the report still comes, naming the dead side
    assert "no_such_db_celerydiag" in doc["unreachable"]["backend"] and doc["probes"][0]["status"] == "failed"


def test_unreachable_host_is_one_line_exit_3(run_cli: Any) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    secret = f"pw-{uuid.uuid4().hex}"
    started = time.monotonic()
    proc = _run(run_cli, f"db+mysql+pymysql://root:{secret}@127.0.0.1:{port}/test", "--timeout", "2")
    _no_leak(proc.stdout + proc.stderr, secret)
    assert proc.returncode == 3, proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("celerydiag: error")]) == 1
    assert "127.0.0.1" in proc.stderr
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("backend,reason", [("rpc://", "rpc://"), ("disabled://", "disabled://")])
def test_rpc_and_disabled_are_skipped_with_a_reason(run_cli: Any, backend: str, reason: str) -> None:
    proc = run_cli("probe", "backend", "--backend", backend, "--broker", "memory://", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    (probe,) = json.loads(proc.stdout)["probes"]
    assert probe["status"] == "skipped" and reason in probe["reason"]
