"""The host probe against real Celery worker processes on this machine (Redis broker and backend).

Other helpers and tests may run workers at the same time on this host, so every assertion is about
the worker this test started (found by its pid), and "no worker" means no worker of a target whose
broker and backend port nothing uses. No timing thresholds: the CPU-starved case asserts that a
run-queue wait was measured and is positive, not how large it is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest

from celerydiag.findings import Finding, ProbeResult, ProbeStatus
from celerydiag.host.probe import HostProbe
from celerydiag.probe import ProbeContext, ProbeOptions, run_probe
from celerydiag.target import resolve_target
from tests.conftest import CLI, REPO, clean_env
from tests.scenarios.harness import UserConfig, Worker, send, unique, worker

pytestmark = [pytest.mark.integration, pytest.mark.redis]

WINDOW_S = "1.5"
BURN_S = 6.0  # the CPU burner's own bound, whatever happens to the test


@pytest.fixture
def prefork_worker(tmp_path: Path, redis_url: str) -> Iterator[tuple[UserConfig, Worker]]:
    """``celery -A <scenario app> worker -P prefork -c 2 -Q <own queue>`` on the local Redis (the
    harness starts it with ``-P solo -c 1``; the later options win, as click reads them)."""
    queue = unique("cdhost_q")
    config = UserConfig(tmp_path, broker_url=redis_url, result_backend=redis_url, task_default_queue=queue,
                        worker_hijack_root_logger=False)
    with worker(config, "-P", "prefork", "-c", "2", "-Q", queue) as w:
        yield config, w


def probe(broker: str, backend: str, duration: str = WINDOW_S) -> ProbeResult:
    ctx = ProbeContext(target=resolve_target(broker=broker, backend=backend),
                       options=ProbeOptions(duration=float(duration)))
    return run_probe(HostProbe(), ctx)


def finding(result: ProbeResult, fid: str) -> Finding:
    return next(f for f in result.findings if f.id == fid)


def ours(result: ProbeResult, pid: int) -> dict[str, Any]:
    workers = finding(result, "host.workers").evidence["workers"]
    found = [w for w in workers if w["pid"] == str(pid)]
    assert found, f"worker pid {pid} not reported; reported: {[w['pid'] for w in workers]}"
    return found[0]


def test_finds_the_worker_its_pool_children_and_broker_connection(
        prefork_worker: tuple[UserConfig, Worker], redis_url: str) -> None:
    _, w = prefork_worker
    result = probe(redis_url, redis_url)
    assert result.status is ProbeStatus.RAN, result.reason
    mine = ours(result, w.pid)
    assert (mine["pool"], mine["concurrency_count"]) == ("prefork", 2), mine
    children = {str(c.pid) for c in psutil.Process(w.pid).children()}
    assert mine["pool_processes_count"] == 2 and set(mine["pool_pids"]) == children, (mine, children)
    port = urlsplit(redis_url).port or 6379
    assert mine["broker_connections_count"] >= 1, mine
    assert any(f":{port} " in c and "broker" in c for c in mine["connections"]), mine["connections"]
    assert "a connection to the target's broker" in mine["matched_by"]
    assert {f.id for f in result.findings} == {"host.workers", "host.cpu-wait", "host.cpu-saturation", "host.swap"}


def test_the_cli_report_holds_the_json_contract(prefork_worker: tuple[UserConfig, Worker], redis_url: str,
                                                check_report: Any) -> None:
    _, w = prefork_worker
    done = subprocess.run([*CLI, "probe", "host", "--broker", redis_url, "--backend", redis_url,
                           "--duration", WINDOW_S, "--format", "json"],
                          cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stderr
    doc = json.loads(done.stdout)
    check_report(doc)
    assert [p["status"] for p in doc["probes"]] == ["ran"]
    assert all(f["cause"] == "host" for f in doc["findings"])


def test_no_worker_of_the_target_is_skipped_with_the_reason(prefork_worker: tuple[UserConfig, Worker],
                                                             closed_port: int) -> None:
    """Our worker runs, but on another port than this target's: the probe must not claim it."""
    url = f"redis://127.0.0.1:{closed_port}/0"
    result = probe(url, url)
    assert result.status is ProbeStatus.SKIPPED, result
    assert "no Celery worker on this host uses this target" in result.reason, result.reason
    assert not result.findings


def _pin(pids: list[int], core: int) -> None:
    """Every thread of these processes onto one core (affinity is per thread on Linux)."""
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(tid), {core})
            except (ProcessLookupError, PermissionError):
                continue


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or not os.path.exists("/proc/self/task"),
                    reason="pinning and /proc schedstat are Linux-only")
def test_a_cpu_starved_worker_shows_run_queue_wait(prefork_worker: tuple[UserConfig, Worker],
                                                    redis_url: str) -> None:
    """The worker and a bounded CPU burner on one core, while a task writes PROGRESS every 20 ms: the
    worker's threads wait on the run queue, and the evidence says so (presence and sign only)."""
    config, w = prefork_worker
    core = min(os.sched_getaffinity(0))
    _pin([w.pid, *(c.pid for c in psutil.Process(w.pid).children())], core)
    burner = subprocess.Popen([sys.executable, "-c", (
        "import os, time\n"
        f"os.sched_setaffinity(0, {{{core}}})\n"
        f"end = time.monotonic() + {BURN_S}\n"
        "while time.monotonic() < end:\n"
        "    pass\n")])
    try:
        send(config, "scenario.progress", config.stop_file, BURN_S, 0.02)
        result = probe(redis_url, redis_url)
    finally:
        burner.kill()
        burner.wait(10)
    assert result.status is ProbeStatus.RAN, result.reason
    wait = finding(result, "host.cpu-wait")
    assert wait.evidence["run_queue_measured"] is True, wait
    assert wait.evidence["timeslices_count"] > 0 and wait.evidence["run_queue_wait_ms"] > 0, wait.evidence
    assert wait.evidence["wait_per_timeslice_ms"] > 0 and wait.impact_ms > 0, wait.evidence
    mine = ours(result, w.pid)
    assert mine["run_queue_wait_ms"] > 0 and mine["timeslices_count"] > 0, mine


@pytest.mark.postgres
def test_a_solo_worker_on_a_database_backend_reconnects_per_update(tmp_path: Path, redis_url: str,
                                                                   pg_url: str) -> None:
    """celery-facts A.2: outside forked prefork children the database backend opens a connection per
    store_result; the probe knows the pool the worker really runs (the harness's -P solo)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    queue = unique("cdhost_q")
    backend = "db+" + pg_url
    # A schema of its own (Celery's tables and index in it), so this worker never meets another
    # test's lock on the shared celery_taskmeta; dropped with everything in it at the end.
    schema = queue.lower()
    engine = create_engine(pg_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    config = UserConfig(tmp_path, broker_url=redis_url, result_backend=backend, task_default_queue=queue,
                        worker_hijack_root_logger=False,
                        database_table_schemas={"task": schema, "group": schema})
    try:
        with worker(config, "-Q", queue) as w:
            result = probe(redis_url, backend, duration="0.5")
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()
    assert result.status is ProbeStatus.RAN, result.reason
    assert ours(result, w.pid)["pool"] == "solo"
    found = finding(result, "host.db-connection-per-update")
    assert str(w.pid) in found.evidence["workers"] and found.fix is not None, found
