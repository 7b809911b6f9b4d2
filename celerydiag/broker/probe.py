"""The broker probe: how long the broker holds a task (and, with ``rpc://``, every state update).

Where the broker sits on the state path decides what its milliseconds mean (celery-facts A.3,
H.1): with Redis or database results the worker writes states straight to the backend, so the
broker only delays *dispatch* (PENDING→STARTED); with ``rpc://`` every ``update_state`` is an AMQP
message to the client's reply queue, and publisher confirms make the worker wait for each ack.
Every finding says which of the two it is talking about.

The fixes name only real settings in the right place (celery-facts C.1–C.4): ``confirm_publish``
is a ``broker_transport_options`` key of the pyamqp transport, and its cost is the one measured
here. Static mistakes that need no broker (retry keys that are connection retries, confirm_publish
on Redis, confirm_delivery) are the config probe's findings; repeating them here would print the
same fix twice in `doctor`. Where both speak (heartbeat 0, rpc + confirms) the fixes are identical.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from celerydiag.broker import amqp as amqp_m
from celerydiag.broker import redis as redis_m
from celerydiag.errors import DiagError, TargetUnreachable, describe, quietly
from celerydiag.findings import Cause, Finding, Fix, Severity, delay
from celerydiag.measure import Summary, back_to_back, scheduled, summarize
from celerydiag.probe import Probe, ProbeContext
from celerydiag.target import AMQP_SCHEMES, REDIS_SCHEMES, Side, Target, redact_url

RTT_SAMPLES = 50
RTT_SHARE = 0.1  # of --max-seconds, for the round-trip baseline
HANDSHAKES = 3
MAX_QUEUES = 50  # user queues read passively, at most
MIN_DRAIN_WINDOW_S = 1.0  # the shortest window over which a queue's depth is read twice for its drain rate
FINISH_MARGIN_S = 1.0  # kept before the probe's deadline (--max-seconds) for warm-ups and findings

DOCS_CONFIRM = "https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-transport-options"
DOCS_HEARTBEAT = "https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-heartbeat"
DOCS_ALARMS = "https://www.rabbitmq.com/docs/alarms"
DOCS_BLOCKED = "https://www.rabbitmq.com/docs/connection-blocked"
DOCS_CONFIRMS_RMQ = "https://www.rabbitmq.com/docs/confirms"
DOCS_REDIS_EVICTION = "https://redis.io/docs/latest/develop/reference/eviction/"
DOCS_RPC = "https://docs.celeryq.dev/en/stable/userguide/tasks.html#rpc-result-backend-rabbitmq-qpid"

# Fix templates (Celery's E_/W_ habit): valid Python assigning real settings, pasteable.
FIX_HEARTBEAT = """\
broker_heartbeat = 120  # Celery's default; RabbitMQ's 60 s proposal then wins the negotiation
"""
FIX_RPC_TO_REDIS = """\
# Move task states off the broker: the worker then writes them straight to Redis
result_backend = 'redis://REDIS-HOST:6379/0'
"""


def fix_confirm_on(target: Target) -> str:
    """``broker_transport_options`` with confirms on and the user's other keys kept: the config
    probe's renderer (it keeps secrets out and drops keys that do nothing), so both print one text."""
    from celerydiag.config.fixes import assignments, recommended_transport_options

    options = recommended_transport_options(target.conf, target)
    options["confirm_publish"] = True
    return assignments(broker_transport_options=options)


def app_queues(conf: Any) -> list[str]:
    """The queues the app's tasks go to: task_queues, else task_default_queue, plus any queue
    named in a dict of task_routes. Names only: we never touch their settings."""
    names: list[str] = []
    for queue in conf.task_queues or ():
        name = getattr(queue, "name", None) or (queue if isinstance(queue, str) else None)
        if name:
            names.append(str(name))
    if not names:
        names.append(str(conf.task_default_queue or "celery"))
    routes = conf.task_routes
    for route in routes.values() if isinstance(routes, dict) else ():
        queue = route.get("queue") if isinstance(route, dict) else None
        name = getattr(queue, "name", queue)
        if isinstance(name, str) and name:
            names.append(name)
    return list(dict.fromkeys(names))[:MAX_QUEUES]


def is_persistent(conf: Any) -> bool:
    mode = conf.task_default_delivery_mode
    return mode in (2, "2", "persistent", None)


def on_rpc(target: Target) -> bool:
    return target.backend_scheme == "rpc"


def state_path_words(target: Target) -> str:
    if on_rpc(target):
        return ("with rpc:// results every update_state() is an AMQP message through this broker to the "
                "client's reply queue, so broker latency adds to every state the client sees")
    if target.backend_scheme in ("disabled", ""):
        return ("no result backend is configured, so no state is stored: the broker carries the task "
                "message, and its latency delays dispatch (PENDING→STARTED)")
    return (f"with {target.backend_scheme}:// results the worker writes states straight to the backend: "
            "the broker carries only the task message, so its latency delays dispatch (PENDING→STARTED), "
            "not PROGRESS/SUCCESS updates")


def dispatch_words(target: Target) -> str:
    if target.backend_scheme in ("disabled", ""):
        return "task dispatch (PENDING→STARTED); no result backend"
    return f"task dispatch (PENDING→STARTED) only; states go to {target.backend_scheme}://"


def confirms_on(conf: Any) -> bool:
    return bool((conf.broker_transport_options or {}).get("confirm_publish"))


def _p(summary: Summary, q: str = "p99") -> float:
    value = getattr(summary, f"{q}_ms")
    return 0.0 if value != value else float(value)  # NaN (no samples) counts as nothing


def _overhead(confirm: Summary, plain: Summary) -> dict[str, float]:
    return {"p50": round(max(0.0, _p(confirm, "p50") - _p(plain, "p50")), 3),
            "p99": round(max(0.0, _p(confirm) - _p(plain)), 3)}


class BrokerProbe(Probe):
    """Broker: publish latency with/without confirms, blocked connections, heartbeats, backlog.

    RabbitMQ (through kombu/py-amqp, as Celery): on a scratch queue of its own
    (``<scratch>.broker``: exclusive, auto-delete, x-expires) it publishes up to --samples
    messages per series on a fixed schedule (plain and with publisher confirms, persistent and
    transient, plus publish→consume), within --max-seconds, and times each from its intended
    send time. It reads the app's own queues only passively. Redis: LPUSH/BRPOP on a key of its
    own (deleted afterwards) and INFO. Optional --rabbitmq-api adds alarms and queue rates.
    """

    name = "broker"
    cause = Cause.BROKER
    needs = frozenset({Side.BROKER})

    def applies(self, ctx: ProbeContext) -> str | None:
        scheme = ctx.target.broker_scheme
        if scheme in ("memory", ""):
            return ("broker is memory:// (the embedded default, in-process): no broker to measure; "
                    "pass --app or --broker to measure yours")
        if scheme not in AMQP_SCHEMES | REDIS_SCHEMES:
            return f"broker transport {scheme}:// is not measured (RabbitMQ and Redis are)"
        if scheme == "sentinel":  # a Redis broker, but reached through Sentinel: no one URL to connect
            return ("broker is sentinel://: the Redis measurement connects to one server; pass "
                    "--broker redis://MASTER-HOST:6379/0 to measure the current master")
        return None

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        if ctx.target.broker_scheme in AMQP_SCHEMES:
            yield from AmqpRun(ctx).run()
        else:
            yield from RedisRun(ctx).run()


class AmqpRun:
    """One RabbitMQ measurement run; holds its connections so cleanup can reach them."""

    def __init__(self, ctx: ProbeContext) -> None:
        self.ctx = ctx
        self.target = ctx.target
        self.conf = ctx.target.conf
        self.timeout = ctx.limits.timeout_s
        self.queue = f"{ctx.scratch}.broker"
        self.watch = amqp_m.BlockedWatch()
        self.started = time.monotonic()

    def _open(self, confirm: bool) -> Any:
        conn = amqp_m.connection(self.target, self.timeout, confirm=confirm, watch=self.watch)
        # registered before the connection exists on the wire: Ctrl-C at any point closes it,
        # and with it our exclusive queue
        self.ctx.cleanup.callback(lambda: amqp_m.drop(conn, hard=self.watch.ever_blocked))
        try:
            self.connect_ms.append(amqp_m.connect(conn, self.watch))
        except Exception as exc:
            raise TargetUnreachable(self.target.redact(
                f"broker {redact_url(self.target.broker_url)}: {describe(exc)}")) from None
        return conn

    def run(self) -> Iterator[Finding]:
        ctx = self.ctx
        samples = ctx.limits.samples
        ctx.progress.start("broker", total=5 * samples + 10)
        self.connect_ms: list[float] = []
        worker_hb = float(self.conf.broker_heartbeat or 0)
        handshakes = []
        ctx.doing("connecting to the broker")
        for _ in range(HANDSHAKES):
            try:
                handshakes.append(amqp_m.handshake(self.target, self.timeout, worker_hb))
            except Exception as exc:
                raise TargetUnreachable(self.target.redact(
                    f"broker {redact_url(self.target.broker_url)}: {describe(exc)}")) from None
            self.connect_ms.append(handshakes[-1].connect_ms)
        ctx.progress.step(HANDSHAKES, "connect")
        plain = self._open(confirm=False)
        channel = plain.channel()
        expires_ms = int((ctx.limits.max_seconds + 4 * self.timeout + 60) * 1000)
        ctx.cleanup.callback(quietly, lambda: channel.queue_delete(self.queue))
        durable = amqp_m.declare_scratch(channel, self.queue, expires_ms)
        if not durable:  # the failed declare closed that channel
            channel = plain.channel()
            channel.queue_declare(self.queue, durable=False, exclusive=True, auto_delete=True,
                                  arguments={"x-expires": expires_ms})
        confirmed = self._open(confirm=True)
        confirm_channel = confirmed.channel()

        ctx.doing("waiting for the ack of a confirmed canary publish")
        stalled = self._canary(confirm_channel)
        ctx.doing("reading the broker's state")
        api = self._api()
        yield from self._api_status(api)
        yield from self._blocked(stalled, api)
        yield from self._heartbeat(handshakes, worker_hb)
        first = self._depths(plain)
        if stalled is None and not self.watch.ever_blocked:
            yield from self._latency(plain, channel, confirm_channel, durable)
        yield from self._backlog(plain, api, first)

    # ---- blocked connections -------------------------------------------------------------
    def _canary(self, confirm_channel: Any) -> str | None:
        """One confirmed publish before anything else. A broker under a memory or disk alarm
        stops reading publishers' sockets: the ack never comes, and RabbitMQ tells us
        ``connection.blocked``. Returns why it stalled, or None."""
        op = amqp_m.publisher(confirm_channel, self.queue, persistent=True, confirm_timeout=self.timeout)
        started = time.monotonic()
        try:
            op(-1000)
            return None
        except Exception as exc:  # timeout while blocked, or the connection dropped under us
            self.canary_wait_s = time.monotonic() - started
            return describe(exc)

    def _blocked(self, stalled: str | None, api: Any) -> Iterator[Finding]:
        alarms = list(api.alarms) if api else []
        evidence: dict[str, Any] = {"blocked": self.watch.ever_blocked, "alarms": alarms}
        if api is not None:
            evidence.update(connections_count=api.connections, blocked_connections_count=api.blocked_connections)
        if self.watch.ever_blocked or stalled or alarms:
            reason = self.watch.reason or (", ".join(alarms) if alarms else "")
            waited = getattr(self, "canary_wait_s", 0.0)
            evidence.update(reason=reason or "unknown", confirm_wait_s=round(waited, 3))
            what = (f"RabbitMQ blocks publishers: {reason}" if reason
                    else "a confirmed publish got no ack within the timeout")
            yield Finding(
                "broker.blocked", Cause.BROKER, Severity.CRITICAL,
                f"{what}; task messages wait (or, without confirms, may be lost) until the alarm clears",
                detail=("A memory or disk alarm makes RabbitMQ stop reading the sockets of every "
                        "connection that publishes (connection state 'blocked'): apply_async() with "
                        "confirms hangs, without confirms it returns but the task does not arrive; with "
                        "rpc:// results state updates stop too. Our probe waited "
                        f"{waited:.1f} s for one ack. Free memory/disk on the broker or drain the "
                        "queues holding it (rabbitmq-diagnostics alarms; rabbitmqctl list_queues "
                        "name messages memory). " + state_path_words(self.target)),
                impact_ms=round(waited * 1000, 3), evidence=evidence,
                fix=Fix("clear the broker alarm: consume or purge the queues using the memory, free disk, "
                        "or raise vm_memory_high_watermark / disk_free_limit in rabbitmq.conf "
                        "(a broker setting, not a Celery one)", "", (DOCS_ALARMS, DOCS_BLOCKED)))
        else:
            yield Finding("broker.blocked", Cause.BROKER, Severity.OK,
                          "RabbitMQ accepts publishes (no memory or disk alarm, connection not blocked)",
                          evidence=evidence)

    # ---- heartbeats ---------------------------------------------------------------------
    def _heartbeat(self, handshakes: list[amqp_m.Handshake], worker_hb: float) -> Iterator[Finding]:
        hs = handshakes[-1]
        rate = float(self.conf.broker_heartbeat_checkrate or 0)
        evidence = {"server_heartbeat_s": hs.server_heartbeat_s, "broker_heartbeat_s": worker_hb,
                    "negotiated_heartbeat_s": hs.negotiated_heartbeat_s,
                    "broker_heartbeat_checkrate_ratio": rate, "producer_heartbeat_s": 0}
        how = ("Only the worker's consumer connection uses broker_heartbeat; every pool sends them from the "
               "worker's event loop on py-amqp (solo and threads too: celery/worker/worker.py "
               "should_use_eventloop, consumer.py amqheartbeat); apply_async()/client connections use 0. "
               "py-amqp negotiates: if either side is 0 the other wins, else the smaller (a client "
               "cannot raise a lower value the server proposes), and a client 0 disables them.")
        if hs.negotiated_heartbeat_s <= 0:
            yield Finding(
                "broker.heartbeat", Cause.BROKER, Severity.INFO,
                "worker heartbeats are disabled: a silently dead broker connection is noticed only "
                "by py-amqp's TCP keepalive (about 2.5 min), and tasks stay PENDING meanwhile",
                detail=(f"RabbitMQ proposes {hs.server_heartbeat_s} s, broker_heartbeat is {worker_hb:g}. {how} "
                        "py-amqp's default socket_settings (amqp/transport.py DEFAULT_SOCKET_SETTINGS) turn on "
                        "TCP keepalive after 60 s idle, 9 probes 10 s apart, and TCP_USER_TIMEOUT 1 s for "
                        "unacknowledged sends: an idle dead connection is dropped after about 150 s, not hours."),
                evidence=evidence,
                fix=Fix("enable worker heartbeats", FIX_HEARTBEAT, (DOCS_HEARTBEAT,)))
            return
        detect = 2 * hs.negotiated_heartbeat_s
        yield Finding(
            "broker.heartbeat", Cause.BROKER, Severity.OK,
            f"worker connections negotiate a {hs.negotiated_heartbeat_s:g} s heartbeat: a dead connection "
            f"is detected within about {detect:g} s",
            detail=(f"RabbitMQ proposes {hs.server_heartbeat_s} s and broker_heartbeat is {worker_hb:g} s. "
                    f"{how} The worker checks every heartbeat/broker_heartbeat_checkrate = "
                    f"{hs.negotiated_heartbeat_s / rate if rate else 0:g} s and gives up after 2 silent "
                    "intervals; heartbeats cost no latency while the connection is healthy."),
            evidence=dict(evidence, dead_connection_detect_s=detect))

    # ---- backlog ------------------------------------------------------------------------
    def _depths(self, plain: Any) -> Depths:
        states = amqp_m.passive_states(plain, app_queues(self.conf))
        return Depths({s.name: (s.messages if s.declared else None, s.consumers) for s in states},
                      time.monotonic())

    def _backlog(self, plain: Any, api: Any, first: Depths) -> Iterator[Finding]:
        """The app's queues read again after the latency series: their depth over that window
        is the drain rate (or the API's deliver rate, when read)."""
        if time.monotonic() - first.at < MIN_DRAIN_WINDOW_S:  # no latency series ran (a blocked broker)
            time.sleep(max(0.0, min(MIN_DRAIN_WINDOW_S - (time.monotonic() - first.at), self.ctx.left() - 1)))
        rates = api.queues if api else {}
        yield from backlog_findings(self._depths(plain), rates, self.ctx.budget_ms, self.target, first,
                                    api_read=api is not None)
        self.ctx.progress.step(5, "backlog")

    # ---- latency ------------------------------------------------------------------------
    def _latency(self, plain: Any, channel: Any, confirm_channel: Any, durable: bool) -> Iterator[Finding]:
        ctx = self.ctx
        samples = ctx.limits.samples
        step = lambda: ctx.progress.step(1)  # noqa: E731
        # A passive declare of our own queue is one request and one reply with no broker work to
        # speak of: the network + protocol baseline.
        rtt = summarize(back_to_back(lambda: channel.queue_declare(self.queue, passive=True), RTT_SAMPLES,
                                     within_s=RTT_SHARE * ctx.limits.max_seconds))
        # What is left before the guard's cut, less a margin for each series' warm-up and purge
        # and the findings: a series that ran into the cut would lose every number measured.
        left = max(0.5, min(ctx.limits.max_seconds - (time.monotonic() - self.started),
                            ctx.left() - FINISH_MARGIN_S))
        share = left / 5
        series: dict[str, Summary] = {}
        intervals: dict[str, float] = {}
        plan = [
            ("publish_transient", amqp_m.publisher(channel, self.queue, persistent=False)),
            ("publish_persistent", amqp_m.publisher(channel, self.queue, persistent=True)),
            ("confirm_transient", amqp_m.publisher(confirm_channel, self.queue, persistent=False,
                                                   confirm_timeout=self.timeout)),
            ("confirm_persistent", amqp_m.publisher(confirm_channel, self.queue, persistent=True,
                                                    confirm_timeout=self.timeout)),
        ]
        try:
            for key, op in plan:
                ctx.progress.step(0, key.replace("_", " "))
                ctx.doing(f"timing {key.replace('_', ' ')} publishes")
                intervals[key] = amqp_m.interval_for(op)
                series[key] = summarize(scheduled(op, samples, intervals[key], share, step))
                channel.queue_purge(self.queue)  # keep the broker's footprint to one series
            ctx.progress.step(0, "publish→consume")
            ctx.doing("timing publish→consume round trips")
            consumer = amqp_m.Consumer(plain.connection, channel, self.queue, self.timeout)
            publish = amqp_m.publisher(channel, self.queue, persistent=is_persistent(self.conf))

            def round_trip(seq: int) -> None:
                publish(seq)
                consumer.wait_for(seq)

            intervals["roundtrip"] = amqp_m.interval_for(round_trip)
            series["roundtrip"] = summarize(scheduled(round_trip, samples, intervals["roundtrip"], share, step))
            consumer.cancel()
        except (OSError, *plain.connection_errors, *plain.channel_errors) as exc:  # socket.timeout included
            raise DiagError(self.target.redact(
                f"the broker stopped answering mid-measurement ({describe(exc)}); "
                "rerun to see whether it is blocked")) from None
        yield from latency_findings(self.ctx, series, rtt, summarize(self.connect_ms), intervals, durable)

    def _api_status(self, api: Any) -> Iterator[Finding]:
        error = getattr(self, "api_error", None)
        if error:
            yield Finding("broker.management-api", Cause.BROKER, Severity.INFO,
                          "RabbitMQ management API not read; alarms and queue rates come from AMQP only",
                          detail=f"{error}. The API is optional (rabbitmq-plugins enable rabbitmq_management).",
                          evidence={"error": error})
        elif api is not None:
            yield Finding("broker.management-api", Cause.BROKER, Severity.OK,
                          f"RabbitMQ management API read: {api.connections} connection"
                          f"{'' if api.connections == 1 else 's'}, "
                          f"{api.blocked_connections} blocked, {api.flow_connections} in flow control, "
                          f"{len(api.alarms)} alarms",
                          detail=("Alarms are read live (health check); connection states and queue "
                                  "counters are the broker's statistics, up to collect_statistics_interval "
                                  "(5 s by default) old. A connection in 'flow' is a publisher RabbitMQ "
                                  "throttles because a queue cannot keep up: its publishes take longer."),
                          evidence={"connections_count": api.connections,
                                    "blocked_connections_count": api.blocked_connections,
                                    "flow_connections_count": api.flow_connections,
                                    "alarms": list(api.alarms),
                                    "queues": {name: _api_queue(q) for name, q in api.queues.items()}})

    def _api(self) -> Any:
        url = self.ctx.options.rabbitmq_api
        if not url:
            return None
        from celerydiag.broker import api as broker_api

        try:
            vhost = _vhost(self.target.broker_url)
            return broker_api.read(url, vhost, app_queues(self.conf), self.timeout)
        except broker_api.ApiError as exc:
            self.api_error = self.target.redact(str(exc))
            return None


def _api_queue(q: Any) -> dict[str, Any]:
    """One queue as the API saw it; keys without statistics yet are left out."""
    facts = {"messages_count": q.messages, "consumers_count": q.consumers,
             "publish_rate_per_s": q.publish_per_s, "deliver_rate_per_s": q.deliver_per_s}
    return {k: v for k, v in facts.items() if v is not None}


def _vhost(url: str) -> str:
    from kombu.utils.url import parse_url

    return str(parse_url(url.split(";", 1)[0]).get("virtual_host") or "/")


@dataclass(frozen=True)
class Depths:
    """The app's queues at one moment: name -> (ready messages, or None when not declared;
    consumers, or -1 when unknown), and when (time.monotonic())."""

    queues: dict[str, tuple[int | None, int]]
    at: float


def drain_rates(first: Depths, last: Depths) -> dict[str, float]:
    """Messages per second each queue's depth fell between two readings (0 when it did not fall).

    This is the net drain (deliveries minus new publishes): the consumers take at least this
    many per second, so N / rate is an upper bound of the wait when tasks keep arriving, and
    exact when they do not. The management API's deliver rate, when read, is used instead."""
    window = last.at - first.at
    rates: dict[str, float] = {}
    for name, (messages, _) in last.queues.items():
        before = first.queues.get(name, (None, -1))[0]
        if messages is None or before is None or window <= 0:
            continue
        rates[name] = max(0.0, (before - messages) / window)
    return rates


def backlog_findings(depths: Depths | dict[str, tuple[int | None, int] | Any], rates: dict[str, Any],
                     budget_ms: float, target: Target, first: Depths | None = None,
                     api_read: bool = False) -> Iterator[Finding]:
    """The backlog finding from the last reading of the app's queues (``depths``), the drain rate
    per queue measured from ``first`` to it, or the management API's deliver rate (``rates``)
    when the API was read (``api_read``). A new task waits behind N ready messages about
    N / rate seconds before it starts: that is the impact (PENDING->STARTED)."""
    last = depths if isinstance(depths, Depths) else Depths(dict(depths), time.monotonic())
    window_s = last.at - first.at if first is not None else 0.0
    evidence, waiting = _queue_entries(last, first, rates)
    idle = [(n, m) for n, m, c in waiting if c == 0]
    if idle:
        listing = ", ".join(f"{n} ({m} messages)" for n, m in idle)
        yield Finding(
            "broker.backlog", Cause.BROKER, Severity.CRITICAL,
            f"no worker consumes {listing}: those tasks stay PENDING until one does",
            detail=("Messages are waiting and the queue has no consumer. Start a worker for it "
                    f"(celery -A proj worker -Q {','.join(n for n, _ in idle)}) or route the tasks to a "
                    "queue your workers consume (task_routes)."),
            evidence={"queues": evidence, "window_s": round(window_s, 3)})
        return
    if waiting:
        wait_ms, worst = 0.0, ""
        for name, messages, _ in waiting:
            per_s = evidence[name].get("drain_rate_per_s")
            if per_s:
                evidence[name]["wait_ms"] = round(1000.0 * messages / per_s, 3)
                if evidence[name]["wait_ms"] > wait_ms:
                    wait_ms, worst = evidence[name]["wait_ms"], name
        total = sum(m for _, m, _ in waiting)
        if wait_ms:
            entry = evidence[worst]
            how = ("the management API's deliver rate" if entry["drain_rate_source"] == "management-api" else
                   f"its depth falling {entry.get('messages_at_start_count', entry['messages_count'])} -> "
                   f"{entry['messages_count']} in {window_s:.1f} s (net of new tasks: an upper bound while "
                   "tasks keep arriving)")
            title = (f"{total} tasks already queued: a new task waits about {wait_ms / 1000:.1f} s behind them "
                     f"before it starts ({worst} drains {entry['drain_rate_per_s']:g}/s)")
            why = f"{worst}: {entry['messages_count']} messages / {entry['drain_rate_per_s']:g} per s, from {how}. "
        else:
            title = (f"{total} tasks already queued ahead of any new one; the wait is unknown: "
                     f"{_unknown_wait(target, first is not None, window_s, api_read)}")
            why = ""
        yield delay("broker.backlog", Cause.BROKER, wait_ms, title,
                    detail=(why + "A backlog delays dispatch (PENDING→STARTED) only; add workers or "
                            "concurrency for those queues, or give urgent tasks their own queue. "
                            + state_path_words(target)),
                    evidence={"queues": evidence, "window_s": round(window_s, 3)})
        return
    yield Finding("broker.backlog", Cause.BROKER, Severity.OK,
                  "no backlog on the app's queues", evidence={"queues": evidence, "window_s": round(window_s, 3)})


def _queue_entries(last: Depths, first: Depths | None, rates: dict[str, Any],
                   ) -> tuple[dict[str, Any], list[tuple[str, int, int]]]:
    """Each queue's evidence (depth, consumers, drain rate and where it came from) and the queues
    with messages waiting: (name, messages, consumers)."""
    drained = drain_rates(first, last) if first is not None else {}
    evidence: dict[str, Any] = {}
    waiting: list[tuple[str, int, int]] = []
    for name, (messages, consumers) in last.queues.items():
        if messages is None:
            evidence[name] = {"declared": False}
            continue
        entry: dict[str, Any] = {"messages_count": messages}
        if consumers >= 0:
            entry["consumers_count"] = consumers
        before = first.queues.get(name, (None, -1))[0] if first is not None else None
        if before is not None:
            entry["messages_at_start_count"] = before
        rate = rates.get(name)
        if rate is not None and rate.deliver_per_s:
            entry["deliver_interval_ms"] = round(1000.0 / rate.deliver_per_s, 3)  # 1 / deliver rate
            entry["drain_rate_per_s"] = round(rate.deliver_per_s, 3)
            entry["drain_rate_source"] = "management-api"
        elif drained.get(name):
            entry["drain_rate_per_s"] = round(drained[name], 3)
            entry["drain_rate_source"] = "depth"
        evidence[name] = entry
        if messages:
            waiting.append((name, messages, consumers))
    return evidence, waiting


def _unknown_wait(target: Target, sampled: bool, window_s: float, api_read: bool) -> str:
    """Why a backlog's wait has no milliseconds: what was read and what would give them."""
    if api_read:
        return ("the management API shows no deliveries from these queues and their depth did not "
                f"fall in {window_s:.1f} s: the consumers take no tasks (stuck or saturated)")
    if sampled:
        return (f"their depth did not fall in {window_s:.1f} s, so no drain rate could be measured "
                "(tasks arrive as fast as they are taken, or the consumers are stuck); "
                + ("pass --rabbitmq-api for the deliver rate" if target.broker_scheme in AMQP_SCHEMES
                   else "sample again with a longer --max-seconds"))
    return "no drain rate was measured"


def latency_findings(ctx: ProbeContext, series: dict[str, Summary], rtt: Summary, connect: Summary,
                     intervals: dict[str, float], durable: bool) -> Iterator[Finding]:
    """The main finding and the confirm-cost finding, from the measured series (RabbitMQ)."""
    target = ctx.target
    conf = target.conf
    persistent = is_persistent(conf)
    mode = "persistent" if persistent else "transient"
    # rpc results are transient unless result_persistent; task messages follow delivery mode
    update_mode = "persistent" if conf.result_persistent else "transient"
    publish, confirm = series[f"publish_{mode}"], series[f"confirm_{mode}"]
    roundtrip = series["roundtrip"]
    enabled = confirms_on(conf)
    rpc = on_rpc(target)
    confirm_cost = _overhead(series[f"confirm_{update_mode if rpc else mode}"],
                             series[f"publish_{update_mode if rpc else mode}"])
    impact = _p(roundtrip) + (confirm_cost["p99"] if enabled and rpc else 0.0)
    evidence: dict[str, Any] = {
        "samples": min(s.samples for s in series.values()),
        "publish_ms": publish.short(), "confirm_ms": confirm.short(),
        "publish_transient_ms": series["publish_transient"].short(),
        "publish_persistent_ms": series["publish_persistent"].short(),
        "confirm_transient_ms": series["confirm_transient"].short(),
        "confirm_persistent_ms": series["confirm_persistent"].short(),
        "confirm_overhead_ms": _overhead(confirm, publish),
        "roundtrip_ms": roundtrip.short(), "amqp_rtt_ms": rtt.short(), "connect_ms": connect.short(),
        "interval_ms": {k: round(v * 1000, 3) for k, v in intervals.items()},
        "delivery_mode": mode, "confirm_publish": enabled, "durable_scratch_queue": durable,
        "state_path": "every-update" if rpc else "dispatch-only",
    }
    where = ("every state update (rpc://)" if rpc else
             dispatch_words(target))
    broker_work = max(0.0, _p(confirm, "p50") - _p(rtt, "p50"))
    detail = (f"{state_path_words(target)}. Publish→consume round trip P50 {_p(roundtrip, 'p50'):.2f} ms / P99 "
              f"{_p(roundtrip):.2f} ms; the network+protocol round trip alone (AMQP request/reply) is "
              f"P50 {_p(rtt, 'p50'):.2f} ms, so the broker itself adds about {broker_work:.2f} ms to a "
              f"confirmed {mode} publish. Connecting costs P50 {_p(connect, 'p50'):.1f} ms (paid per "
              "publish only when broker_pool_limit is 0/None). Samples "
              f"are timed from their intended send time on a fixed schedule.")
    if not durable:
        detail += (" The broker refused a durable scratch queue, so persistent messages skipped the disk here; "
                   "on a durable queue RabbitMQ acks them after its batched fsync (up to a few hundred ms "
                   "under load).")
    yield delay("broker.publish-latency", Cause.BROKER, round(impact, 3),
                f"broker adds {impact:.1f} ms (P99) to {where}",
                detail=detail, evidence=evidence,
                fix=Fix("keep task states off the broker: use a Redis (or database) result backend",
                        FIX_RPC_TO_REDIS, (DOCS_RPC,)) if rpc and impact >= 0.2 * ctx.budget_ms else None)
    cost = confirm_cost["p99"]
    cost_evidence = {"confirm_overhead_ms": confirm_cost, "confirm_publish": enabled,
                     "delivery_mode": update_mode if rpc else mode}
    if enabled:
        where_cost = ("every update_state() (the worker waits for each ack before it goes on)" if rpc
                      else "every apply_async() call (the caller waits; the task itself is delivered as fast)")
        yield delay("broker.confirm-publish", Cause.BROKER, round(cost, 3) if rpc else 0.0,
                    f"publisher confirms add {cost:.2f} ms (P99) to {where_cost}",
                    detail=("confirm_publish=True makes py-amqp wait for RabbitMQ's basic.ack after each "
                            "publish, one message at a time per channel. Keep it: it is what turns a "
                            "blocked or refusing broker into an error instead of a silently lost task. "
                            + ("To take it off the state path, move results to Redis." if rpc else
                               "It does not delay state updates with this result backend.")),
                    evidence=cost_evidence,
                    fix=Fix("keep confirms; move task states off the broker", FIX_RPC_TO_REDIS, (DOCS_RPC,))
                    if rpc and cost >= 0.2 * ctx.budget_ms else None)
    else:
        yield Finding(
            "broker.confirm-publish", Cause.BROKER, Severity.INFO,
            f"publisher confirms are off: a blocked or refusing broker loses tasks silently; "
            f"turning them on costs {cost:.2f} ms (P99) per publish here",
            detail=("Without broker_transport_options={'confirm_publish': True}, apply_async() returns "
                    "once the message is written to the socket; a resource alarm or a message over "
                    "max_message_size then drops it without an error (celery#5410, kombu#2336). The cost "
                    "measured here is per publish, one at a time per channel"
                    + (", and with rpc:// it adds to every update_state()." if rpc else
                       "; with this result backend it delays only apply_async() returning, no state.")),
            evidence=cost_evidence,
            fix=Fix("enable publisher confirms (pyamqp transport option)", fix_confirm_on(target),
                    (DOCS_CONFIRM, DOCS_CONFIRMS_RMQ)))


class RedisRun:
    """One Redis-broker measurement run."""

    def __init__(self, ctx: ProbeContext) -> None:
        self.ctx = ctx
        self.target = ctx.target
        self.timeout = ctx.limits.timeout_s
        self.key = f"{ctx.scratch}.broker"

    def _client(self) -> Any:
        client = redis_m.client(self.target, self.timeout, name=self.ctx.scratch)
        self.ctx.cleanup.callback(quietly, client.close)
        return client

    def run(self) -> Iterator[Finding]:
        ctx = self.ctx
        samples = ctx.limits.samples
        ctx.progress.start("broker", total=samples + 10)
        publisher, consumer = self._client(), self._client()
        started = time.perf_counter()
        try:
            publisher.ping()
            connect = (time.perf_counter() - started) * 1000
            # registered before the key is first written: Ctrl-C at any point removes it
            # (LIFO: runs before the clients are closed)
            ctx.cleanup.callback(quietly, lambda: publisher.delete(self.key))
            facts = redis_m.ServerFacts.read(publisher)
        except Exception as exc:
            raise TargetUnreachable(self.target.redact(
                f"broker {redact_url(self.target.broker_url)}: {describe(exc)}")) from None
        yield from redis_memory_findings(facts)
        options = dict(self.target.conf.broker_transport_options or {})

        def depths() -> Depths:
            counts = redis_m.backlog(publisher, app_queues(self.target.conf), options)
            return Depths({n: (m, -1) for n, m in counts.items()}, time.monotonic())

        first = depths()
        rtt = summarize(back_to_back(publisher.ping, RTT_SAMPLES))
        ctx.progress.step(5, "LPUSH→BRPOP")
        left = max(0.5, min(ctx.limits.max_seconds - (time.perf_counter() - started),
                            ctx.left() - FINISH_MARGIN_S))
        try:
            trips = redis_m.round_trips(publisher, consumer, self.key, samples, left, self.timeout,
                                        lambda: ctx.progress.step(1))
        except TimeoutError as exc:
            raise DiagError(f"Redis stopped answering mid-measurement: {exc}") from None
        finally:
            quietly(lambda: publisher.delete(self.key))
        if time.monotonic() - first.at < MIN_DRAIN_WINDOW_S:
            time.sleep(max(0.0, min(MIN_DRAIN_WINDOW_S - (time.monotonic() - first.at), ctx.left() - 1)))
        yield from backlog_findings(depths(), {}, ctx.budget_ms, self.target, first)
        publish, roundtrip = summarize(trips.publish_ms), summarize(trips.roundtrip_ms)
        rpc = on_rpc(self.target)
        impact = _p(roundtrip)
        where = ("every state update (rpc://)" if rpc else
                 dispatch_words(self.target))
        yield delay(
            "broker.publish-latency", Cause.BROKER, round(impact, 3),
            f"broker adds {impact:.1f} ms (P99) to {where}",
            detail=(f"{state_path_words(self.target)}. LPUSH (what apply_async() waits for; Redis has no "
                    f"publisher confirms, each LPUSH is acknowledged) P99 {_p(publish):.2f} ms; LPUSH until "
                    f"a waiting BRPOP on another connection has it P99 {_p(roundtrip):.2f} ms; PING P50 "
                    f"{_p(rtt, 'p50'):.2f} ms. {facts.blocked_clients_count} clients are blocked in "
                    "BRPOP-like calls right now (idle workers waiting for tasks: normal)."),
            evidence={"samples": roundtrip.samples, "publish_ms": publish.short(),
                      "roundtrip_ms": roundtrip.short(), "redis_rtt_ms": rtt.short(),
                      "connect_ms": round(connect, 3), "interval_ms": round(trips.interval_s * 1000, 3),
                      "blocked_clients_count": facts.blocked_clients_count,
                      "state_path": "every-update" if rpc else "dispatch-only"})


def redis_memory_findings(facts: redis_m.ServerFacts) -> Iterator[Finding]:
    """Task messages are Redis lists: an eviction policy other than noeviction can delete them."""
    evidence = {"used_memory_bytes": facts.used_memory_bytes, "maxmemory_bytes": facts.maxmemory_bytes,
                "maxmemory_policy": facts.maxmemory_policy, "evicted_keys_count": facts.evicted_keys_count,
                "blocked_clients_count": facts.blocked_clients_count,
                "connected_clients_count": facts.connected_clients_count}
    used = (facts.used_memory_bytes / facts.maxmemory_bytes) if facts.maxmemory_bytes else 0.0
    evidence["used_memory_ratio"] = round(used, 4)
    evicting = facts.maxmemory_bytes > 0 and facts.maxmemory_policy != "noeviction"
    if evicting or facts.evicted_keys_count:
        severity = Severity.WARNING if facts.evicted_keys_count or used > 0.9 else Severity.INFO
        yield Finding(
            "broker.redis-memory", Cause.BROKER, severity,
            f"Redis may evict task messages: maxmemory-policy {facts.maxmemory_policy}, "
            f"{facts.evicted_keys_count} keys evicted so far, memory {used:.0%} of maxmemory",
            detail=("Queued tasks are Redis lists; when memory reaches maxmemory, any policy but "
                    "noeviction may delete one, and the task is lost without an error (its state stays "
                    "PENDING forever). Use a dedicated Redis with noeviction for the broker."),
            evidence=evidence,
            fix=Fix("set `maxmemory-policy noeviction` on the broker's Redis (redis.conf or "
                    "`redis-cli CONFIG SET maxmemory-policy noeviction`; a Redis setting, not a Celery one)",
                    "", (DOCS_REDIS_EVICTION,)))
    else:
        yield Finding("broker.redis-memory", Cause.BROKER, Severity.OK,
                      "Redis will not evict task messages (no maxmemory, or noeviction)", evidence=evidence)
