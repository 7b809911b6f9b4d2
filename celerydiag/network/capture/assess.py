"""Findings from a capture: each network cause with the milliseconds it adds and its fix.

impact_ms is what the cause adds to the P99 time from ``update_state()`` to a client seeing it:
- missed heartbeats: the silence itself (everything on that connection waited at least that long,
  then the connection was dropped and had to be re-established);
- zero window: the longest episode (data queued behind a closed window waits that long);
- retransmissions: from the capture's own retransmission waits (first transmission to
  retransmission, tshark's tcp.analysis.rto): the quantile of those waits that the P99 state update
  falls on, given the share of updates that contain a retransmitted segment
  (:func:`retransmission_impact_ms`); 0 when under 1 % of updates are hit;
- RTT: the median RTT times the round trips a state update needs on that protocol (Redis: GET,
  then MULTI..EXEC, then the client's read = 3; AMQP publish/deliver = 1);
- Connection.Blocked: how long the broker kept the connection blocked;
- Redis: the P99 of the state path (read-before-write GET + the MULTI..EXEC transaction).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from celerydiag.findings import Cause, Finding, Fix, Severity, delay
from celerydiag.measure import percentile
from celerydiag.network.capture.analysis import Protocol
from celerydiag.network.capture.report import ConnectionSummary

RETRANS_P99_RATIO = 0.01
ROUND_TRIPS = {Protocol.REDIS: 3, Protocol.AMQP: 1, Protocol.TCP: 1}  # every Protocol (a test checks)
NOTABLE_SHARE = 0.05  # below 5 % of the budget a measured number is reported as ok
DOCS_HEARTBEAT = "https://www.rabbitmq.com/docs/heartbeats"
DOCS_HEARTBEAT_CELERY = "https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-heartbeat"
DOCS_PREFETCH = "https://docs.celeryq.dev/en/stable/userguide/optimizing.html#prefetch-limits"
DOCS_ALARMS = "https://www.rabbitmq.com/docs/alarms"
DOCS_REDIS_LATENCY = "https://redis.io/docs/latest/operate/oss_and_stack/management/optimization/latency/"
DOCS_TSHARK = "https://www.wireshark.org/docs/wsug_html_chunked/ChAdvTCPAnalysis.html"


def _ok(slug: str, title: str, **kw: Any) -> Finding:
    return Finding(id=f"network.{slug}", cause=Cause.NETWORK, severity=Severity.OK, title=title, **kw)


def assess(conns: list[ConnectionSummary]) -> Iterator[Finding]:
    """What the capture shows, as delays for rank to rate against the budget."""
    amqp = [c for c in conns if c.amqp is not None]
    if amqp:
        yield _heartbeats(amqp)
        blocked = [c for c in amqp if c.amqp and c.amqp["blocked_s"] > 0]
        if blocked:
            yield _blocked(blocked)
    if conns:
        yield _zero_window(conns)
        yield _retransmissions(conns)
        rtt = _rtt(conns)
        if rtt is not None:
            yield rtt
    redis = [c for c in conns if c.redis is not None]
    if redis:
        found = _redis(redis)
        if found is not None:
            yield found


def _heartbeats(conns: list[ConnectionSummary]) -> Finding:
    worst = None
    for c in conns:
        a = c.amqp or {}
        for side in a.get("silent_sides", []):
            silence = a["max_silence_s"][side]
            if worst is None or silence > worst[0]:
                worst = (silence, side, c)
    negotiated = sorted({c.amqp["heartbeat_s"] for c in conns if c.amqp and c.amqp["heartbeat_s"] is not None})
    if worst is None:
        return _ok("missed-heartbeats", "No AMQP side went silent for two heartbeat intervals",
                   evidence={"amqp_connections_count": len(conns), "heartbeats_negotiated_s": negotiated})
    silence, side, c = worst
    a = c.amqp or {}
    hb = a["heartbeat_s"]
    affected = sum(1 for x in conns if x.amqp and x.amqp["missed_heartbeats"])
    if side == "client":
        why = ("the client process stopped sending anything, heartbeats included: a blocked event loop "
               "(a long CPU-bound or blocking call in the worker's consumer thread), a stopped or swapping "
               "process, or a GC pause")
        fix = Fix(
            "Keep the worker's event loop free (move blocking work into the task pool); the worker answers "
            "heartbeats only when its consumer loop runs. A heartbeat under 5 s gives false positives.",
            _heartbeat_config(hb),
            (DOCS_HEARTBEAT_CELERY, DOCS_HEARTBEAT),
        )
    else:
        why = ("the broker sent nothing, heartbeats included: the broker was overloaded or paused, or the path "
               "from it dropped traffic (look for retransmissions on this connection)")
        fix = Fix(
            "Check the broker's health (rabbitmq-diagnostics status, alarms) and the network path; a longer "
            "heartbeat only rides out short stalls.",
            _heartbeat_config(hb),
            (DOCS_HEARTBEAT, DOCS_ALARMS),
        )
    return delay(
        "network.missed-heartbeats", Cause.NETWORK, silence * 1000.0,
        f"AMQP {side} went silent for {silence:.1f} s with a {hb} s heartbeat; "
        f"the connection {'was dropped' if a['close'] != 'open' else 'is past the point the peer should drop it'}",
        detail=(f"On {c.client} -> {c.server} {why}. A peer that hears nothing for two heartbeat intervals "
                f"closes the connection (closed by {a['closed_by'] or 'nobody yet'}, via {a['close']}); "
                "tasks and rpc:// states on it wait until the worker reconnects."),
        evidence={"silence_s": round(silence, 3), "heartbeat_s": hb, "silent_side": side,
                  "connection": f"{c.client} -> {c.server}", "affected_connections_count": affected,
                  "close": a["close"], "closed_by": a["closed_by"]},
        fix=fix,
    )


def _heartbeat_config(heartbeat_s: int | None) -> str:
    """Raise a heartbeat that is too short to ride out ordinary pauses; otherwise change nothing."""
    if heartbeat_s is not None and heartbeat_s < 10:
        return ("# RabbitMQ: under 5 s false positives are likely; Celery's default is 120 s, negotiated down to the\n"
                "# server's (60 s by default)\nbroker_heartbeat = 30\n")
    return ""


def _blocked(conns: list[ConnectionSummary]) -> Finding:
    c = max(conns, key=lambda x: (x.amqp or {})["blocked_s"])
    a = c.amqp or {}
    return delay(
        "network.amqp-blocked", Cause.NETWORK, a["blocked_s"] * 1000.0,
        f"RabbitMQ blocked a publishing connection for {a['blocked_s']:.1f} s ({a['blocked_reason'] or 'no reason'})",
        detail=(f"Connection.Blocked on {c.client} -> {c.server}: a memory or disk alarm pauses every "
                "publisher, so task messages (and rpc:// states) wait until Connection.Unblocked."),
        evidence={"blocked_s": round(a["blocked_s"], 3), "reason": a["blocked_reason"],
                  "connection": f"{c.client} -> {c.server}"},
        fix=Fix("Clear the resource alarm on the broker (free memory or disk, consume the backlog); "
                "rabbitmq-diagnostics alarms shows which one.", "", (DOCS_ALARMS,)),
    )


def _zero_window(conns: list[ConnectionSummary]) -> Finding:
    worst = None
    total = 0
    for c in conns:
        for ep in c.tcp["zero_window_episodes"]:
            total += 1
            if worst is None or ep["duration_s"] > worst[0]["duration_s"]:
                worst = (ep, c)
    if worst is None:
        return _ok("zero-window", "No receiver closed its TCP window (no zero-window episode)",
                   evidence={"connections_count": len(conns)})
    ep, c = worst
    side = ep["side"]
    if side == "client" and c.protocol == "amqp":
        who = "the AMQP client (a worker's consumer) stopped reading what the broker delivered"
        fix = Fix("The worker stopped reading its socket: keep its event loop free, and prefetch fewer messages so "
                  "a busy worker does not hold (and stop reading) a deep backlog.",
                  "worker_prefetch_multiplier = 1\n", (DOCS_PREFETCH,))
    elif side == "server" and c.protocol == "amqp":
        who = "RabbitMQ stopped reading from this publisher (flow control or a resource alarm)"
        fix = Fix("The broker paused reading from publishers: check rabbitmq-diagnostics alarms and the queue "
                  "backlog; publishes (task dispatch, rpc:// states) wait meanwhile.", "", (DOCS_ALARMS,))
    elif side == "server" and c.protocol == "redis":
        who = "Redis stopped reading (a slow command, a fork for persistence, or swapping)"
        fix = Fix("Redis is not reading its clients: check LATENCY DOCTOR and SLOWLOG on the server.", "",
                  (DOCS_REDIS_LATENCY,))
    else:
        who = f"the {side} application stopped reading its socket"
        fix = Fix(f"The {side} process stopped reading from {c.server if side == 'server' else c.client}: "
                  "look for a blocked event loop or an overloaded process there.", "", (DOCS_TSHARK,))
    return delay(
        "network.zero-window", Cause.NETWORK, ep["duration_s"] * 1000.0,
        f"TCP zero window for {ep['duration_s']:.2f} s: {who}",
        detail=(f"On {c.client} -> {c.server} the {side} advertised a zero receive window "
                f"({ep['zero_window_packets']} zero-window packets); everything behind it waited. "
                f"{total} episode(s) in the capture. Check: tshark -r FILE -Y tcp.analysis.zero_window"),
        evidence={"longest_episode_s": ep["duration_s"], "episodes_count": total, "side": side,
                  "connection": f"{c.client} -> {c.server}", "protocol": c.protocol},
        fix=fix,
    )


def retransmission_impact_ms(delays_s: Sequence[float], ratio: float, segments_per_update: int) -> float:
    """The P99 milliseconds retransmissions add to a state update, from the waits the capture saw.

    An update is hit when any of its ``segments_per_update`` segments was retransmitted:
    p = 1 - (1 - ratio) ** k. The P99 update is then a hit when p > 1 %, and its extra delay is the
    (1 - 1 % / p) quantile of the retransmission waits (the mixture of (1 - p) zeros and p waits);
    under 1 % the P99 update pays nothing (the waits are still in the evidence)."""
    hit = 1.0 - (1.0 - min(1.0, max(0.0, ratio))) ** max(1, segments_per_update)
    if not delays_s or hit <= RETRANS_P99_RATIO:
        return 0.0
    level = 1.0 - RETRANS_P99_RATIO / hit
    return percentile([d * 1000.0 for d in delays_s], level * 100.0)


def _retransmissions(conns: list[ConnectionSummary]) -> Finding:
    kinds = ("retransmission",)  # tshark's field: includes fast and spurious retransmissions
    retrans = sum(c.tcp[k][s] for c in conns for k in kinds for s in ("client", "server"))
    spurious = sum(c.tcp.get("spurious_retransmission", {}).get(s, 0) for c in conns for s in ("client", "server"))
    data = sum(c.tcp.get("data_segments", {}).get(s, 0) for c in conns for s in ("client", "server"))
    ratio = retrans / data if data else 0.0
    if not retrans:
        return _ok("retransmissions", "No TCP retransmissions", evidence={"data_segments_count": data})
    worst = max(conns, key=lambda c: sum(c.tcp[k][s] for k in kinds for s in ("client", "server")))
    delays = [d for c in conns for d in c.retransmission_delays_s]
    costly = retrans - spurious  # a spurious retransmission's data had already arrived
    k = 2 * ROUND_TRIPS.get(worst.protocol, 1)  # a request and a reply per round trip of an update
    impact = retransmission_impact_ms(delays, costly / data if data else 0.0, k)
    hit = 1.0 - (1.0 - min(1.0, costly / data if data else 0.0)) ** k
    waits = ""
    evidence: dict[str, Any] = {"retransmissions_count": retrans, "spurious_retransmissions_count": spurious,
                                "data_segments_count": data, "retransmission_ratio": ratio,
                                "updates_hit_ratio": round(hit, 4), "segments_per_update_count": k,
                                "connection": f"{worst.client} -> {worst.server}"}
    if delays:
        ms_ = sorted(d * 1000.0 for d in delays)
        evidence.update(retransmission_delay_ms={"p50": round(percentile(ms_, 50), 3),
                                                 "p99": round(percentile(ms_, 99), 3), "max": round(ms_[-1], 3)},
                        retransmission_delays_count=len(ms_))
        waits = (f" The {len(ms_)} retransmitted segments waited P50 {percentile(ms_, 50):.0f} ms, max "
                 f"{ms_[-1]:.0f} ms since their first transmission (one RTO, at least 200 ms on Linux, or "
                 "less for a fast retransmission).")
    p99_words = (f"the P99 update pays {impact:.0f} ms" if impact else
                 "under 1 %, so the P99 update pays none of it")
    return delay(
        "network.retransmissions", Cause.NETWORK, impact,
        f"{ratio:.1%} of data segments were retransmitted ({retrans} of {data}): "
        f"{p99_words.replace('the P99 update pays', 'P99 update +')}",
        detail=(f"{costly} retransmissions were not spurious; an update of {k} segments ({worst.protocol}) is hit "
                f"with probability {hit:.1%}: {p99_words}.{waits} Worst: {worst.client} -> {worst.server}. "
                "Check: tshark -r FILE -Y tcp.analysis.retransmission -T fields -e tcp.analysis.rto"),
        evidence=evidence,
        fix=Fix("Packet loss on the path: check interface errors and drops (ip -s link), MTU mismatches and "
                "overloaded links or middleboxes between the hosts.", "", (DOCS_TSHARK,)),
    )


def _rtt(conns: list[ConnectionSummary]) -> Finding | None:
    best = None
    for c in conns:
        samples = [v for v in (c.tcp["rtt_ms"]["client"], c.tcp["rtt_ms"]["server"], c.tcp["rtt_ms"]["handshake"])
                   if v is not None]
        if not samples:
            continue
        rtt = max(samples)
        impact = rtt * ROUND_TRIPS.get(c.protocol, 1)
        if best is None or impact > best[0]:
            best = (impact, rtt, c)
    if best is None:
        return None
    impact, rtt, c = best
    evidence = {"rtt_ms": round(rtt, 3), "round_trips_count": ROUND_TRIPS.get(c.protocol, 1),
                "connection": f"{c.client} -> {c.server}", "protocol": c.protocol}
    return delay(
        "network.high-rtt", Cause.NETWORK, impact,
        f"Round trip {rtt:.2f} ms to {c.server} ({c.protocol}); a state update pays it "
        f"{ROUND_TRIPS.get(c.protocol, 1)}x", ok_below_ratio=NOTABLE_SHARE,
        detail="Median ACK RTT measured from data/ACK pairs (and the handshake). Run the broker/backend close "
               "to the workers and clients, or cut round trips (Redis pub/sub results instead of polling).",
        evidence=evidence,
        fix=Fix("Place the broker and result backend in the same zone as workers and clients; every state "
                "update and every poll pays this round trip.", "", (DOCS_TSHARK,)),
    )


def _redis(conns: list[ConnectionSummary]) -> Finding | None:
    worst = None
    for c in conns:
        r = c.redis or {}
        get = (r.get("commands") or {}).get("GET")
        tx = r.get("transaction_ms")
        p99 = (get["p99_ms"] if get else 0.0) + (tx["p99_ms"] if tx else 0.0)
        if (get or tx) and (worst is None or p99 > worst[0]):
            worst = (p99, get, tx, c)
    if worst is None:
        return None
    p99, get, tx, c = worst
    r = c.redis or {}
    evidence = {"get_p99_ms": get["p99_ms"] if get else None, "transaction_p99_ms": tx["p99_ms"] if tx else None,
                "connection": f"{c.client} -> {c.server}", "task_ids_polled_count": r.get("task_ids_polled"),
                "pubsub_pushes_count": r.get("pubsub_pushes")}
    return delay(
        "network.redis-latency", Cause.NETWORK, p99,
        f"Redis state path P99 {p99:.2f} ms on the wire (GET + MULTI..EXEC)", ok_below_ratio=NOTABLE_SHARE,
        detail="Request-to-reply time seen in the capture for the commands update_state() issues.",
        evidence=evidence,
        fix=Fix("Redis answers slowly: check LATENCY DOCTOR, SLOWLOG, persistence forks and swap on the server.",
                "", (DOCS_REDIS_LATENCY,)),
    )
