"""Live capture: frames from the kernel's ring (``ring.py``) straight into the offline analysis.

No per-packet dissection and no intermediate file: :meth:`LiveCapture.frames` yields
``(timestamp, link type, frame)`` exactly as the pcap reader does, so ``capture --iface`` and
``capture --read`` share one analysis and memory stays flat however long the capture runs. With
``--write`` the same frames are written on the way (:func:`written`) as pcapng, whose closing
Interface Statistics Block keeps the kernel's drop count: re-reading the file later still says
the capture was partial. AMQP PLAIN credentials (Connection.Start-Ok) are blanked before a frame
reaches the file or the analysis unless told not to.

Ctrl-C stops the capture and the analysis of what was captured still runs (a second Ctrl-C
interrupts it); SIGTERM ends the command (143). --duration and --count end it too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from celerydiag.errors import InputError
from celerydiag.network.capture.reader import CaptureInfo
from celerydiag.network.capture.ring import DEFAULT_BUFFER, DEFAULT_SNAPLEN, POLL_MS, RETIRE_MS, PacketRing, RingError

PCAP_TS_LIMIT_NS = (1 << 32) * 1_000_000_000  # a pcap record's seconds are 32 bits: up to 2106
START_OK = b"\x00\x0a\x00\x0b"  # AMQP class 10 method 11: a cheap test before decoding the frame
E_PERMISSION = "live capture on {iface} needs root or CAP_NET_RAW ({error})"
H_PERMISSION = ("run it as root (sudo celerydiag capture ...), or grant the interpreter the capability once: "
                "sudo setcap cap_net_raw,cap_net_admin=eip $(readlink -f $(which python3)); or capture with "
                "`tcpdump -i IFACE -w FILE.pcap port 5672` and run `celerydiag capture --read FILE.pcap`")
E_IFACE = "no interface named {iface!r} ({error})"
H_IFACE = "pick one of: {names}"
E_SETUP = "cannot capture on {iface}: {error}"
H_SETUP = ("capture with `tcpdump -i {iface} -w FILE.pcap` and run `celerydiag capture --read FILE.pcap`; "
           "the filter needs libpcap (apt-get install libpcap0.8)")


@dataclass
class LiveResult:
    path: str
    packets: int
    kernel_drops: int | None
    interrupted: bool
    seconds: float


def bpf_for(ports: Iterable[int]) -> str:
    return " or ".join(f"tcp port {p}" for p in sorted(set(ports)))


class LiveCapture:
    """``with LiveCapture(...) as cap: analyse_frames(..., cap.info, cap.frames())``: the socket is
    open (or InputError raised) on entry, so "capturing" is only said once it is true."""

    def __init__(self, iface: str, ports: Iterable[int], *, duration: float, count: int = 0,
                 snaplen: int = DEFAULT_SNAPLEN, buffer_bytes: int = DEFAULT_BUFFER,
                 progress: Callable[[int, float], None] | None = None) -> None:
        self.iface = iface
        self.filter = bpf_for(ports)
        self.duration = duration
        self.count = count
        self.snaplen = snaplen
        self.buffer_bytes = buffer_bytes
        self.progress = progress
        self.info = CaptureInfo("pcap")
        self.packets = 0
        self.interrupted = False
        self.seconds = 0.0
        self.kernel_drops: int | None = None
        self.ring: PacketRing | None = None
        self._stop = False
        self._previous: Any = None

    # ---- setup and teardown --------------------------------------------------------------------

    def __enter__(self) -> LiveCapture:
        try:
            self.ring = PacketRing(self.iface, self.filter, snaplen=self.snaplen, buffer_bytes=self.buffer_bytes)
        except RingError as exc:
            raise _setup_error(self.iface, exc) from None
        self.info.link_types.append(self.ring.link_type)
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        if self.ring is not None:
            self.ring.close()
            self.ring = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        """The first Ctrl-C stops the capture (checked between blocks); a second one interrupts
        whatever runs then, through the handler that was there before (exit 130)."""
        if not self._stop:
            self._stop = True
            self.interrupted = True
            return
        previous = self._previous
        if callable(previous):
            previous(signum, frame)
        raise KeyboardInterrupt

    # ---- the capture ---------------------------------------------------------------------------

    def frames(self) -> Iterator[tuple[float, int, bytes]]:  # noqa: C901 - the per-packet loop, kept whole
        """Frames until the duration is over, ``count`` were taken or Ctrl-C; then the packets that
        arrived before that moment and still wait in the ring, none after it."""
        ring = self.ring
        assert ring is not None, "frames() outside `with LiveCapture(...)`"
        started = time.monotonic()
        deadline = started + self.duration
        cutoff = time.time() + self.duration  # ring timestamps are wall-clock
        closing = False
        count = self.count
        packets = 0
        progress = self.progress
        try:
            while True:
                if not ring.wait(2 * RETIRE_MS if closing else POLL_MS):
                    if closing:
                        break  # nothing left from before the cutoff
                    if self._stop or time.monotonic() >= deadline:
                        closing, cutoff = True, min(cutoff, time.time())
                        ring.read_stats()
                    continue
                batch = ring.block()
                if closing:
                    kept = [f for f in batch if f[0] <= cutoff]
                    for f in kept:
                        packets += 1
                        yield f
                        if count and packets >= count:
                            return
                    if len(kept) < len(batch):
                        break
                    continue
                for f in batch:
                    packets += 1
                    yield f
                    if count and packets >= count:
                        ring.read_stats()
                        return
                if progress is not None:
                    progress(packets, time.monotonic() - started)
                if self._stop or time.monotonic() >= deadline:
                    closing, cutoff = True, min(cutoff, time.time())
                    ring.read_stats()  # drops up to the end of the window, not while we drain it
        finally:
            if not closing:
                ring.read_stats()
            self.packets = self.info.packets = packets
            self.kernel_drops = self.info.interface_drops = ring.stats.drops
            self.seconds = time.monotonic() - started

    def summary(self, written: str | None) -> dict[str, Any]:
        """The ``live`` block of the capture report."""
        return {"iface": self.iface, "filter": self.filter, "packets": self.packets,
                "kernel_drops": self.kernel_drops, "interrupted": self.interrupted,
                "seconds": round(self.seconds, 3), "written": written, "snaplen": self.snaplen,
                "buffer_bytes": self.ring_bytes()}

    def ring_bytes(self) -> int:
        from celerydiag.network.capture.ring import ring_geometry

        block, blocks = ring_geometry(self.buffer_bytes)
        return block * blocks


def _setup_error(iface: str, exc: RingError) -> InputError:
    if exc.errno in (errno.EPERM, errno.EACCES):
        return InputError(E_PERMISSION.format(iface=iface, error=exc.cause), H_PERMISSION)
    if exc.errno in (errno.ENODEV, errno.ENXIO):
        return InputError(E_IFACE.format(iface=iface, error="No such device"),
                          H_IFACE.format(names=", ".join(["any", *interface_names()])))
    return InputError(E_SETUP.format(iface=iface, error=exc), H_SETUP.format(iface=iface))


def capture(iface: str, ports: Iterable[int], path: str, *, duration: float, count: int = 0,
            scrub: bool = True, progress: Callable[[int, float], None] | None = None,
            buffer_bytes: int = DEFAULT_BUFFER) -> LiveResult:
    """Capture into ``path`` (pcapng, the drop count in its statistics block) without analysing:
    for callers that analyse the file afterwards (the doctor's network probe)."""
    with LiveCapture(iface, ports, duration=duration, count=count, progress=progress,
                     buffer_bytes=buffer_bytes) as cap, open(path, "wb") as out:
        for _frame in written(cap, out, scrub=scrub):
            pass
    return LiveResult(path, cap.packets, cap.kernel_drops, cap.interrupted, cap.seconds)


# ---- writing: pcapng with the drop count, credentials blanked ---------------------------------------

def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def written(cap: LiveCapture, out: BinaryIO, *, scrub: bool = True) -> Iterator[tuple[float, int, bytes]]:
    """``cap.frames()``, each also written to ``out`` as a pcapng Enhanced Packet Block (nanosecond
    timestamps), scrubbed when ``scrub``; the Interface Statistics Block with the kernel's drop count
    closes the file once the capture ends."""
    assert cap.ring is not None
    shb = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
    idb = struct.pack("<HHI", cap.ring.link_type, 0, cap.snaplen) + struct.pack("<HHB3x", 9, 1, 9) + b"\0" * 4
    out.write(_block(0x0A0D0D0A, shb) + _block(1, idb))
    epb = struct.Struct("<IIIIIII").pack  # type, length, interface, ts high, ts low, caplen, origlen
    write = out.write
    last_ns = 0
    for ts, link, frame in cap.frames():
        if scrub and START_OK in frame:
            frame = scrub_frame(link, frame)
        ns = int(ts * 1e9)
        n = len(frame)
        pad = -n % 4
        blen = 32 + n + pad
        write(epb(6, blen, 0, ns >> 32, ns & 0xFFFFFFFF, n, n))
        write(frame)
        write(b"\0" * pad + struct.pack("<I", blen))
        last_ns = ns
        yield ts, link, frame
    drops = cap.kernel_drops or 0
    isb = struct.pack("<III", 0, last_ns >> 32, last_ns & 0xFFFFFFFF) + struct.pack("<HHQ", 5, 8, drops) + b"\0" * 4
    out.write(_block(5, isb))


def scrub_frame(link: int, frame: bytes) -> bytes:
    """``frame`` with the SASL response of an AMQP Connection.Start-Ok in it replaced by ``*``."""
    from celerydiag.network.capture.amqp import start_ok_response_span
    from celerydiag.network.capture.decode import tcp_segment

    seg = tcp_segment(link, frame)
    if seg is None or not seg[8]:
        return frame
    payload = seg[9]
    span = start_ok_response_span(payload)
    if span is None:
        return frame
    start = frame.find(payload)  # a Start-Ok payload is far longer than any header: unambiguous
    a, b = start + span[0], start + span[1]
    return frame[:a] + b"*" * (b - a) + frame[b:]


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
    n = 0
    link_out = None
    for ts, link, frame in frames:
        if link_out is None:
            link_out = link
            out.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, link))
        if link != link_out:
            continue  # pcap holds one link type; pcapng with several interfaces keeps the first
        if START_OK in frame:
            frame = scrub_frame(link, frame)
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
