"""Streaming pcap/pcapng reader: yields one raw frame at a time, memory flat as the file grows.

Why not scapy: ``rdpcap``/``PcapReader`` build a full dissected Packet object per frame (about
2-3 k packets/s, peers.md (d)); the analysis needs only a few header fields, so we parse the file
format and headers ourselves with ``struct`` from large buffered reads. This is the one place
where writing it ourselves beats a dependency on speed (design.md, "where each dependency earns
its place"): it is what lets ``capture --read`` outrun ``tshark -z expert`` with the same counts.

Formats: pcap (micro- and nanosecond magic, either byte order) and pcapng (SHB/IDB/EPB/SPB/the
obsolete PB, ``if_tsresol``, several sections and interfaces; ISB drop counters are kept). A file
that ends inside a record is *truncated*: everything before it is yielded and ``truncated`` is set.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from celerydiag.errors import InputError

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
CHUNK = 1 << 22  # 4 MiB reads: few syscalls, bounded memory

LINK_NAMES = {0: "null", 1: "ethernet", 12: "raw", 14: "raw", 101: "raw", 108: "loop", 113: "linux-sll",
              228: "ipv4", 229: "ipv6", 276: "linux-sll2"}

E_PCAPNG_IFACE = "malformed pcapng: a packet names interface {iface}, which no Interface Description Block defined"
E_NOT_CAPTURE = "{path} is not a pcap or pcapng capture (first bytes {head})"
H_NOT_CAPTURE = "write one with `tcpdump -i any -w FILE.pcap port 5672 or port 6379` or `celerydiag capture --write`"


@dataclass
class CaptureInfo:
    """What the file itself says, filled in while reading (``truncated`` only at the end)."""

    format: str = "pcap"
    link_types: list[int] = field(default_factory=list)
    packets: int = 0
    truncated: bool = False
    interface_drops: int | None = None  # pcapng ISB isb_ifdrop, summed over interfaces

    @property
    def link_type(self) -> str:
        names = [LINK_NAMES.get(lt, f"linktype-{lt}") for lt in dict.fromkeys(self.link_types)]
        return ",".join(names) or "unknown"


class _Buffer:
    """A sliding window over the file so records can be sliced without per-record reads."""

    def __init__(self, stream: BinaryIO, head: bytes) -> None:
        self.stream = stream
        self.data = head
        self.pos = 0
        self.eof = False

    def need(self, n: int) -> bool:
        """Make ``n`` bytes available at ``pos``; False at end of file."""
        if self.pos + n <= len(self.data):
            return True
        while not self.eof and self.pos + n > len(self.data):
            more = self.stream.read(max(CHUNK, n))
            if not more:
                self.eof = True
                break
            self.data = self.data[self.pos:] + more
            self.pos = 0
        return self.pos + n <= len(self.data)


def open_capture(path: str) -> tuple[CaptureInfo, Iterator[tuple[float, int, bytes]]]:
    """Check the magic now (so a wrong file fails before any work) and return the info plus a
    generator of ``(timestamp_s, link_type, frame_bytes)``."""
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed by the generator
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    head = stream.read(24)
    if head[:4] in PCAP_MAGICS:
        info = CaptureInfo("pcap")
        return info, _pcap(stream, head, info, path)
    if head[:4] == PCAPNG_SHB:
        info = CaptureInfo("pcapng")
        return info, _pcapng(stream, head, info)
    stream.close()
    raise InputError(E_NOT_CAPTURE.format(path=path, head=head[:4].hex() or "empty"), H_NOT_CAPTURE)


def _pcap(stream: BinaryIO, head: bytes, info: CaptureInfo, path: str) -> Iterator[tuple[float, int, bytes]]:
    with stream:
        if len(head) < 24:
            info.truncated = True
            return
        endian, resolution = PCAP_MAGICS[head[:4]]
        link = struct.unpack(endian + "I", head[20:24])[0] & 0xFFFF
        info.link_types.append(link)
        rec = struct.Struct(endian + "IIII").unpack_from
        buf = _Buffer(stream, b"")
        count = 0
        while True:
            if not buf.need(16):
                info.truncated = buf.pos != len(buf.data)
                break
            data, pos, size = buf.data, buf.pos, len(buf.data)
            # fast path: walk the records already in memory without method calls
            while pos + 16 <= size:
                sec, frac, incl, _orig = rec(data, pos)
                end = pos + 16 + incl
                if end > size or incl > 0x4000000:
                    break
                count += 1
                yield sec + frac * resolution, link, data[pos + 16:end]
                pos = end
            buf.pos = pos
            if pos + 16 <= size and rec(data, pos)[2] > 0x4000000:  # a corrupt length, not a frame
                info.truncated = True
                break
            if not buf.need(16):
                info.truncated = buf.pos != len(buf.data)
                break
            incl = rec(buf.data, buf.pos)[2]
            if not buf.need(16 + incl):
                info.truncated = True
                break
        info.packets = count


def _pcapng(stream: BinaryIO, head: bytes, info: CaptureInfo) -> Iterator[tuple[float, int, bytes]]:
    with stream:
        buf = _Buffer(stream, head)
        endian = "<"
        links: list[int] = []
        scales: list[float] = []
        drops: dict[int, int] = {}
        count = 0
        epb = struct.Struct("<IIIII").unpack_from
        while True:
            if not buf.need(12):
                info.truncated = buf.pos != len(buf.data)
                break
            data, pos = buf.data, buf.pos
            if data[pos:pos + 4] == PCAPNG_SHB:
                bom = data[pos + 8:pos + 12]
                endian = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
                epb = struct.Struct(endian + "IIIII").unpack_from
                links, scales = [], []
            btype, blen = struct.unpack_from(endian + "II", data, pos)
            if blen < 12 or blen % 4 or blen > 0x4000000:
                info.truncated = True
                break
            if not buf.need(blen):
                info.truncated = True
                break
            data, pos = buf.data, buf.pos
            buf.pos = pos + blen
            if btype in PACKET_BLOCKS:
                packet = _packet_block(btype, data, pos, blen, endian, epb, links, scales)
                count += 1
                yield packet
            else:
                _metadata_block(btype, data, pos, blen, endian, links, scales, drops, info)
        info.packets = count
        if drops:
            info.interface_drops = sum(drops.values())


PACKET_BLOCKS = frozenset({2, 3, 6})  # obsolete, simple, enhanced packet blocks


def _packet_block(btype: int, data: bytes, pos: int, blen: int, endian: str, epb: Any,
                  links: list[int], scales: list[float]) -> tuple[float, int, bytes]:
    """One packet of a packet block: (timestamp, link type, captured bytes)."""
    if not links:  # a packet before any interface block
        raise InputError(E_PCAPNG_IFACE.format(iface=0))
    if btype == 6:  # enhanced packet block
        iface, hi, lo, caplen, _orig = epb(data, pos + 8)
        start = pos + 28
    elif btype == 3:  # simple packet block: interface 0, no timestamp
        (orig,) = struct.unpack_from(endian + "I", data, pos + 8)
        return 0.0, links[0], data[pos + 12:pos + 12 + min(orig, blen - 16)]
    else:  # obsolete packet block
        iface, _drops, hi, lo, caplen, _orig = struct.unpack_from(endian + "HHIIII", data, pos + 8)
        start = pos + 28
    if iface >= len(links):
        raise InputError(E_PCAPNG_IFACE.format(iface=iface))
    return ((hi << 32) | lo) * scales[iface], links[iface], data[start:start + caplen]


def _metadata_block(btype: int, data: bytes, pos: int, blen: int, endian: str, links: list[int],
                    scales: list[float], drops: dict[int, int], info: CaptureInfo) -> None:
    """Interface descriptions (link type, timestamp resolution) and statistics (drops)."""
    if btype == 1:  # interface description
        link = struct.unpack_from(endian + "H", data, pos + 8)[0]
        links.append(link)
        scales.append(_tsresol(data[pos + 16:pos + blen - 4], endian))
        info.link_types.append(link)
    elif btype == 5:  # interface statistics: isb_ifdrop (code 5)
        iface = struct.unpack_from(endian + "I", data, pos + 8)[0]
        for code, value in _options(data[pos + 20:pos + blen - 4], endian):
            if code == 5 and len(value) == 8:
                drops[iface] = struct.unpack(endian + "Q", value)[0]


def _options(raw: bytes, endian: str) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + 4 <= len(raw):
        code, length = struct.unpack_from(endian + "HH", raw, pos)
        if code == 0:
            return
        yield code, raw[pos + 4:pos + 4 + length]
        pos += 4 + ((length + 3) & ~3)


def _tsresol(raw: bytes, endian: str) -> float:
    for code, value in _options(raw, endian):
        if code == 9 and value:
            r = value[0]
            return 2.0 ** -(r & 0x7F) if r & 0x80 else 10.0 ** -r
    return 1e-6
