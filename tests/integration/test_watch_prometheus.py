"""A real Prometheus scrapes `celerydiag watch` on the real services; every dashboard query and
every alert expression then answers through the Prometheus HTTP API.

Two watches, one Prometheus (Debian package ``prometheus``; scripts/system-packages.sh installs it
in ``make test`` where missing), on loopback ports of their own and a data dir in tmp_path:
  - RabbitMQ broker + Redis backend (push and poll paths, blocked check, TCP_INFO RTT, commandstats)
  - Redis broker + PostgreSQL backend (LLEN backlog, pg_stat_user_tables write rate)
so every signal has a series, and the dashboard's ``instance`` variable has two hosts to show.
Prometheus is stopped by its pid; each watch by SIGTERM, after which its canary queue, result
keys and scratch table are gone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, clean_env
from tests.integration.conftest import AMQP_URL, PG_URL, REDIS_URL
from tests.support.watch import free_port, watching

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.redis, pytest.mark.postgres,
              pytest.mark.slow]

API_URL = os.environ.get("CELERYDIAG_TEST_RABBITMQ_API", "http://guest:guest@127.0.0.1:15672")
RULES = REPO / "monitoring" / "prometheus" / "celerydiag-rules.yml"
DASHBOARD = REPO / "monitoring" / "grafana" / "celerydiag-watch.json"
COMPARISON = re.compile(r"\s(>|<|==|!=|>=|<=)\s+(?!bool\b)")


def api(port: int, path: str, **params: str) -> Any:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/{path}?{query}", timeout=10) as response:
        doc = json.loads(response.read().decode())
    assert doc["status"] == "success", doc
    return doc["data"]


def instant(port: int, expr: str) -> list[dict[str, Any]]:
    data = api(port, "query", query=expr)
    assert data["resultType"] == "vector", (expr, data)
    return list(data["result"])


def wait_for(check: Any, within_s: float, what: str) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        try:
            got = check()
            if got:
                return got
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{what}: not within {within_s:g} s"
        time.sleep(0.5)


def panel_queries() -> list[tuple[str, str]]:
    """Every dashboard target's expr as Grafana sends it: All instances, a rate window of 30 s."""
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"].replace("$instance", ".*").replace("$__rate_interval", "30s"))
            for p in dash["panels"] for t in p["targets"]]


def alert_exprs() -> list[tuple[str, str]]:
    import yaml

    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    return [(r["alert"], r["expr"]) for r in rules if "alert" in r]


@pytest.fixture
def prometheus(tmp_path: Path) -> Any:
    binary = shutil.which("prometheus")
    assert binary, "prometheus missing: run `make system-packages` (Debian package prometheus)"

    def start(targets: list[str]) -> tuple[int, subprocess.Popen[bytes]]:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {RULES}\n"
            "scrape_configs:\n  - job_name: celerydiag\n    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n")
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                                stdout=log, stderr=subprocess.STDOUT)
        started.append((proc, log))
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2).status == 200,
                 60, "prometheus ready")
        return port, proc

    started: list[tuple[subprocess.Popen[bytes], Any]] = []
    yield start
    for proc, log in started:  # stopped by its pid, never by name
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_prometheus_scrapes_watch_and_every_panel_and_alert_expression_answers(
        prometheus: Any, cli_argv: list[str]) -> None:
    runs = [("amqp+redis", ["--broker", AMQP_URL, "--backend", REDIS_URL, "--rabbitmq-api", API_URL]),
            ("redis+postgres", ["--broker", REDIS_URL, "--backend", "db+" + PG_URL])]
    ports = [free_port() for _ in runs]
    argv = [[*cli_argv, "watch", *target, "--interval", "1", "--timeout", "3", "--updates", "3",
             "--prometheus", f"127.0.0.1:{port}"] for (_, target), port in zip(runs, ports)]
    with watching(argv[0], env=clean_env()) as first, watching(argv[1], env=clean_env()) as second:
        for w in (first, second):
            w.next_where(lambda d: d["canary"] == "ok", within_s=90)
        prom, _ = prometheus([f"127.0.0.1:{p}" for p in ports])
        instances = {f"127.0.0.1:{p}" for p in ports}

        def healthy() -> bool:
            ok = instant(prom, 'celerydiag_canary_runs_total{result="ok"} >= 5')
            up = instant(prom, 'up{job="celerydiag"} == 1')
            return {r["metric"]["instance"] for r in ok} == instances and len(up) == 2

        wait_for(healthy, 120, "both watches scraped with 5 good canary rounds each")
        time.sleep(3)  # a few more scrapes: every rate() window then holds several points

        # the dashboard's instance variable lists both hosts
        values = api(prom, "label/instance/values", **{"match[]": "celerydiag_target_up"})
        assert instances <= set(values)
        for title, expr in panel_queries():
            result = instant(prom, expr)
            assert result, f"panel {title!r}: no data for {expr}"
        for name in ("State visibility", "Dispatch latency", "Backend write latency"):
            exprs = [e for t, e in panel_queries() if t.startswith(name)]
            finite = [r for r in instant(prom, exprs[0]) if r["value"][1] not in ("NaN", "+Inf")]
            assert finite, f"{name}: only NaN"
        paths = {r["metric"]["path"] for r in instant(prom, panel_queries()[0][1])}
        assert paths == {"poll", "push"}  # Redis pushes: on_message measured beside polling
        backlog = instant(prom, "celerydiag_broker_backlog_messages")
        assert any(r["metric"]["queue"] == "celery" for r in backlog)  # Redis broker: LLEN of the default queue
        rtt = {(r["metric"]["peer"], r["metric"]["method"]) for r in instant(prom, "celerydiag_rtt_seconds")}
        assert {("broker", "tcp_info"), ("broker", "ping"), ("backend", "tcp_info"), ("backend", "ping")} <= rtt

        for name, expr in alert_exprs():
            instant(prom, expr)  # evaluates without error (api() asserts success)
            as_bool = COMPARISON.sub(lambda m: f" {m.group(1)} bool ", expr, count=1)
            assert as_bool != expr, name
            result = instant(prom, as_bool)
            assert result, f"alert {name}: its signal has no data ({as_bool})"
            if name in ("CeleryTargetDown", "CeleryBrokerBlocked"):  # healthy services: these must be 0
                assert all(r["value"][1] == "0" for r in result), (name, result)
        rules = [r for g in api(prom, "rules")["groups"] for r in g["rules"]]
        assert rules and all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]

        api_problems = [p for d in first.seen for p in d["problems"] if p["signal"] == "rabbitmq_api"]
        assert not api_problems  # the management API's alarms and blocked connections were read
        assert "guest:guest" not in "".join(first.err)
        scratches = [w.scratch for w in (first, second)]
        assert any(q.startswith("celerydiag.probe." + scratches[0].split("-", 1)[1]) for q in _queues())
        for w in (first, second):
            err, _ = w.stop(signal.SIGTERM)
            assert w.proc.returncode == 143, err
    _assert_cleaned(scratches)


def _queues() -> list[str]:
    from tests.support.rabbitmq import rabbitmqctl

    return rabbitmqctl("list_queues", "-q", "--no-table-headers", "name").split()


def _assert_cleaned(scratches: list[str]) -> None:
    """What the canaries made is gone: their queues on RabbitMQ, keys on Redis, tables on PostgreSQL."""
    import redis
    import sqlalchemy

    for scratch in scratches:
        queue_prefix = "celerydiag.probe." + scratch.split("-", 1)[1]
        assert not [q for q in _queues() if q.startswith(queue_prefix)]
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
        assert not list(client.scan_iter(f"*{scratch}*", count=1000))
        engine = sqlalchemy.create_engine(PG_URL)
        with engine.connect() as conn:
            left = conn.execute(sqlalchemy.text("SELECT tablename FROM pg_tables WHERE tablename LIKE :p"),
                                {"p": scratch.replace("-", "_") + "%"}).all()
        engine.dispose()
        assert not left, left


def test_a_closed_stdout_stops_watch_with_141_and_cleans_up(cli_argv) -> None:  # noqa: ANN001
    """`watch --format json | head -1`: the reader goes away after the first line; watch stops with
    141 (as every command does), not 1, says so in one line, and leaves no queue, key or table."""
    proc = subprocess.Popen([*cli_argv, "watch", "--broker", AMQP_URL, "--backend", REDIS_URL, "--format", "json",
                             "--interval", "0.5", "--count", "50"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = json.loads(proc.stdout.readline())
        assert first["schema"] == "celerydiag.watch/1"
        proc.stdout.close()  # the reader is gone; the next line watch writes hits a closed pipe
        err = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 141, err
    assert "stdout closed" in err and "Traceback" not in err
    scratch = re.search(r"tables (celerydiag-w[0-9a-f]+)-\*", err)
    assert scratch, err
    _assert_cleaned([scratch.group(1)])
