"""Faults while `celerydiag watch` runs: the broker blocked, then down, then back. Watch keeps
running, shows each fault in its JSON lines and in /metrics, and recovers by itself.

The broker is a private RabbitMQ node (tests/support/rabbitmq.py: own ports and data dir, stopped
by its pid), so stopping it and raising its memory alarm touch nothing any other test uses. The
backend is the shared Redis, only read and written under our own scratch names.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from tests.conftest import clean_env
from tests.integration.conftest import REDIS_URL
from tests.support.rabbitmq import private_rabbitmq
from tests.support.watch import free_port, scrape, watching

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.slow]

WITHIN_S = 90  # generous bound for each transition on a shared 2-core machine (not a timing claim)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in a /metrics text (labels in any order)."""
    for line in text.splitlines():
        if not line.startswith(name + ("{" if labels else " ")):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no series {name}{labels}")


def test_broker_blocked_then_down_then_back_is_shown_and_recovered(tmp_path: Path, cli_argv: list[str]) -> None:
    port = free_port()
    with private_rabbitmq(tmp_path / "rabbit") as node:
        argv = [*cli_argv, "watch", "--broker", node.url, "--backend", REDIS_URL, "--interval", "1",
                "--timeout", "2", "--updates", "3", "--prometheus", f"127.0.0.1:{port}"]
        with watching(argv, env=clean_env()) as w:
            w.next_where(lambda d: d["canary"] == "ok" and d["up"]["broker"], WITHIN_S)
            assert metric(scrape(port), "celerydiag_target_up", side="broker") == 1

            with node.memory_alarm():  # RabbitMQ blocks publishers
                blocked = w.next_where(lambda d: d["broker_blocked"] is True, WITHIN_S)
                assert "memory" in blocked["blocked_reason"]
                assert blocked["canary"] == "skipped" and blocked["up"]["broker"]  # reachable, but blocked
                assert any(p["signal"] == "canary" and p["reason"] == "blocked" for p in blocked["problems"])
                text = scrape(port)
                assert metric(text, "celerydiag_broker_blocked") == 1
                assert metric(text, "celerydiag_canary_runs_total", result="skipped") >= 1
            w.next_where(lambda d: d["broker_blocked"] is False and d["canary"] == "ok", WITHIN_S)
            assert metric(scrape(port), "celerydiag_broker_blocked") == 0

            node.stop()  # the broker is gone
            down = w.next_where(lambda d: d["up"].get("broker") is False, WITHIN_S)
            assert down["canary"] == "skipped"
            broker_problems = [p for p in down["problems"] if p["signal"] == "broker"]
            assert broker_problems and broker_problems[0]["reason"] in ("unreachable", "timeout")
            assert "guest:guest" not in str(down["problems"])  # no password in what it shows
            w.next_where(lambda d: d["up"].get("broker") is False, WITHIN_S)  # still running, still down
            text = scrape(port)
            assert metric(text, "celerydiag_target_up", side="broker") == 0
            errors = sum(metric(text, "celerydiag_errors_total", signal="broker", reason=r)
                         for r in ("unreachable", "timeout"))
            assert errors >= 2

            node.start()  # back: same port, same data dir
            back = w.next_where(lambda d: d["canary"] == "ok" and d["up"]["broker"], WITHIN_S)
            assert back["visibility_ms"]["poll"] and back["dispatch_ms"]
            text = scrape(port)
            assert metric(text, "celerydiag_target_up", side="broker") == 1
            assert metric(text, "celerydiag_target_up", side="backend") == 1

            prefix = "celerydiag.probe." + w.scratch.split("-", 1)[1] + "-s"  # the names it announced
            assert [q for q in node.queues() if q.startswith(prefix)], node.queues()
            err, _ = w.stop(signal.SIGTERM)
            assert w.proc.returncode == 143, err
        assert not node.ours_left()


def test_a_hung_backend_is_cut_at_the_timeout_shown_and_recovered_from(cli_argv: list[str]) -> None:
    """The backend behind a relay that stops forwarding (a peer that accepted the connection and
    never answers): every read is cut by --timeout, intervals keep coming, and when the relay
    forwards again watch rebuilds its canary on fresh connections."""
    from urllib.parse import urlsplit

    from tests.support.relay import Relay

    parts = urlsplit(REDIS_URL)
    with Relay(parts.hostname or "127.0.0.1", parts.port or 6379, delay_s=0.0) as relay:
        backend = f"redis://127.0.0.1:{relay.port}{parts.path}"
        argv = [*cli_argv, "watch", "--broker", REDIS_URL, "--backend", backend, "--interval", "1",
                "--timeout", "1", "--updates", "3"]
        with watching(argv, env=clean_env()) as w:
            w.next_where(lambda d: d["canary"] == "ok", WITHIN_S)
            relay.delay_s = 3600.0  # from now on nothing comes back: hung
            hung = w.next_where(lambda d: d["up"].get("backend") is False, WITHIN_S)
            assert any(p["signal"] == "backend" and p["reason"] == "timeout" for p in hung["problems"]), hung
            after = w.next_where(lambda d: d["round"] > hung["round"], WITHIN_S)  # it goes on
            assert after["up"]["broker"] is True
            relay.delay_s = 0.0  # answering again, on new connections
            back = w.next_where(lambda d: d["canary"] == "ok" and d["up"].get("backend"), WITHIN_S)
            assert back["visibility_ms"]["poll"]
            err, _ = w.stop(signal.SIGTERM)
            assert w.proc.returncode == 143, err
