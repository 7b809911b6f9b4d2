"""The Prometheus sink: a registry of our own, fed one Sample per interval, served on /metrics.

Conventions (prometheus.io/docs/practices/naming): a ``celerydiag_`` prefix, base units in the
name (``_seconds``, ``_messages``), ``_total`` on counters (prometheus_client adds it), help text
on every metric. Labels take values from closed sets (path, side, peer, method, result, signal,
reason) or the app's configured queue names (at most MAX_QUEUES): never a URL, a password, a task
id or an error message.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from celerydiag import __version__
from celerydiag.watch.sample import REASONS, SIGNALS, Sample

# Seconds, from a fast local Redis (~1 ms) to a stalled backend (tens of seconds).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DEFAULT_PORT = 9808


class Metrics:
    """Every metric watch exports, on ``self.registry`` (not the process-wide default one)."""

    def __init__(self, modes: list[str], broker_scheme: str, backend_scheme: str) -> None:
        r = self.registry = CollectorRegistry()
        self.visibility = Histogram(
            "celerydiag_state_visibility_seconds",
            "Seconds from update_state() returning in the canary task to a client seeing the new "
            "state; path=poll reads backend.get_task_meta(), path=push listens with on_message.",
            ["path"], buckets=LATENCY_BUCKETS, registry=r)
        self.dispatch = Histogram(
            "celerydiag_dispatch_latency_seconds",
            "Seconds from apply_async() of a canary task to its start on the canary worker.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.backend_write = Histogram(
            "celerydiag_backend_write_seconds",
            "Seconds one update_state() call of the canary task blocked: the result backend's "
            "write latency.", buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram(
            "celerydiag_task_queue_wait_seconds",
            "Seconds the app's real tasks waited in the queue, task-sent to task-started event "
            "(only with --events and task events enabled).", buckets=LATENCY_BUCKETS, registry=r)
        self.backlog = Gauge("celerydiag_broker_backlog_messages",
                             "Messages ready in each of the app's queues, read passively.",
                             ["queue"], registry=r)
        self.blocked = Gauge("celerydiag_broker_blocked",
                             "1 when the broker blocks publishers (a RabbitMQ memory or disk alarm), else 0.",
                             registry=r)
        self.rtt = Gauge("celerydiag_rtt_seconds",
                         "Round-trip time to the broker or backend: method=tcp_info is the kernel's "
                         "smoothed RTT of our connection, method=ping one protocol request.",
                         ["peer", "method"], registry=r)
        self.writes = Gauge("celerydiag_backend_writes_per_second",
                            "Result-backend state writes per second over the last interval, from the "
                            "server's own counters (pg_stat_user_tables, MySQL status, Redis commandstats).",
                            registry=r)
        self.up = Gauge("celerydiag_target_up",
                        "1 when the last interval reached this side of the target (broker, "
                        "backend), else 0.", ["side"], registry=r)
        self.canary_runs = Counter("celerydiag_canary_runs", "Canary rounds, by result (ok, failed, skipped).",
                                   ["result"], registry=r)
        self.errors = Counter("celerydiag_errors", "Failed reads, by signal and reason.",
                              ["signal", "reason"], registry=r)
        self.last = Gauge("celerydiag_last_round_timestamp_seconds",
                          "Unix time the last interval started.", registry=r)
        self.round_s = Gauge("celerydiag_round_duration_seconds",
                             "Wall time of the last interval's measurements.", registry=r)
        Info("celerydiag_watch", "celerydiag watch build and target kinds (schemes only, never URLs).",
             registry=r).info({"version": __version__, "broker": broker_scheme, "backend": backend_scheme})
        # Every series exists from the first scrape: rate() and absent() then mean what they say.
        for mode in modes:
            self.visibility.labels(path=mode)
        for result in ("ok", "failed", "skipped"):
            self.canary_runs.labels(result=result)
        for signal in SIGNALS:
            for reason in REASONS:
                self.errors.labels(signal=signal, reason=reason)
        self._queues: set[str] = set()
        self._rtts: set[tuple[str, str]] = set()

    def observe(self, sample: Sample) -> None:
        for path, values in sample.visibility_ms.items():
            child = self.visibility.labels(path=path)
            for v in values:
                child.observe(v / 1000.0)
        for v in sample.dispatch_ms:
            self.dispatch.observe(v / 1000.0)
        for v in sample.backend_write_ms:
            self.backend_write.observe(v / 1000.0)
        for v in sample.queue_wait_ms:
            self.queue_wait.observe(v / 1000.0)
        self._set_labelled(self.backlog, self._queues, {(q,): float(n) for q, n in sample.backlog.items()})
        self._set_labelled(self.rtt, self._rtts, {(peer, m): v / 1000.0 for peer, methods in sample.rtt_ms.items()
                                                  for m, v in methods.items()})
        if sample.broker_blocked is not None:
            self.blocked.set(1.0 if sample.broker_blocked else 0.0)
        if sample.backend_writes_per_s is not None:
            self.writes.set(sample.backend_writes_per_s)
        for side, ok in sample.up.items():
            self.up.labels(side=side).set(1.0 if ok else 0.0)
        if sample.canary:
            self.canary_runs.labels(result=sample.canary).inc()
        for problem in sample.problems:
            self.errors.labels(signal=problem.signal, reason=problem.reason).inc()
        self.last.set(sample.time)
        self.round_s.set(sample.elapsed_s)

    @staticmethod
    def _set_labelled(gauge: Any, known: set[Any], values: dict[Any, float]) -> None:
        """Set this interval's series; drop those no longer read (a queue deleted, a peer gone),
        so a stale value never stands in for a missing one."""
        for labels in known - set(values):
            gauge.remove(*labels)
        for labels, value in values.items():
            gauge.labels(*labels).set(value)
        known.clear()
        known.update(values)


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` -> (host, port); no host means loopback."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:{DEFAULT_PORT})")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(metrics: Metrics, host: str, port: int) -> tuple[Any, int]:
    """Serve /metrics on a daemon thread; returns the server and the port it bound (0: any free)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server, int(server.server_address[1])
