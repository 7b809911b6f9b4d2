"""The packet loop: frames -> TCP segments -> connections (TCP analysis) -> protocol parsers.

One pass, streaming: memory is the per-connection state, not the packet count. Protocols are
recognised by the server port (the target's broker/backend ports, 5672/5671 for AMQP, 6379 for
Redis) or, on other ports, by the first bytes the client sends (``AMQP`` protocol header, a RESP
array).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from celerydiag.compat import assert_never
from celerydiag.network.capture.amqp import AmqpParser, AmqpState
from celerydiag.network.capture.decode import tcp_segment
from celerydiag.network.capture.reader import CaptureInfo
from celerydiag.network.capture.resp import RedisState, RespParser
from celerydiag.network.capture.stream import Reassembler
from celerydiag.network.capture.tcp import ACK, SYN, Connection

AMQP_PORTS = frozenset({5672, 5671})
REDIS_PORTS = frozenset({6379, 6380})
DB_PORTS = frozenset({5432, 3306})
KNOWN_PORTS = AMQP_PORTS | REDIS_PORTS | DB_PORTS


class Protocol(str, Enum):
    """What a connection speaks, as ``celerydiag.capture/1`` spells it (``"protocol"``). Each
    dispatch on it is exhaustive (assert_never): a new protocol is a mypy error where it must be
    parsed and assessed."""

    AMQP = "amqp"
    REDIS = "redis"
    TCP = "tcp"  # anything else: TCP analysis only

    def __str__(self) -> str:
        return self.value


@dataclass
class Ports:
    """Which server ports speak what (the target's own ports are added by the caller)."""

    amqp: set[int] = field(default_factory=lambda: set(AMQP_PORTS))
    redis: set[int] = field(default_factory=lambda: set(REDIS_PORTS))
    other: set[int] = field(default_factory=lambda: set(DB_PORTS))

    def servers(self) -> set[int]:
        return self.amqp | self.redis | self.other


@dataclass
class Tracked:
    """A Connection plus what we learned on top of TCP."""

    conn: Connection
    client_is_a: bool | None = None
    protocol: Protocol = Protocol.TCP
    amqp: AmqpState | None = None
    redis: RedisState | None = None
    streams: dict[bool, Reassembler] = field(default_factory=dict)  # from_a -> reassembler
    undecided: bool = True


@dataclass
class Analysis:
    info: CaptureInfo
    tracked: list[Tracked]
    first_ts: float | None
    last_ts: float | None
    non_tcp: int
    cut_packets: int = 0  # segments whose payload the snap length cut
    cut_bytes: int = 0  # payload bytes those segments lost


def run(info: CaptureInfo, frames: Iterable[tuple[float, int, bytes]], ports: Ports,
        progress: Any = None) -> Analysis:
    table: dict[tuple[bytes, int, bytes, int], tuple[Tracked, bool]] = {}
    tracked: list[Tracked] = []
    servers = ports.servers()
    first_ts = last_ts = None
    non_tcp = 0
    count = 0
    cut_packets = cut_bytes = 0
    tick = progress or _no_progress
    frames = iter(frames)
    first = next(frames, None)
    if first is not None:
        first_ts = first[0]
        frames = itertools.chain((first,), frames)
    # The per-packet hot path: inline except where a call is rare (a new connection, a SYN).
    for ts, link, frame in frames:
        count += 1
        if not count & 0xFFFF:
            tick(count)
        last_ts = ts
        seg = tcp_segment(link, frame)
        if seg is None:
            non_tcp += 1
            continue
        src, sport, dst, dport, seq, ack, flags, window, seglen, payload, wscale = seg
        entry = table.get((src, sport, dst, dport))
        if entry is None or flags & SYN:
            entry = _connection_of(table, tracked, entry, ts, src, sport, dst, dport, seq, flags)
        t, from_a = entry
        t.conn.segment(from_a, ts, seq, ack, flags, window, seglen, wscale)
        if t.client_is_a is None:
            _decide_client(t, servers)
        if seglen:
            if len(payload) < seglen:
                cut_packets += 1
                cut_bytes += seglen - len(payload)
            if t.undecided:
                _decide_protocol(t, ports, from_a, payload)
            streams = t.streams  # empty unless a parser is attached (AMQP, Redis)
            if streams:
                streams[from_a].segment(ts, seq, seglen, payload)
                amqp = t.amqp
                if amqp is not None:
                    amqp.activity("client" if from_a == t.client_is_a else "server", ts)
    return Analysis(info, tracked, first_ts, last_ts, non_tcp, cut_packets, cut_bytes)


def _no_progress(count: int) -> None:
    """No progress bar: nothing to tell."""


def _connection_of(table: dict[tuple[bytes, int, bytes, int], tuple[Tracked, bool]], tracked: list[Tracked],
                   entry: tuple[Tracked, bool] | None, ts: float, src: bytes, sport: int, dst: bytes,
                   dport: int, seq: int, flags: int) -> tuple[Tracked, bool]:
    """For a new 4-tuple or a SYN: the connection it belongs to. A SYN that reuses the ports of a
    connection that already ended starts a new one (Wireshark does the same)."""
    if entry is not None:
        t, _ = entry
        if flags & ACK or t.conn.end_ts is None or seq == _syn_seq(t):
            return entry
    t = Tracked(Connection(len(tracked), (src, sport), (dst, dport), ts))
    tracked.append(t)
    table[(src, sport, dst, dport)] = (t, True)
    table[(dst, dport, src, sport)] = (t, False)
    return t, True


def _syn_seq(t: Tracked) -> int | None:
    conn = t.conn
    segs = conn.fwd_a.segments
    return segs[0][0] if segs else None


def _decide_client(t: Tracked, servers: set[int]) -> None:
    conn = t.conn
    if conn.syn_from_a is not None:
        t.client_is_a = conn.syn_from_a
        return
    a_port, b_port = conn.a[1], conn.b[1]
    if b_port in servers and a_port not in servers:
        t.client_is_a = True
    elif a_port in servers and b_port not in servers:
        t.client_is_a = False
    else:
        t.client_is_a = a_port > b_port


def _decide_protocol(t: Tracked, ports: Ports, from_a: bool, payload: bytes) -> None:
    conn = t.conn
    server_port = conn.b[1] if t.client_is_a else conn.a[1]
    from_client = from_a == t.client_is_a
    protocol: Protocol | None = None
    if server_port in ports.amqp:
        protocol = Protocol.AMQP
    elif server_port in ports.redis:
        protocol = Protocol.REDIS
    elif from_client and payload[:4] == b"AMQP":
        protocol = Protocol.AMQP
    elif from_client and payload[:1] == b"*" and b"\r\n$" in payload[:64]:
        protocol = Protocol.REDIS
    elif server_port in ports.other or from_client:
        protocol = Protocol.TCP
    if protocol is None:
        return  # the server spoke first on a port we do not know: wait for the client's first bytes
    t.undecided = False
    t.protocol = protocol
    client_a = bool(t.client_is_a)
    if protocol is Protocol.AMQP:
        t.amqp = AmqpState()
        t.streams = {client_a: Reassembler(AmqpParser(t.amqp, "client"), synced=conn.syn_from_a is not None),
                     not client_a: Reassembler(AmqpParser(t.amqp, "server"), synced=conn.syn_from_a is not None)}
    elif protocol is Protocol.REDIS:
        t.redis = RedisState()
        t.streams = {client_a: Reassembler(RespParser(t.redis, True), synced=conn.syn_from_a is not None),
                     not client_a: Reassembler(RespParser(t.redis, False), synced=conn.syn_from_a is not None)}
    elif protocol is not Protocol.TCP:  # TCP: the analysis of tcp.py alone, no parser
        assert_never(protocol)
