"""Backend: a long transaction holds the task row's lock, on PostgreSQL and on MariaDB.

Injected for real: a real worker runs ``scenario.progress`` with a database result backend whose task
table is this run's own (``database_table_names``); once its row exists, a separate connection does
``SELECT … FOR UPDATE`` on that row and stays idle in transaction, so the worker's next
``update_state()`` (Celery's own store_result) waits on the lock while the doctor samples lock waits
over ``--duration``. The fix is operational and printed with the blocker's id: end that transaction
(here: roll it back); its config (lock timeouts, and READ COMMITTED on MariaDB) is pasted too. After
it the worker writes freely and ``backend.lock-wait`` must be ok.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_backend_db import drop, engine_for, precreate
from tests.scenarios.harness import (
    doctor,
    finding,
    fix_config,
    ranked,
    record,
    send,
    top_cause,
    unique,
    wait_for,
    worker,
)

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.scenario_slow]
DURATION_S = "3"


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres),
                        pytest.param("mariadb", marks=pytest.mark.mariadb)])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("pg_url" if request.param == "postgres" else "mysql_url")


@pytest.fixture
def task_table(db_url: str) -> Iterator[str]:
    """Celery's task table under this run's name (and its group table), dropped at teardown."""
    table = unique("cdscn") + "_taskmeta"
    precreate(db_url, table)
    yield table
    drop(db_url, table, f"{table}_group")


def row_exists(db_url: str, table: str, task_id: str) -> bool:
    from sqlalchemy import text

    engine = engine_for(db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(f"SELECT 1 FROM {table} WHERE task_id = :t"), {"t": task_id}).first() is not None
    finally:
        engine.dispose()


def test_lock_holder_on_the_task_row_is_named_and_ending_it_clears_the_wait(
        db_url: str, task_table: str, amqp_url: str, user_config: Any) -> None:
    from sqlalchemy import text

    config = user_config(broker_url=amqp_url, result_backend=f"db+{db_url}",
                         database_table_names={"task": task_table, "group": f"{task_table}_group"})
    engine = engine_for(db_url)
    try:
        with worker(config):
            task_id = send(config, "scenario.progress", config.stop_file, 90.0, 0.2)
            wait_for(lambda: row_exists(db_url, task_table, task_id), 60, "the worker's task row")
            holder = engine.connect()
            try:  # the long transaction: row lock taken, then idle in transaction
                holder.execute(text(f"SELECT * FROM {task_table} WHERE task_id = :t FOR UPDATE"), {"t": task_id})
                before = doctor(config, "--duration", DURATION_S)
            finally:
                holder.rollback()  # the operational half of the fix: end that transaction
                holder.close()
        lock = finding(before, "backend.lock-wait")
        assert lock and lock["severity"] in ("warning", "critical"), ranked(before)
        assert top_cause(before) == "backend", ranked(before)
        assert lock["evidence"]["blocker_id"] in lock["fix"]["summary"], lock["fix"]
        config.paste(fix_config(lock))  # the lock timeouts (and isolation) the fix prints

        os.unlink(config.stop_file)
        with worker(config):
            task_id = send(config, "scenario.progress", config.stop_file, 90.0, 0.2)
            wait_for(lambda: row_exists(db_url, task_table, task_id), 60, "the worker's task row")
            after = doctor(config, "--duration", DURATION_S)
    finally:
        engine.dispose()
    name = "backend-" + ("postgres" if db_url.startswith("postgresql") else "mariadb")
    record(name, "backend", before, after, "backend.lock-wait")
    cleared = finding(after, "backend.lock-wait")
    assert cleared and cleared["severity"] == "ok", ranked(after)
