"""TCP analysis per connection and direction, with Wireshark's ``tcp.analysis.*`` definitions.

The rules follow ``tcp_analyze_sequence_number()`` in Wireshark's ``epan/dissectors/packet-tcp.c``
(zero window, zero-window probe, lost segment, keep-alive, window update, window full, dup ACK,
retransmission with its fast/spurious/out-of-order kinds, ACK RTT) closely enough that every count
can be checked with ``tshark -Y tcp.analysis.<flag>`` on the same file; the tests do exactly that.
Sequence arithmetic is modulo 2**32 like Wireshark's ``GT_SEQ``/``LT_SEQ`` macros.

Per-connection state is bounded (the unacked-segment list is capped like Wireshark's
``TCP_MAX_UNACKED_SEGMENTS``; RTT samples are a fixed-size reservoir), so memory stays flat as
the capture grows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
M32 = 0xFFFFFFFF
HALF = 0x80000000
MAX_UNACKED = 10000  # Wireshark's TCP_MAX_UNACKED_SEGMENTS
RESERVOIR = 2048
MAX_MARKS = 500  # per direction: the retransmission times the HTML timeline draws, not a log
# tcp_analyze_sequence_number() in epan/dissectors/packet-tcp.c: a retransmission within 20 ms of
# the reverse direction's last duplicate ACK is a fast retransmission ("if(t < 20000000)"), and a
# segment that did not advance the sequence within the first RTT (3 ms when no SYN/SYN-ACK RTT is
# known: "ooo_thres") is out of order rather than retransmitted.
FAST_RETRANSMISSION_WINDOW_S = 0.020
OUT_OF_ORDER_DEFAULT_THRESHOLD_S = 0.003

# analysis flags on one segment (names = the tshark field after tcp.analysis.)
A_RETRANSMISSION = 0x01
A_LOST_PACKET = 0x02
A_ACK_LOST_PACKET = 0x04
A_KEEP_ALIVE = 0x08
A_DUPLICATE_ACK = 0x10
A_ZERO_WINDOW = 0x20
A_ZERO_WINDOW_PROBE = 0x40
A_ZERO_WINDOW_PROBE_ACK = 0x80
A_KEEP_ALIVE_ACK = 0x100
A_OUT_OF_ORDER = 0x200
A_FAST_RETRANSMISSION = 0x400
A_WINDOW_UPDATE = 0x800
A_WINDOW_FULL = 0x1000
A_SPURIOUS_RETRANSMISSION = 0x4000

COUNTED = {
    "zero_window": A_ZERO_WINDOW,
    "window_full": A_WINDOW_FULL,
    # tshark sets the tcp.analysis.retransmission field on fast and spurious retransmissions too
    "retransmission": A_RETRANSMISSION | A_FAST_RETRANSMISSION | A_SPURIOUS_RETRANSMISSION,
    "fast_retransmission": A_FAST_RETRANSMISSION,
    "spurious_retransmission": A_SPURIOUS_RETRANSMISSION,
    "out_of_order": A_OUT_OF_ORDER,
    "duplicate_ack": A_DUPLICATE_ACK,
    "keep_alive": A_KEEP_ALIVE,
    "zero_window_probe": A_ZERO_WINDOW_PROBE,
    "window_update": A_WINDOW_UPDATE,
    "lost_segment": A_LOST_PACKET,
}


class Reservoir:
    """A fixed-size uniform sample of a stream of values, plus exact count and max."""

    __slots__ = ("values", "count", "max", "_rng")

    def __init__(self) -> None:
        self.values: list[float] = []
        self.count = 0
        self.max = 0.0
        # Made only once the reservoir overflows: a Mersenne Twister is ~2.5 KB, and a capture
        # of per-operation database connections holds tens of thousands of small reservoirs.
        self._rng: random.Random | None = None

    def add(self, value: float) -> None:
        self.count += 1
        if value > self.max:
            self.max = value
        if len(self.values) < RESERVOIR:
            self.values.append(value)
        else:
            if self._rng is None:
                self._rng = random.Random(5)
            slot = self._rng.randrange(self.count)
            if slot < RESERVOIR:
                self.values[slot] = value

    def summary_ms(self) -> dict[str, Any] | None:
        if not self.count:
            return None
        from celerydiag.measure import summarize

        s = summarize([v * 1000.0 for v in self.values]).to_dict()
        s["samples"] = self.count
        s["max_ms"] = round(self.max * 1000.0, 3)
        return s


@dataclass
class Episode:
    """A zero-window episode: from the first zero window a side advertises to its window update."""

    side: str  # whose receive window was zero: its application stopped reading
    start: float
    end: float | None = None
    packets: int = 0

    def duration_s(self, until: float) -> float:
        return (self.end if self.end is not None else until) - self.start


class Flow:
    """One direction of a connection (Wireshark's ``tcp_flow_t`` with its analyze_seq_info)."""

    __slots__ = ("win_scale", "window", "nextseq", "nextseqtime", "lastack", "lastacktime",
                 "dupacknum", "maxseqtobeacked", "lastsegmentflags", "segments", "counts", "packets",
                 "payload_bytes", "data_segments", "fin", "rst", "last_data", "max_gap", "rtt",
                 "zw_episode", "retrans_delay", "retrans_ts")

    def __init__(self) -> None:
        self.win_scale = -1
        self.window = M32
        self.nextseq = 0
        self.nextseqtime = 0.0
        self.lastack = 0
        self.lastacktime = 0.0
        self.dupacknum = 0
        self.maxseqtobeacked = 0
        self.lastsegmentflags = 0
        self.segments: list[list[Any]] = []  # [seq, nextseq, ts], newest last
        self.counts = dict.fromkeys(COUNTED, 0)
        self.counts["reset"] = 0
        self.packets = 0
        self.payload_bytes = 0
        self.data_segments = 0
        self.fin: float | None = None
        self.rst: float | None = None
        self.last_data: float | None = None
        self.max_gap = 0.0
        self.rtt = Reservoir()
        self.zw_episode: Episode | None = None
        # seconds from a segment's first transmission to each (fast) retransmission of it: what
        # the data waited (tshark: tcp.analysis.rto); spurious ones cost nothing and are left out
        self.retrans_delay = Reservoir()
        self.retrans_ts: list[float] = []  # when, for the timeline chart (at most MAX_MARKS)


def _first_sent(segments: list[list[Any]], seq: int) -> float | None:
    """When the oldest unacknowledged segment holding ``seq`` was sent (None: not captured)."""
    for start, end, sent in segments:
        if ((seq - start) & M32) < HALF and 0 < ((end - seq) & M32) < HALF:
            return float(sent)
    return None


def _le(a: int, b: int) -> bool:
    d = (a - b) & M32
    return d == 0 or d >= HALF


@dataclass
class Connection:
    """Both directions of one TCP conversation (one ``tcp.stream``)."""

    stream: int
    a: tuple[bytes, int]  # the endpoint that sent the first packet we saw (raw address bytes)
    b: tuple[bytes, int]
    first_ts: float
    fwd_a: Flow = field(default_factory=Flow)  # a -> b
    fwd_b: Flow = field(default_factory=Flow)  # b -> a
    last_ts: float = 0.0
    packets: int = 0
    syn_from_a: bool | None = None  # who sent the SYN (None: no SYN captured)
    ts_mru_syn: float = 0.0
    first_rtt: float = 0.0
    episodes: list[Episode] = field(default_factory=list)
    app: Any = None  # protocol parser (amqp/resp) attached once the protocol is known
    end_ts: float | None = None  # first FIN or RST

    def segment(self, from_a: bool, ts: float, seq: int, ack: int, flags: int, window: int,  # noqa: C901
                seglen: int, wscale: int) -> int:
        """Analyse one segment; returns its tcp.analysis flag bits (Wireshark's ``ta->flags``).

        One function on purpose (the C901 exception): it follows
        ``tcp_analyze_sequence_number()`` in Wireshark's ``epan/dissectors/packet-tcp.c`` branch
        for branch, in the same order, so each flag can be checked against that source; and it is
        the per-packet hot path, where a call per rule would cost more than the rule.
        """
        fwd, rev = (self.fwd_a, self.fwd_b) if from_a else (self.fwd_b, self.fwd_a)
        self.packets += 1
        self.last_ts = ts
        fwd.packets += 1
        ta = 0
        if flags & SYN:
            if not flags & ACK:
                self.ts_mru_syn = ts
                if self.syn_from_a is None:
                    self.syn_from_a = from_a
        elif flags & ACK and self.ts_mru_syn and not self.first_rtt:
            self.first_rtt = ts - self.ts_mru_syn
        if flags & RST:
            fwd.counts["reset"] += 1
            if fwd.rst is None:
                fwd.rst = ts
            if self.end_ts is None:
                self.end_ts = ts
        if flags & FIN:
            if fwd.fin is None:
                fwd.fin = ts
            if self.end_ts is None:
                self.end_ts = ts
        if seglen:
            fwd.payload_bytes += seglen
            fwd.data_segments += 1
            if fwd.last_data is not None and ts - fwd.last_data > fwd.max_gap:
                fwd.max_gap = ts - fwd.last_data
            fwd.last_data = ts

        nextseq_f = fwd.nextseq
        rev_window = rev.window
        no_sfr = not flags & (SYN | FIN | RST)
        # ZERO WINDOW PROBE
        if seglen == 1 and seq == nextseq_f and rev_window == 0:
            ta |= A_ZERO_WINDOW_PROBE
        else:
            if window == 0 and no_sfr:
                ta |= A_ZERO_WINDOW
            if nextseq_f and 0 < ((seq - nextseq_f) & M32) < HALF and not flags & RST:
                ta |= A_LOST_PACKET
            if seglen <= 1 and seq == ((nextseq_f - 1) & M32) and no_sfr:
                ta |= A_KEEP_ALIVE
            if seglen == 0:
                if no_sfr and seq == nextseq_f and ack == fwd.lastack:
                    if window and window != fwd.window:
                        ta |= A_WINDOW_UPDATE
                    elif window == fwd.window:
                        if window and rev.lastsegmentflags & A_KEEP_ALIVE:
                            ta |= A_KEEP_ALIVE_ACK
                        elif window == 0 and rev.lastsegmentflags & A_ZERO_WINDOW_PROBE:
                            ta |= A_ZERO_WINDOW_PROBE_ACK
                        elif window:
                            fwd.dupacknum = 1 if fwd.dupacknum == -1 else fwd.dupacknum + 1
                            ta |= A_DUPLICATE_ACK
            elif rev.win_scale != -1 and no_sfr:
                shift = 0 if rev.win_scale == -2 else rev.win_scale
                if (seq + seglen) & M32 == (rev.lastack + (rev.window << shift)) & M32:
                    ta |= A_WINDOW_FULL
        # finished_fwd
        if ack != fwd.lastack:
            fwd.dupacknum = 0
        # ACKED LOST PACKET
        rmax = rev.maxseqtobeacked
        if rmax and flags & ACK and 0 < ((ack - rmax) & M32) < HALF:
            if rmax > rev.nextseq:
                rev.maxseqtobeacked = rev.nextseq
                ta |= A_ACK_LOST_PACKET
            else:
                if rev.dupacknum == 0:
                    ta |= A_ACK_LOST_PACKET
                rev.dupacknum = -1
        # RETRANSMISSION / FAST / SPURIOUS / OUT-OF-ORDER
        syn_fin = flags & (SYN | FIN)
        if (seglen > 0 or syn_fin) and not ta & A_KEEP_ALIVE:
            not_advanced = bool(nextseq_f) and ((seq - nextseq_f) & M32) >= HALF
            if seglen > 1 and ((nextseq_f - 1) & M32) == seq:
                not_advanced = False
            if seglen > 0 and rev.lastack and _le((seq + seglen) & M32, rev.lastack):
                ta |= A_SPURIOUS_RETRANSMISSION
            elif not_advanced and rev.dupacknum >= 2 and rev.lastack == seq and \
                    ts - rev.lastacktime < FAST_RETRANSMISSION_WINDOW_S:
                ta |= A_FAST_RETRANSMISSION
            elif not_advanced and ts - fwd.nextseqtime < (self.first_rtt or OUT_OF_ORDER_DEFAULT_THRESHOLD_S) and \
                    nextseq_f != (seq + seglen + (1 if syn_fin else 0)) & M32:
                ta |= A_OUT_OF_ORDER
            elif not_advanced:
                ta |= A_RETRANSMISSION
        if ta & (A_RETRANSMISSION | A_FAST_RETRANSMISSION):
            first_sent = _first_sent(fwd.segments, seq)
            if first_sent is not None:
                fwd.retrans_delay.add(ts - first_sent)
        nextseq = (seq + seglen) & M32
        if seglen or syn_fin:
            if syn_fin:
                nextseq = (nextseq + 1) & M32
            if len(fwd.segments) < MAX_UNACKED:
                fwd.segments.append([seq, nextseq, ts])
        if not ta & A_ZERO_WINDOW_PROBE:
            if not fwd.nextseq or 0 < ((nextseq - fwd.nextseq) & M32) < HALF:
                fwd.nextseq = nextseq
                fwd.nextseqtime = ts
            if seq == fwd.maxseqtobeacked or not fwd.maxseqtobeacked:
                fwd.maxseqtobeacked = fwd.nextseq
        fwd.window = window
        fwd.lastack = ack
        fwd.lastacktime = ts
        fwd.lastsegmentflags = ta
        # remove what this ACKs from the other direction's unacked list; exact match = ACK RTT
        segs = rev.segments
        if segs:
            changed = False
            keep = []
            for ual in segs:
                d_next = (ual[1] - ack) & M32  # > 0 and < HALF: the segment ends after the ACK
                if d_next == 0:
                    rev.rtt.add(ts - ual[2])
                    changed = True
                elif 0 < d_next < HALF:
                    if 0 < ((ack - ual[0]) & M32) < HALF:
                        ual[0] = ack  # partly acknowledged
                    keep.append(ual)
                else:
                    changed = True
            if changed:
                rev.segments = keep
        if flags & SYN:  # options are dissected after the analysis, as in Wireshark
            fwd.win_scale = wscale
            if fwd.win_scale == -1:
                fwd.win_scale = rev.win_scale = -2
            elif flags & ACK and rev.win_scale == -2:
                fwd.win_scale = -2
        if ta:
            counts = fwd.counts
            for name, bit in COUNTED.items():
                if ta & bit:
                    counts[name] += 1
            if ta & A_RETRANSMISSION and len(fwd.retrans_ts) < MAX_MARKS:
                fwd.retrans_ts.append(ts)
        if ta & A_ZERO_WINDOW or fwd.zw_episode is not None:
            self._episodes(from_a, ts, window, flags, ta)
        return ta

    def _episodes(self, from_a: bool, ts: float, window: int, flags: int, ta: int) -> None:
        fwd = self.fwd_a if from_a else self.fwd_b
        ep = fwd.zw_episode
        if ta & A_ZERO_WINDOW:
            if ep is None:
                ep = fwd.zw_episode = Episode("a" if from_a else "b", ts)
                self.episodes.append(ep)
            ep.packets += 1
        elif ep is not None and window and not flags & RST:
            ep.end = ts
            fwd.zw_episode = None
