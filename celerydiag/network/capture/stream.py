"""In-order reassembly of one direction's TCP byte stream for the protocol parsers.

Segments arrive with their sequence numbers; bytes already delivered (retransmissions) are
dropped, and a gap (a segment we did not capture) makes the parser resynchronise instead of
reading garbage. Parsers implement ``feed(ts, data) -> int`` (bytes consumed from ``data``) and
``resync(data) -> int`` (offset of the first plausible message, or -1), and set ``want`` after a
feed: how many bytes the unfinished message at ``data[used:]`` needs before feeding it again helps
(0: unknown, try on every segment).

Why ``want``: the bytes of an unfinished message are kept as a list of segments and joined only
once the parser can use them. Joining on every segment made a large message quadratic: one 15 MiB
Redis value (a big task result) in 1448-byte segments took 97 s to get through, 4 MiB 3.6 s; now
both take well under a second (tests/unit/test_fuzz_parsers.py holds the bound).
"""

from __future__ import annotations

from typing import Any, Protocol

M32 = 0xFFFFFFFF
HALF = 0x80000000
MAX_BUFFER = 1 << 24  # 16 MiB of one unfinished message: past that we resync (bounded memory)
RESYNC_KEEP = 16  # bytes kept after a failed resync: a message start may straddle two segments


class Parser(Protocol):
    want: int

    def feed(self, ts: float, data: Any) -> int: ...
    def resync(self, data: Any) -> int: ...


class Reassembler:
    __slots__ = ("parser", "next", "parts", "size", "want", "synced", "gaps")

    def __init__(self, parser: Parser, synced: bool = True) -> None:
        self.parser = parser
        self.next: int | None = None
        self.parts: list[bytes] = []  # the unconsumed bytes, in order, not yet joined
        self.size = 0
        self.want = 0  # feed again once ``size`` reaches this
        self.synced = synced
        self.gaps = 0

    def _clear(self) -> None:
        self.parts = []
        self.size = 0
        self.want = 0

    def segment(self, ts: float, seq: int, seglen: int, payload: bytes) -> None:
        nxt = self.next
        if nxt is None:
            nxt = seq
        d = (seq - nxt) & M32
        if d:
            if d < HALF:  # a hole: data we never saw
                self.gaps += 1
                self._clear()
                self.synced = False
            else:  # overlaps what we already have: keep only the new tail
                skip = (nxt - seq) & M32
                if skip >= seglen:
                    return
                payload = payload[skip:]
                seglen -= skip
                seq = nxt
        self.next = (seq + seglen) & M32
        if len(payload) < seglen:  # cut by the snaplen: the rest is unknown
            if payload:
                self._push(ts, payload, last=True)
            if self.parts:
                self._clear()
            self.synced = False
            return
        if payload:
            self._push(ts, payload)

    def _push(self, ts: float, payload: bytes, last: bool = False) -> None:
        """Feed the parser some bytes (never none); ``last``: the stream breaks after this segment
        (a snaplen cut), so what the parser leaves unfinished is dropped, not kept."""
        parts = self.parts
        if parts:
            parts.append(payload)
            self.size += len(payload)
            if self.size < self.want:  # the unfinished message is still short of what it needs
                return
            data = b"".join(parts)
            self._clear()
        else:  # the common case: nothing left over, the segment is the data (no list, no join)
            data = payload
        if not self.synced:
            start = self.parser.resync(data)
            if start < 0:
                self._keep(data[-RESYNC_KEEP:], 0)
                return
            data = data[start:]
            self.synced = True
        used = self.parser.feed(ts, data)
        if used < 0:  # the parser lost the framing
            self.synced = False
            return
        if last:
            return
        rest = data[used:] if used < len(data) else b""
        want = self.parser.want
        if len(rest) > MAX_BUFFER or want > MAX_BUFFER:  # past what we keep of one message: resync
            self.synced = False
            return
        if rest:
            self._keep(rest, want)

    def _keep(self, rest: bytes, want: int) -> None:
        self.parts = [rest]
        self.size = len(rest)
        self.want = want
