"""Live capture with scapy: a BPF filter on the broker/backend ports, written to a pcap, then the
same offline analysis (one code path, and the user keeps the file with ``--write``).

scapy earns its place here (design.md): opening the raw socket, compiling and attaching the BPF
filter and writing pcap records. We only keep bytes, never dissect, and blank AMQP PLAIN
credentials (Connection.Start-Ok) before a frame reaches the file unless told not to. Kernel drops
come from the socket's PACKET_STATISTICS. Ctrl-C (or --duration/--count) ends the capture; the
analysis of what was captured still runs.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from celerydiag import interrupt
from celerydiag.errors import InputError

SOL_PACKET, PACKET_STATISTICS = 263, 6
PCAP_TS_LIMIT_NS = (1 << 32) * 1_000_000_000  # a pcap record's seconds are 32 bits: up to 2106
PACKET_OUTGOING, ARPHRD_LOOPBACK = 4, 772
E_PERMISSION = "live capture on {iface} needs root or CAP_NET_RAW ({error})"
H_PERMISSION = ("run it as root (sudo celerydiag capture ...), or grant the interpreter the capability once: "
                "sudo setcap cap_net_raw,cap_net_admin=eip $(readlink -f $(which python3)); or capture with "
                "`tcpdump -i IFACE -w FILE.pcap port 5672` and run `celerydiag capture --read FILE.pcap`")
E_IFACE = "no interface named {iface!r} ({error})"
H_IFACE = "pick one of: {names}"


@dataclass
class LiveResult:
    path: str
    packets: int
    kernel_drops: int | None
    interrupted: bool
    seconds: float


def bpf_for(ports: Iterable[int]) -> str:
    return " or ".join(f"tcp port {p}" for p in sorted(set(ports)))


def capture(iface: str, ports: Iterable[int], path: str, *, duration: float, count: int = 0,
            scrub: bool = True, progress=None) -> LiveResult:
    """Sniff ``iface`` for ``duration`` s (or ``count`` packets) into ``path`` (pcap)."""
    import logging

    import scapy.arch  # noqa: F401 - installs the platform's conf.L2listen
    import scapy.layers.l2  # noqa: F401 - registers Ethernet and Linux cooked link types
    from scapy.utils import PcapWriter

    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)  # one-line errors are ours to print
    bpf = bpf_for(ports)
    try:
        sock = _listen_class()(iface=iface, filter=bpf)
    except PermissionError as exc:
        raise InputError(E_PERMISSION.format(iface=iface, error=exc.strerror or exc), H_PERMISSION) from None
    except (OSError, ValueError) as exc:  # scapy 2.8: ValueError "Interface 'any' not found"
        raise InputError(E_IFACE.format(iface=iface, error=getattr(exc, "strerror", None) or exc),
                         H_IFACE.format(names=", ".join(interface_names()))) from None
    writer = PcapWriter(path, sync=False)
    packets = 0
    interrupted = False
    started = time.monotonic()
    deadline = started + duration
    try:
        from scapy.sendrecv import sniff

        def keep(pkt) -> None:  # noqa: ANN001 - scapy Packet
            nonlocal packets
            packets += 1
            writer.write(_scrubbed(pkt) if scrub else pkt)
            if progress is not None:
                progress(packets, time.monotonic() - started)

        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or (count and packets >= count):
                    break
                sniff(opened_socket=sock, prn=keep, store=False, timeout=min(left, 0.5), chainCC=True,
                      count=(count - packets) if count else 0)
        except KeyboardInterrupt:
            if not interrupt.absorb():  # Ctrl-C stops the capture; SIGTERM ends the command (143)
                raise
            interrupted = True
        drops = _drops(sock)
    finally:
        writer.close()
        sock.close()
    return LiveResult(path, packets, drops, interrupted, time.monotonic() - started)


def _listen_class() -> type:
    """scapy's listening socket, minus the outgoing copy of each loopback packet.

    On ``lo`` the kernel hands a packet socket every packet twice (as outgoing and as incoming);
    libpcap (so tcpdump and tshark) drops the outgoing copy on loopback devices, and so do we, or
    every segment would look retransmitted.
    """
    from scapy.config import conf
    from scapy.data import MTU

    base = conf.L2listen

    class LoopbackAwareListen(base):  # type: ignore[misc, valid-type]
        def recv_raw(self, x: int = MTU):  # noqa: ANN202
            pkt, sa_ll, ts = self._recv_raw(self.ins, x)
            if sa_ll[2] == PACKET_OUTGOING and sa_ll[3] == ARPHRD_LOOPBACK:
                return None, None, None
            if ts is None:
                from scapy.arch.linux import get_last_packet_timestamp

                ts = get_last_packet_timestamp(self.ins)
            return self.LL, pkt, ts

    return LoopbackAwareListen if hasattr(base, "_recv_raw") else base


def _drops(sock) -> int | None:  # noqa: ANN001
    try:
        raw = sock.ins.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        _packets, drops = struct.unpack("II", raw)
        return drops
    except (AttributeError, OSError):
        return None


def _scrubbed(pkt):  # noqa: ANN001, ANN202
    """The same packet with SASL credentials in an AMQP Connection.Start-Ok blanked."""
    from celerydiag.network.capture.amqp import start_ok_response_span
    from celerydiag.network.capture.decode import tcp_segment

    raw = bytes(pkt)
    link = _linktype(pkt)
    seg = tcp_segment(link, raw) if link is not None else None
    if seg is None or not seg[8]:
        return pkt
    payload = seg[9]
    span = start_ok_response_span(payload)
    if span is None:
        return pkt
    start = raw.find(payload)  # a Start-Ok payload is far longer than any header: unambiguous
    a, b = start + span[0], start + span[1]
    new = pkt.__class__(raw[:a] + b"*" * (b - a) + raw[b:])
    new.time = pkt.time
    return new


def _linktype(pkt) -> int | None:  # noqa: ANN001
    from scapy.config import conf

    return conf.l2types.layer2num.get(pkt.__class__)


def scrub_file(src: str, dst: str) -> int:
    """Copy a capture (pcap or pcapng) to a pcap with credentials blanked; returns frames written.
    A source that is cut short or corrupt raises InputError and leaves no partial copy behind;
    only a regular file is removed, never a device (``--write /dev/full`` must not unlink it)."""
    from celerydiag.network.capture.reader import open_capture

    _info, frames = open_capture(src)
    try:
        with open(dst, "wb") as out:
            return scrub_frames(frames, out)
    except BaseException:
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.stat(dst).st_mode):
                os.unlink(dst)
        raise


def scrub_frames(frames: Iterable[tuple[float, int, bytes]], out: BinaryIO) -> int:
    """:func:`scrub_file` on frames from the reader, written to an open binary stream."""
    from celerydiag.network.capture.amqp import start_ok_response_span
    from celerydiag.network.capture.decode import tcp_segment

    n = 0
    link_out = None
    for ts, link, frame in frames:
        if link_out is None:
            link_out = link
            out.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, link))
        if link != link_out:
            continue  # pcap holds one link type; pcapng with several interfaces keeps the first
        seg = tcp_segment(link, frame)
        if seg is not None and seg[8]:
            payload = seg[9]
            span = start_ok_response_span(payload)
            if span is not None:
                start = frame.find(payload)
                a, b = start + span[0], start + span[1]
                frame = frame[:a] + b"*" * (b - a) + frame[b:]
        ns = int(round(ts * 1e9))
        if not 0 <= ns < PCAP_TS_LIMIT_NS:  # found by bench/fuzz_parsers.py: was a struct.error
            raise InputError(f"packet {n + 1} has a timestamp ({ts:.3g} s since 1970) a pcap cannot hold: the "
                             "capture is corrupt, or its pcapng if_tsresol is wrong")
        out.write(struct.pack("<IIII", ns // 1_000_000_000, ns % 1_000_000_000, len(frame), len(frame)))
        out.write(frame)
        n += 1
    return n


def interface_names() -> list[str]:
    import socket

    try:
        return sorted(name for _i, name in socket.if_nameindex())
    except OSError:
        return []


def default_path() -> str:
    import tempfile

    fd, path = tempfile.mkstemp(prefix="celerydiag-capture-", suffix=".pcap")
    os.close(fd)
    return path
