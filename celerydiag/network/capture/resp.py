"""Redis RESP2/RESP3 on the wire: pair each request with its reply and time the state path.

Celery's result backend writes a state as ``GET`` (read-before-write) then ``MULTI / SETEX /
PUBLISH / EXEC`` and clients read it with ``GET celery-task-meta-<id>`` or get it pushed on a
``SUBSCRIBE``d channel (celery-facts A.1, B). So per connection we time every command from the
segment that completed it to the segment that completed its reply (pipelining keeps order, so a
FIFO pairs them), time each MULTI..EXEC transaction, count pub/sub pushes, and count polls per
task id. Values are skipped, never kept: only command names and ``celery-task-meta-`` keys are.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from celerydiag.network.capture.tcp import Reservoir

STATE_PATH = ("GET", "SET", "SETEX", "PUBLISH", "MULTI", "EXEC", "SUBSCRIBE", "MGET")
TASK_META = b"celery-task-meta-"
MAX_COMMANDS = 64  # distinct command names timed per connection
MAX_TASK_IDS = 100_000
_SUB = {b"subscribe", b"psubscribe", b"ssubscribe", b"unsubscribe", b"punsubscribe", b"sunsubscribe"}
_PUSH = {b"message", b"pmessage", b"smessage"}
INCOMPLETE = object()
MAX_LINE = 1 << 16  # Redis refuses an inline command or a type/length line longer (PROTO_INLINE_MAX_SIZE)


@dataclass
class RedisState:
    latency: dict[str, Reservoir] = field(default_factory=dict)
    transaction: Reservoir = field(default_factory=Reservoir)
    pending: deque = field(default_factory=deque)  # (name, nargs, ts)
    polls: dict[bytes, int] = field(default_factory=dict)
    pushes: int = 0
    absorb: int = 0
    multi_ts: float | None = None
    errors: int = 0

    def command(self, ts: float, parts: list[Any]) -> None:
        if not parts or not isinstance(parts[0], bytes):
            return
        name = parts[0].upper().decode("ascii", "replace")
        self.pending.append((name, len(parts) - 1, ts))
        if name == "GET" and len(parts) > 1 and isinstance(parts[1], bytes):
            key = parts[1]
            i = key.find(TASK_META)
            if i >= 0 and (key in self.polls or len(self.polls) < MAX_TASK_IDS):
                tid = key[i + len(TASK_META):]
                self.polls[tid] = self.polls.get(tid, 0) + 1
        elif name == "MULTI":
            self.multi_ts = ts

    def reply(self, ts: float, value: Any, push: bool) -> None:
        if isinstance(value, list) and value and isinstance(value[0], bytes):
            kind = value[0].lower()
            if push or kind in _PUSH:
                if kind in _PUSH or kind not in _SUB:
                    self.pushes += 1
                    return
            if kind in _SUB:
                if self.pending and self.pending[0][0].lower().encode() in _SUB:
                    name, nargs, sent = self.pending.popleft()
                    self._time(name, ts - sent)
                    self.absorb = max(0, nargs - 1)
                elif self.absorb:
                    self.absorb -= 1
                return
        elif push:
            self.pushes += 1
            return
        if isinstance(value, ReplyError):
            self.errors += 1
        if not self.pending:
            return
        name, _nargs, sent = self.pending.popleft()
        self._time(name, ts - sent)
        if name == "EXEC" and self.multi_ts is not None:
            self.transaction.add(ts - self.multi_ts)
            self.multi_ts = None

    def _time(self, name: str, seconds: float) -> None:
        res = self.latency.get(name)
        if res is None:
            if len(self.latency) >= MAX_COMMANDS:
                return
            res = self.latency[name] = Reservoir()
        res.add(seconds)

    def to_dict(self) -> dict[str, Any]:
        polls = list(self.polls.values())
        return {
            "commands": {name: r.summary_ms() for name, r in sorted(self.latency.items())},
            "transaction_ms": self.transaction.summary_ms(),
            "pubsub_pushes": self.pushes,
            "error_replies": self.errors,
            "task_ids_polled": len(polls),
            "polls_per_task": {"mean": round(sum(polls) / len(polls), 2), "max": max(polls)} if polls else None,
        }


class ReplyError(bytes):
    """A ``-ERR ...`` reply (kept apart so errors can be counted)."""


def parse(data: Any, pos: int, depth: int = 0) -> tuple[Any, int]:
    """One RESP value at ``pos``: ``(value, next_pos)``, or ``(INCOMPLETE, end)`` when ``data``
    must reach at least offset ``end`` before the value can be complete (the reassembler waits
    for that much instead of re-parsing on every segment).

    Bulk strings longer than 256 bytes are skipped (their length is returned, not their bytes),
    so a large task result never gets copied. Raises ValueError on bytes that are not RESP.
    """
    end = data.find(b"\r\n", pos)
    if end < 0:
        if len(data) - pos > MAX_LINE:
            raise ValueError("RESP line too long")
        return INCOMPLETE, len(data) + 1
    t = data[pos]
    line = data[pos + 1:end]
    nxt = end + 2
    if t in (0x2B, 0x3A, 0x2C, 0x28, 0x23, 0x5F):  # + : , ( # _
        return bytes(line), nxt
    if t == 0x2D:  # -
        return ReplyError(line), nxt
    if t in (0x24, 0x3D, 0x21):  # $ = !
        n = int(line)
        if n < 0:
            return None, nxt
        if nxt + n + 2 > len(data):
            return INCOMPLETE, nxt + n + 2
        return (bytes(data[nxt:nxt + n]) if n <= 256 else n), nxt + n + 2
    if t in (0x2A, 0x7E, 0x3E, 0x25, 0x7C):  # * ~ > % |
        return _aggregate(data, pos, nxt, int(line) * (2 if t in (0x25, 0x7C) else 1), depth)
    raise ValueError("not RESP")


def _aggregate(data: Any, pos: int, nxt: int, n: int, depth: int) -> tuple[Any, int]:
    """The ``n`` items of an array, set, push, map or attribute (maps count keys and values)."""
    if n < 0:
        return None, nxt
    if depth > 8:
        raise ValueError("RESP nested too deep")
    items = []
    p = nxt
    for _ in range(n):
        item, p = parse(data, p, depth + 1)
        if item is INCOMPLETE:
            return INCOMPLETE, p
        items.append(item)
    return items, p


_SIMPLE = frozenset(b"+:,(#_-")
_BULK = frozenset(b"$=!")
_AGGREGATE = frozenset(b"*~>%|")
_PAIRS = frozenset(b"%|")


class _Scan:
    """How far :func:`_scan` got through an unfinished aggregate: the offset of the next item from
    the message's start, and the items still to read at each open level."""

    __slots__ = ("offset", "stack", "need")

    def __init__(self) -> None:
        self.offset = 0
        self.stack = [1]
        self.need = 0  # absolute offset the data must reach before scanning on helps


def _scan(data: Any, start: int, scan: _Scan) -> int:
    """The offset just past the RESP value at ``start``, or -1 with ``scan.need`` set.

    Why: an array arrives over many segments (an MGET of a 10,000-task group, its reply); parsing
    it from its start on every segment was quadratic (a 1 MiB reply of small items: 277 s). This
    walks it without building anything and resumes where it stopped, so each byte is scanned
    about once; :func:`parse` then builds the value once, when it is complete. Raises ValueError
    where :func:`parse` would.
    """
    pos = start + scan.offset
    stack = scan.stack
    n = len(data)
    while stack:
        end = data.find(b"\r\n", pos)
        if end < 0:
            if n - pos > MAX_LINE:
                raise ValueError("RESP line too long")
            return _stop(scan, start, pos, n + 1)
        t = data[pos]
        nxt = end + 2
        if t in _BULK:
            size = int(data[pos + 1:end])
            if size >= 0:
                nxt += size + 2
                if nxt > n:
                    return _stop(scan, start, pos, nxt)
        elif t in _AGGREGATE:
            count = int(data[pos + 1:end]) * (2 if t in _PAIRS else 1)
            if count > 0:
                if len(stack) > 9:
                    raise ValueError("RESP nested too deep")
                stack[-1] -= 1
                stack.append(count + 1)  # +1: decremented below, like any item of the level above
        elif t not in _SIMPLE:
            raise ValueError("not RESP")
        pos = nxt
        stack[-1] -= 1
        while stack and stack[-1] == 0:
            stack.pop()
    return pos


def _stop(scan: _Scan, start: int, pos: int, need: int) -> int:
    scan.offset = pos - start
    scan.need = need
    return -1


class RespParser:
    """One direction: requests (client) or replies (server)."""

    def __init__(self, state: RedisState, client: bool) -> None:
        self.state = state
        self.client = client
        self.want = 0  # stream.Parser: bytes the unfinished message left by feed() needs
        self.scan = _Scan()  # progress through the unfinished aggregate at the start of the next feed

    def resync(self, data: Any) -> int:
        self.scan = _Scan()  # the bytes it described are gone
        marks = b"*" if self.client else b"+-:$*>_%~"
        for pos in range(min(len(data), 256)):
            if data[pos] in marks and (pos == 0 or data[pos - 1] == 0x0A):
                return pos
        return -1

    def feed(self, ts: float, data: Any) -> int:
        pos = 0
        n = len(data)
        self.want = 0
        try:
            while pos < n:
                if self.client and data[pos] != 0x2A:  # inline command: one line
                    end = data.find(b"\r\n", pos)
                    if end < 0:
                        if n - pos > MAX_LINE:
                            return -1
                        self.want = n - pos + 1
                        break
                    self.state.command(ts, bytes(data[pos:end]).split())
                    pos = end + 2
                    continue
                push = data[pos] == 0x3E
                # An aggregate already found unfinished is scanned on from where it stopped, not
                # parsed again from its start (see _scan); any other value is parsed at once.
                value: Any
                value, nxt = (INCOMPLETE, 0) if self.scan.offset else parse(data, pos)
                if value is INCOMPLETE:
                    if data[pos] not in _AGGREGATE:
                        self.want = nxt - pos
                        break
                    if _scan(data, pos, self.scan) < 0:
                        self.want = self.scan.need - pos
                        break
                    self.scan = _Scan()
                    value, nxt = parse(data, pos)
                if self.client:
                    self.state.command(ts, value)
                else:
                    self.state.reply(ts, value, push)
                pos = nxt
        except (ValueError, IndexError):
            return -1
        return pos
