"""Write frames as pcap (micro/nano, either byte order) or pcapng, and re-wrap link layers.

Tests use it to prove the reader gives the same analysis whatever the container: the frames come
from the real fixture captures, only their envelope changes.
"""

from __future__ import annotations

import struct

from celerydiag.network.capture.decode import ip_offset


def write_pcap(path: str, frames: list[tuple[float, int, bytes]], *, nano: bool = False, big: bool = False) -> None:
    e = ">" if big else "<"
    link = frames[0][1] if frames else 1
    with open(path, "wb") as fh:
        fh.write(struct.pack(e + "IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0, 262144, link))
        for ts, _link, frame in frames:
            sec = int(ts)
            frac = round((ts - sec) * (1e9 if nano else 1e6))
            fh.write(struct.pack(e + "IIII", sec, frac, len(frame), len(frame)) + frame)


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def write_pcapng(path: str, frames: list[tuple[float, int, bytes]], *, tsresol: int = 9) -> None:
    link = frames[0][1] if frames else 1
    with open(path, "wb") as fh:
        fh.write(_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))
        opts = struct.pack("<HHB3x", 9, 1, tsresol) + struct.pack("<HH", 0, 0)
        fh.write(_block(1, struct.pack("<HHI", link, 0, 262144) + opts))
        for ts, _link, frame in frames:
            units = round(ts * 10 ** tsresol)
            body = struct.pack("<IIIII", 0, units >> 32, units & 0xFFFFFFFF, len(frame), len(frame)) + frame
            fh.write(_block(6, body))


def rewrap(link: int, frame: bytes, new_link: int) -> bytes:
    """The same IP packet behind another link-layer header."""
    off = ip_offset(link, frame)
    ip = frame[off:]
    v6 = ip[0] >> 4 == 6
    etype = 0x86DD if v6 else 0x0800
    if new_link == 1:
        return b"\0" * 12 + struct.pack("!H", etype) + ip
    if new_link == 113:  # SLL: packet type, ARPHRD, addr len, addr(8), protocol
        return struct.pack("!HHH8sH", 0, 772, 6, b"\0" * 8, etype) + ip
    if new_link == 276:  # SLL2: protocol, reserved, ifindex, ARPHRD, packet type, addr len, addr(8)
        return struct.pack("!HHIHBB8s", etype, 0, 1, 772, 0, 6, b"\0" * 8) + ip
    if new_link == 101:
        return ip
    if new_link == 0:  # BSD null: address family in the capturing host's byte order
        return struct.pack("<I", 30 if v6 else 2) + ip
    raise ValueError(new_link)


def to_ipv6(link: int, frame: bytes) -> bytes:
    """An IPv4 frame as IPv6 (raw link), with the IPv4 addresses mapped into ::ffff:0:0/96."""
    off = ip_offset(link, frame)
    ip = frame[off:]
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack("!H", ip[2:4])[0]
    payload = ip[ihl:total]
    src = b"\0" * 10 + b"\xff\xff" + ip[12:16]
    dst = b"\0" * 10 + b"\xff\xff" + ip[16:20]
    return struct.pack("!IHBB16s16s", 6 << 28, total - ihl, 6, 64, src, dst) + payload  # real length, cut payload
