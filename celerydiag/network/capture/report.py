"""``celerydiag.capture/1``: the per-connection summary, the timeline and the findings.

JSON history (``celerydiag.capture/N``): 1 = first release (design.md). Keys documented there are
never renamed or removed; extra keys (``stream``, ``episodes``, ``redis``, ``timeline`` …) may be
added. Counts are per direction, "client" being the side that sent the SYN (or, without a SYN,
the side not on a known broker/backend port), and a flag counts once per packet carrying it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from celerydiag.findings import Finding, _jsonable
from celerydiag.network.capture.analysis import Analysis, Protocol, Tracked
from celerydiag.network.capture.decode import address
from celerydiag.network.capture.tcp import COUNTED

CAPTURE_SCHEMA = "celerydiag.capture/1"
MAX_TIMELINE = 200


@dataclass(frozen=True)
class ConnectionSummary:
    stream: int
    client: str
    server: str
    protocol: Protocol
    packets: int
    start_s: float
    end_s: float | None
    tcp: dict[str, Any]
    amqp: dict[str, Any] | None = None
    redis: dict[str, Any] | None = None
    # each (fast) retransmission's wait since the first transmission, both sides (a bounded sample):
    # the retransmission finding's impact is read from it; not part of the JSON (its summary is)
    retransmission_delays_s: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"stream": self.stream, "client": self.client, "server": self.server,
                             "protocol": self.protocol.value, "packets": self.packets, "tcp": self.tcp}
        if self.amqp is not None:
            d["amqp"] = self.amqp
        if self.redis is not None:
            d["redis"] = self.redis
        d["start_s"] = round(self.start_s, 6)
        d["end_s"] = None if self.end_s is None else round(self.end_s, 6)
        return d


@dataclass(frozen=True)
class CaptureReport:
    file: dict[str, Any]
    connections: tuple[ConnectionSummary, ...]
    findings: tuple[Finding, ...]  # rated and ordered by rank.rank
    timeline: tuple[dict[str, Any], ...] = ()
    budget_ms: float = 1000.0
    extra: dict[str, Any] = field(default_factory=dict)
    schema: str = CAPTURE_SCHEMA

    def worst(self) -> Any:
        from celerydiag.findings import Severity

        return max((f.severity for f in self.findings), default=Severity.OK)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({
            "schema": self.schema,
            "file": dict(self.file),
            "budget_ms": self.budget_ms,
            "connections": [c.to_dict() for c in self.connections],
            "findings": [f.to_dict() for f in self.findings],  # ranked by analyse()
            "timeline": list(self.timeline),
            **self.extra,
        })


def summarise(analysis: Analysis) -> tuple[list[ConnectionSummary], list[dict[str, Any]]]:
    """Per-connection blocks and the event timeline (times relative to the first packet)."""
    t0 = analysis.first_ts or 0.0
    end = analysis.last_ts or 0.0
    out = []
    events: list[tuple[float, str, str, str]] = []
    for t in analysis.tracked:
        out.append(_summary(t, t0, end, events))
    events.sort(key=lambda e: e[0])
    timeline = [{"t_s": round(ts - t0, 6), "connection": conn, "side": side, "event": text}
                for ts, conn, side, text in events[:MAX_TIMELINE]]
    if len(events) > MAX_TIMELINE:
        timeline.append({"t_s": None, "connection": "", "side": "",
                         "event": f"{len(events) - MAX_TIMELINE} more events not shown"})
    return out, timeline


def _summary(t: Tracked, t0: float, capture_end: float, events: list) -> ConnectionSummary:
    conn = t.conn
    client_a = bool(t.client_is_a)
    ca, sa = (conn.a, conn.b) if client_a else (conn.b, conn.a)
    client, server = address(*ca), address(*sa)
    cflow, sflow = (conn.fwd_a, conn.fwd_b) if client_a else (conn.fwd_b, conn.fwd_a)
    label = f"{client} -> {server}"

    def per_side(key: str) -> dict[str, int]:
        return {"client": cflow.counts[key], "server": sflow.counts[key]}

    tcp: dict[str, Any] = {name: per_side(name) for name in COUNTED}
    tcp["reset"] = per_side("reset")
    tcp["rtt_ms"] = {
        "client": _p50(cflow.rtt.summary_ms()), "server": _p50(sflow.rtt.summary_ms()),
        "handshake": round(conn.first_rtt * 1000.0, 3) if conn.first_rtt else None,
    }
    tcp["ack_rtt_ms"] = {"client": cflow.rtt.summary_ms(), "server": sflow.rtt.summary_ms()}
    tcp["retransmission_delay_ms"] = {"client": cflow.retrans_delay.summary_ms(),
                                      "server": sflow.retrans_delay.summary_ms()}
    tcp["max_data_gap_s"] = {"client": round(cflow.max_gap, 6), "server": round(sflow.max_gap, 6)}
    tcp["data_segments"] = {"client": cflow.data_segments, "server": sflow.data_segments}
    tcp["payload_bytes"] = {"client": cflow.payload_bytes, "server": sflow.payload_bytes}
    end_ts = conn.end_ts if conn.end_ts is not None else capture_end
    episodes = []
    for ep in conn.episodes:
        side = "client" if (ep.side == "a") == client_a else "server"
        dur = ep.duration_s(end_ts)
        episodes.append({"side": side, "start_s": round(ep.start - t0, 6), "duration_s": round(dur, 6),
                         "ended": ep.end is not None, "zero_window_packets": ep.packets})
        events.append((ep.start, label, side, f"zero window: {side} stopped reading ({dur:.3f} s"
                       f"{'' if ep.end is not None else ', not reopened'})"))
    tcp["zero_window_episodes"] = episodes
    # bounded series for the HTML timeline (tcp.MAX_MARKS per side), seconds from the first packet
    tcp["retransmission_ts_s"] = {"client": [round(x - t0, 6) for x in cflow.retrans_ts],
                                  "server": [round(x - t0, 6) for x in sflow.retrans_ts]}
    tcp["reset_ts_s"] = {"client": None if cflow.rst is None else round(cflow.rst - t0, 6),
                         "server": None if sflow.rst is None else round(sflow.rst - t0, 6)}
    for flow, side in ((cflow, "client"), (sflow, "server")):
        if flow.fin is not None:
            events.append((flow.fin, label, side, "FIN"))
        if flow.rst is not None:
            events.append((flow.rst, label, side, "RST"))
    for flow, side in ((cflow, "client"), (sflow, "server")):
        n = flow.counts["retransmission"]  # includes fast and spurious, as tshark's field does
        if n:
            events.append((conn.first_ts, label, side, f"{n} retransmissions over the connection"))
    amqp = _amqp_block(t, cflow, sflow, end_ts if conn.end_ts is not None else capture_end, label, events, t0)
    redis = t.redis.to_dict() if t.redis is not None else None
    return ConnectionSummary(conn.stream, client, server, t.protocol, conn.packets, conn.first_ts - t0,
                             None if conn.end_ts is None else conn.end_ts - t0, tcp, amqp, redis,
                             tuple(cflow.retrans_delay.values + sflow.retrans_delay.values))


def _p50(summary: dict[str, Any] | None) -> float | None:
    return None if summary is None else summary["p50_ms"]


def _amqp_block(t: Tracked, cflow: Any, sflow: Any, end_ts: float, label: str, events: list,
                t0: float = 0.0) -> dict[str, Any] | None:
    st = t.amqp
    if st is None:
        return None
    st.finish(end_ts)
    for ts, side, text in st.events:
        events.append((ts, label, side, text))
    if st.close_by is not None:
        close, closed_by = "amqp", st.close_by
    else:
        ends = [(f.fin, s, "fin") for f, s in ((cflow, "client"), (sflow, "server")) if f.fin is not None]
        ends += [(f.rst, s, "rst") for f, s in ((cflow, "client"), (sflow, "server")) if f.rst is not None]
        if ends:
            _ts, closed_by, close = min(ends)
        else:
            close, closed_by = "open", None
    missed = st.missed_heartbeats()
    for side in missed:
        s = st.sides[side]
        events.append(((s.silence_start or end_ts) + 2 * (st.heartbeat_s or 0), label, side,
                       f"missed heartbeats: {side} silent {s.max_silence_s:.1f} s (heartbeat {st.heartbeat_s} s)"))
    return {
        "heartbeat_s": st.heartbeat_s,
        "heartbeat_proposed_s": st.tune_heartbeat,
        "heartbeat_frames": {"client": st.sides["client"].heartbeat_frames,
                             "server": st.sides["server"].heartbeat_frames},
        "max_silence_s": {"client": round(st.sides["client"].max_silence_s, 6),
                          "server": round(st.sides["server"].max_silence_s, 6)},
        "missed_heartbeats": bool(missed),
        # bounded series for the HTML timeline, seconds from the first packet
        "heartbeat_ts_s": {side: [round(x - t0, 6) for x in st.sides[side].heartbeat_ts] for side in st.sides},
        "silence_s": {side: [round((s.silence_start or t0) - t0, 6), round(s.max_silence_s, 6)]
                      for side, s in st.sides.items()},
        "silent_sides": missed,
        "closed_by": closed_by,
        "close": close,
        "close_reply": {"code": st.close_code, "text": st.close_text} if st.close_by else None,
        "blocked_s": round(st.blocked_s, 6),
        "blocked_reason": st.blocked_reason or None,
        "frames": {"client": st.sides["client"].frames, "server": st.sides["server"].frames},
        "publishes": {"client": st.sides["client"].publishes, "server": st.sides["server"].publishes},
        "deliveries": {"client": st.sides["client"].deliveries, "server": st.sides["server"].deliveries},
        "resyncs": sum(r.gaps for r in t.streams.values()),
    }
