"""AMQP 0-9-1 on the wire: frames, the Connection methods that explain late states, heartbeats.

What it extracts per connection: the heartbeat negotiated (the client's Tune-Ok value, which is
what both sides use; celery-facts F), heartbeat frames per direction (type 8, channel 0), the
longest silence of *any* traffic per direction after Tune-Ok (peers send no heartbeat frame while
other data flows, so heartbeat gaps alone mislead), Connection.Close/Close-Ok, Channel.Close and
Connection.Blocked/Unblocked with their reply text, and basic.publish/deliver counts.

Connection.Start-Ok carries SASL PLAIN credentials in clear text: we never keep or print the
``response`` field; :func:`scrub_start_ok` blanks it in frames we write back to disk.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_HEADER = b"AMQP"
FRAME_END = 0xCE
_HDR = struct.Struct("!BHI").unpack_from
_METHOD = struct.Struct("!HH").unpack_from
METHODS = {
    (10, 10): "Connection.Start", (10, 11): "Connection.Start-Ok", (10, 30): "Connection.Tune",
    (10, 31): "Connection.Tune-Ok", (10, 40): "Connection.Open", (10, 41): "Connection.Open-Ok",
    (10, 50): "Connection.Close", (10, 51): "Connection.Close-Ok", (10, 60): "Connection.Blocked",
    (10, 61): "Connection.Unblocked", (20, 40): "Channel.Close", (60, 40): "Basic.Publish",
    (60, 60): "Basic.Deliver", (60, 80): "Basic.Ack", (60, 120): "Basic.Nack",
}
MAX_EVENTS = 50  # per connection: the timeline is for people, not a log
MAX_HEARTBEATS = 500  # per side: the heartbeat times the HTML timeline draws


@dataclass
class AmqpSide:
    heartbeat_frames: int = 0
    frames: int = 0
    publishes: int = 0
    deliveries: int = 0
    last_data: float | None = None
    max_silence_s: float = 0.0
    silence_start: float | None = None
    heartbeat_ts: list[float] = field(default_factory=list)  # at most MAX_HEARTBEATS, for the chart


@dataclass
class AmqpState:
    """Everything the parser learned about one AMQP connection (sides: 'client', 'server')."""

    sides: dict[str, AmqpSide] = field(default_factory=lambda: {"client": AmqpSide(), "server": AmqpSide()})
    tune_heartbeat: int | None = None
    heartbeat_s: int | None = None  # Tune-Ok: the negotiated value
    tune_ok_ts: float | None = None
    close_by: str | None = None
    close_code: int | None = None
    close_text: str = ""
    close_ts: float | None = None
    blocked_s: float = 0.0
    blocked_since: float | None = None
    blocked_reason: str = ""
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (ts, side, text)
    events_dropped: int = 0

    def event(self, ts: float, side: str, text: str) -> None:
        if len(self.events) < MAX_EVENTS:
            self.events.append((ts, side, text))
        else:
            self.events_dropped += 1

    def activity(self, side: str, ts: float) -> None:
        """Any octet counts as a heartbeat (AMQP 0-9-1 spec): track the longest gap."""
        s = self.sides[side]
        if self.tune_ok_ts is not None:
            start = s.last_data if s.last_data is not None and s.last_data > self.tune_ok_ts else self.tune_ok_ts
            gap = ts - start
            if gap > s.max_silence_s:
                s.max_silence_s = gap
                s.silence_start = start
        s.last_data = ts

    def finish(self, end_ts: float) -> None:
        """Count the silence from each side's last octet up to the connection's end."""
        if self.tune_ok_ts is None:
            return
        for s in self.sides.values():
            start = s.last_data if s.last_data is not None and s.last_data > self.tune_ok_ts else self.tune_ok_ts
            if end_ts - start > s.max_silence_s:
                s.max_silence_s = end_ts - start
                s.silence_start = start
        if self.blocked_since is not None:
            self.blocked_s += end_ts - self.blocked_since
            self.blocked_since = None

    def missed_heartbeats(self) -> list[str]:
        """Sides silent for two heartbeat intervals or longer (when the spec says: close)."""
        if not self.heartbeat_s:
            return []
        return [name for name, s in self.sides.items() if s.max_silence_s >= 2 * self.heartbeat_s]


class AmqpParser:
    """Frames of one direction; ``side`` is 'client' or 'server'."""

    def __init__(self, state: AmqpState, side: str) -> None:
        self.state = state
        self.side = side
        self.sidestate = state.sides[side]
        self.want = 0  # stream.Parser: bytes the unfinished frame left by feed() needs

    def resync(self, data: Any) -> int:
        n = len(data)
        if data[:4] == PROTOCOL_HEADER:
            return 0
        for pos in range(min(n, 64)):  # frames usually start a segment: look near its start only
            if data[pos] in (1, 2, 3, 8) and pos + 7 <= n:
                _t, channel, size = _HDR(data, pos)
                end = pos + 7 + size
                if end < n and data[end] == FRAME_END:
                    return pos
        return -1

    def feed(self, ts: float, data: Any) -> int:
        pos = 0
        n = len(data)
        side = self.sidestate
        self.want = 0
        if pos + 8 <= n and data[:4] == PROTOCOL_HEADER:
            self.state.event(ts, self.side, f"protocol header AMQP {data[5]}-{data[6]}-{data[7]}")
            pos = 8
        while pos + 7 <= n:
            ftype, channel, size = _HDR(data, pos)
            end = pos + 7 + size
            if end >= n:
                self.want = end + 1 - pos  # the whole frame, its end octet included
                break
            if data[end] != FRAME_END:
                return -1
            side.frames += 1
            if ftype == 8:
                side.heartbeat_frames += 1
                if len(side.heartbeat_ts) < MAX_HEARTBEATS:
                    side.heartbeat_ts.append(ts)
            elif ftype == 1 and size >= 4:
                self._method(ts, channel, data, pos + 7, end)
            pos = end + 1
        return pos

    def _method(self, ts: float, channel: int, data: Any, start: int, end: int) -> None:
        cls, mid = _METHOD(data, start)
        if cls == 60:  # basic.*: counted, not listed (the hot path of a busy connection)
            if mid == 40:
                self.sidestate.publishes += 1
            elif mid == 60:
                self.sidestate.deliveries += 1
            return
        name = METHODS.get((cls, mid))
        if name is None:
            return
        handler = _EVENT_HANDLERS.get((cls, mid))
        text = handler(self, ts, name, data, start + 4, end) if handler else name
        self.state.event(ts, self.side, text)

    def _tune(self, ts: float, name: str, data: Any, args: int, end: int) -> str:
        """Connection.Tune (the server's proposal) and Tune-Ok (what was agreed)."""
        if end - args < 8:
            return name
        st = self.state
        _chmax, frame_max, heartbeat = struct.unpack_from("!HIH", data, args)
        if name.endswith("Tune"):
            st.tune_heartbeat = heartbeat
        else:
            st.heartbeat_s = heartbeat
            st.tune_ok_ts = ts
            for s in st.sides.values():  # silence is counted from the negotiation on
                s.max_silence_s, s.last_data = 0.0, ts
        return f"{name} heartbeat={heartbeat}s frame_max={frame_max}"

    def _close(self, ts: float, name: str, data: Any, args: int, end: int) -> str:
        """Connection.Close / Channel.Close with the reply code and text; the first connection
        close names who closed it."""
        st = self.state
        code, text = _reply(data, args, end)
        if name.startswith("Connection") and st.close_by is None:
            st.close_by, st.close_code, st.close_text, st.close_ts = self.side, code, text, ts
        return f"{name} {code} {text}".rstrip()

    def _blocked(self, ts: float, name: str, data: Any, args: int, end: int) -> str:
        st = self.state
        reason = _shortstr(data, args, end)
        st.blocked_since = ts if st.blocked_since is None else st.blocked_since
        st.blocked_reason = reason
        return f"{name} {reason}".rstrip()

    def _unblocked(self, ts: float, name: str, data: Any, args: int, end: int) -> str:
        st = self.state
        if st.blocked_since is not None:
            st.blocked_s += ts - st.blocked_since
            st.blocked_since = None
        return name

    def _start_ok(self, ts: float, name: str, data: Any, args: int, end: int) -> str:
        return f"{name} (credentials not shown)"


# (class, method) -> what an event of that method says and records, beyond its name.
_EVENT_HANDLERS: dict[tuple[int, int], Callable[[AmqpParser, float, str, Any, int, int], str]] = {
    (10, 30): AmqpParser._tune, (10, 31): AmqpParser._tune,
    (10, 50): AmqpParser._close, (20, 40): AmqpParser._close,
    (10, 60): AmqpParser._blocked, (10, 61): AmqpParser._unblocked,
    (10, 11): AmqpParser._start_ok,
}


def _shortstr(data: Any, pos: int, end: int) -> str:
    if pos >= end:
        return ""
    n = data[pos]
    return bytes(data[pos + 1:min(pos + 1 + n, end)]).decode("utf-8", "replace")


def _reply(data: Any, pos: int, end: int) -> tuple[int, str]:
    if pos + 2 > end:
        return 0, ""
    (code,) = struct.unpack_from("!H", data, pos)
    return code, _shortstr(data, pos + 2, end)


def start_ok_response_span(payload: bytes) -> tuple[int, int] | None:
    """Where the SASL ``response`` of a Connection.Start-Ok sits in this TCP payload, if here."""
    pos = 0
    n = len(payload)
    while pos + 11 <= n:
        ftype, _ch, size = _HDR(payload, pos)
        if ftype == 1 and _METHOD(payload, pos + 7) == (10, 11):
            p = pos + 11
            if p + 4 > n:
                return None
            (tlen,) = struct.unpack_from("!I", payload, p)  # client-properties table
            p += 4 + tlen
            if p >= n:
                return None
            p += 1 + payload[p]  # mechanism shortstr
            if p + 4 > n:
                return None
            (rlen,) = struct.unpack_from("!I", payload, p)
            return p + 4, min(p + 4 + rlen, n)
        if ftype not in (1, 2, 3, 8):
            return None
        pos += 8 + size
    return None


def scrub_start_ok(payload: bytes) -> bytes:
    """The payload with any PLAIN credentials in a Connection.Start-Ok replaced by ``*``."""
    span = start_ok_response_span(payload)
    if span is None:
        return payload
    a, b = span
    return payload[:a] + b"*" * (b - a) + payload[b:]
