"""The live capture's pieces that need no packet socket: the ring's geometry, the BPF program we
attach (libpcap's, plus the loopback rule), and the pcapng that ``--write`` produces (read back by
our reader: same frames, the drop count in its statistics block, credentials blanked).
Live behaviour against tcpdump: tests/integration/test_capture_ring.py."""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator

from celerydiag.network.capture import analyse_frames
from celerydiag.network.capture.live import written
from celerydiag.network.capture.reader import open_capture, open_stream
from celerydiag.network.capture.ring import (
    BPF_LD_W_ABS,
    BPF_RET_K,
    PACKET_OUTGOING,
    SKF_AD_IFINDEX,
    SKF_AD_OFF,
    SKF_AD_PKTTYPE,
    compile_bpf,
    ring_geometry,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "pcaps")
HEALTHY = os.path.join(FIXTURES, "amqp_healthy.pcap")


def instructions(program: bytes) -> list[tuple[int, int, int, int]]:
    return [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]


def test_ring_geometry_keeps_whole_blocks_and_at_least_two() -> None:
    assert ring_geometry(64 << 20) == (256 << 10, 256)
    assert ring_geometry(128 << 10) == (64 << 10, 2)
    assert ring_geometry(1) == (64 << 10, 2)


def test_the_filter_accepts_whole_packets_and_drops_loopbacks_outgoing_copy() -> None:
    on_lo = instructions(compile_bpf("tcp port 6379", 1, 262144, 0))
    assert on_lo[0] == (BPF_LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_PKTTYPE)
    assert on_lo[1][3] == PACKET_OUTGOING and on_lo[2] == (BPF_RET_K, 0, 0, 0)
    accepts = [k for code, _jt, _jf, k in on_lo if code == BPF_RET_K and k]
    assert accepts and set(accepts) == {262144}  # libpcap's own snaplen replaced by ours
    on_any = instructions(compile_bpf("tcp port 6379", 12, 4096, 1))
    assert on_any[0] == (BPF_LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_IFINDEX) and on_any[1][3] == 1
    plain = instructions(compile_bpf("tcp port 6379", 1, 262144, None))
    assert plain[0][3] != SKF_AD_OFF + SKF_AD_PKTTYPE and len(plain) == len(on_lo) - 3


class _Ring:
    link_type = 1


class _Capture:
    """What :func:`written` uses of a LiveCapture: its ring's link type, snaplen, frames, drops."""

    def __init__(self, frames: list[tuple[float, int, bytes]], drops: int) -> None:
        self.ring = _Ring()
        self.snaplen = 262144
        self._frames = frames
        self.kernel_drops: int | None = None
        self._drops = drops

    def frames(self) -> Iterator[tuple[float, int, bytes]]:
        yield from self._frames
        self.kernel_drops = self._drops  # known once the capture ends, as live


def test_written_pcapng_reads_back_with_its_drop_count_and_no_credentials() -> None:
    _info, frames = open_capture(HEALTHY)
    frames = list(frames)
    raw = b"".join(f for _ts, _l, f in frames)
    assert b"\0guest\0guest" in raw  # the fixture logs in with PLAIN guest/guest
    out = io.BytesIO()
    passed = list(written(_Capture(frames, 17), out, scrub=True))  # type: ignore[arg-type]
    data = out.getvalue()
    assert data[:4] == b"\x0a\x0d\x0d\x0a" and b"\0guest\0guest" not in data
    info, back = open_stream(io.BytesIO(data), "written.pcapng")
    back = list(back)
    assert info.interface_drops == 17 and info.packets == len(frames)
    assert [f for _t, _l, f in back] == [f for _t, _l, f in passed]
    assert len(back) == len(frames)  # (zip's strict= is Python 3.10+; the matrix runs 3.9)
    assert all(abs(a[0] - b[0]) < 1e-6 for a, b in zip(back, frames))
    # the analysis of what was written equals the analysis of the original, but for the drop warning
    original = analyse_frames("x", *open_capture(HEALTHY)).to_dict()["connections"]
    assert analyse_frames("y", info, back).to_dict()["connections"] == original
