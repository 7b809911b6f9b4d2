"""In-order reassembly of one direction's TCP byte stream for the protocol parsers.

Segments arrive with their sequence numbers; bytes already delivered (retransmissions) are
dropped, and a gap (a segment we did not capture) makes the parser resynchronise instead of
reading garbage. Parsers implement ``feed(ts, data) -> int`` (bytes consumed from ``data``) and
``resync(data) -> int`` (offset of the first plausible message, or -1).
"""

from __future__ import annotations

from typing import Any, Protocol

M32 = 0xFFFFFFFF
HALF = 0x80000000
MAX_BUFFER = 1 << 24  # 16 MiB of one unfinished message: past that we resync (bounded memory)


class Parser(Protocol):
    def feed(self, ts: float, data: Any) -> int: ...
    def resync(self, data: Any) -> int: ...


class Reassembler:
    __slots__ = ("parser", "next", "buf", "synced", "gaps")

    def __init__(self, parser: Parser, synced: bool = True) -> None:
        self.parser = parser
        self.next: int | None = None
        self.buf = b""
        self.synced = synced
        self.gaps = 0

    def segment(self, ts: float, seq: int, seglen: int, payload: bytes) -> None:
        nxt = self.next
        if nxt is None:
            nxt = seq
        d = (seq - nxt) & M32
        if d:
            if d < HALF:  # a hole: data we never saw
                self.gaps += 1
                self.buf = b""
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
            self._push(ts, payload)
            self.buf = b""
            self.synced = False
            return
        self._push(ts, payload)

    def _push(self, ts: float, payload: bytes) -> None:
        data = self.buf + payload if self.buf else payload
        if not self.synced:
            start = self.parser.resync(data)
            if start < 0:
                self.buf = data[-16:]
                return
            data = data[start:]
            self.synced = True
        used = self.parser.feed(ts, data)
        if used < 0:  # the parser lost the framing
            self.synced = False
            self.buf = b""
            return
        rest = data[used:] if used < len(data) else b""
        if len(rest) > MAX_BUFFER:
            rest = b""
            self.synced = False
        self.buf = rest
