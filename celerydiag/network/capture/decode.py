"""Link, IP and TCP headers from raw frame bytes, with ``struct`` (no per-packet objects).

Link types: Ethernet and Linux cooked v1 (both with 802.1Q/QinQ tags), Linux cooked v2 (``tcpdump -i any``), raw
IP, BSD null/loopback (host byte order) and OpenBSD loop (network order), bare IPv4/IPv6. IP
fragments other than the first are skipped (a TCP header is not in them). The TCP segment length
is taken from the IP length fields, as Wireshark does, so a snaplen-truncated frame still counts
its real size.
"""

from __future__ import annotations

import socket
import struct

_U16 = struct.Struct("!H").unpack_from
_TCP = struct.Struct("!HHIIBBH").unpack_from  # sport dport seq ack off flags window
_IP4 = struct.Struct("!BxHxxHxBxx4s4s").unpack_from  # ver/ihl, total length, flags/frag, proto, src, dst
_ETH_IP4_TCP = struct.Struct("!HBxHxxHxBxx4s4sHHIIBBH").unpack_from  # ethertype, then _IP4, then _TCP (no IP options)

ETHERTYPE_IP4, ETHERTYPE_IP6 = 0x0800, 0x86DD
# src, sport, dst, dport, seq, ack, flags, window, seglen, payload, wscale (precise: compiled, it is cheaper)
Segment = tuple[bytes, int, bytes, int, int, int, int, int, int, bytes, int]
_V6_EXT = {0, 43, 60, 51}  # hop-by-hop, routing, destination options, AH: skip to the next header


def ip_offset(link: int, frame: bytes) -> int:
    """Offset of the IP header in the frame, or -1 when it is not IP."""
    if link == 1 or link == 113:  # Ethernet, or Linux cooked v1 (VLAN tags in both: libpcap puts them back)
        off = 14 if link == 1 else 16
        etype = _U16(frame, off - 2)[0] if len(frame) >= off else 0
        while etype in (0x8100, 0x88A8) and len(frame) >= off + 4:
            etype = _U16(frame, off + 2)[0]
            off += 4
        return off if etype in (ETHERTYPE_IP4, ETHERTYPE_IP6) else -1
    if link == 276:
        return 20 if len(frame) >= 20 and _U16(frame, 0)[0] in (ETHERTYPE_IP4, ETHERTYPE_IP6) else -1
    if link in (101, 12, 14, 228, 229):
        return 0
    if link in (0, 108):
        return 4
    return -1


def tcp_segment(link: int, frame: bytes) -> Segment | None:  # noqa: C901 - hot path: Ethernet + IPv4 inline
    """``(src, sport, dst, dport, seq, ack, flags, window, seglen, payload, wscale)`` or None.

    ``src``/``dst`` are raw address bytes (cheap dict keys); ``payload`` is what was captured of
    the segment's data (may be shorter than ``seglen`` when the snaplen cut it); ``wscale`` is the
    window-scale option of a SYN, else -1.
    """
    if link == 1 and len(frame) >= 54:  # the common case first: Ethernet + IPv4 without options, one unpack
        etype, vihl, total, frag, proto, src, dst, sport, dport, seq, ack, doff, flags, window = _ETH_IP4_TCP(frame, 12)
        if etype == ETHERTYPE_IP4 and vihl == 0x45:
            if proto != 6 or frag & 0x1FFF:
                return None
            hlen = (doff >> 4) * 4
            seglen = (14 + total if total else len(frame)) - 34 - hlen
            if seglen < 0:
                return None
            start = 34 + hlen
            wscale = _wscale(frame, 54, start) if flags & 0x02 and hlen > 20 else -1
            return src, sport, dst, dport, seq, ack, flags, window, seglen, frame[start:start + seglen], wscale
    off = ip_offset(link, frame)
    if off < 0:
        return None
    if len(frame) < off + 20:
        return None
    version = frame[off] >> 4
    if version == 4:
        vihl, total, frag, proto, src, dst = _IP4(frame, off)
        if proto != 6 or frag & 0x1FFF:
            return None
        tcp = off + (vihl & 0x0F) * 4
        ip_end = off + total if total else len(frame)
    elif version == 6:  # rare on broker links: out of the IPv4 hot path
        v6 = _ipv6_tcp(frame, off)
        if v6 is None:
            return None
        src, dst, tcp, ip_end = v6
    else:
        return None
    if len(frame) < tcp + 20:
        return None
    sport, dport, seq, ack, doff, flags, window = _TCP(frame, tcp)
    hlen = (doff >> 4) * 4
    seglen = ip_end - tcp - hlen
    if seglen < 0:
        return None
    wscale = -1
    if flags & 0x02 and hlen > 20:
        wscale = _wscale(frame, tcp + 20, tcp + hlen)
    start = tcp + hlen
    return src, sport, dst, dport, seq, ack, flags, window, seglen, frame[start:start + seglen], wscale


def _ipv6_tcp(frame: bytes, off: int) -> tuple[bytes, bytes, int, int] | None:
    """(src, dst, TCP header offset, end of the IP payload) of an IPv6 packet carrying TCP,
    past any extension headers; None for anything else."""
    if len(frame) < off + 40:
        return None
    nxt = frame[off + 6]
    plen = _U16(frame, off + 4)[0]
    tcp = off + 40
    ip_end = tcp + plen if plen else len(frame)
    while nxt in _V6_EXT and len(frame) >= tcp + 8:
        nxt, hlen = frame[tcp], (frame[tcp + 1] + 1) * (4 if nxt == 51 else 8)
        tcp += hlen
    if nxt != 6:
        return None
    return frame[off + 8:off + 24], frame[off + 24:off + 40], tcp, ip_end


def _wscale(frame: bytes, pos: int, end: int) -> int:
    end = min(end, len(frame))
    while pos < end:
        kind = frame[pos]
        if kind == 0:
            break
        if kind == 1:
            pos += 1
            continue
        if pos + 1 >= end:
            break
        length = frame[pos + 1]
        if kind == 3 and length == 3 and pos + 2 < end:
            return min(frame[pos + 2], 14)
        if length < 2:
            break
        pos += length
    return -1


def address(raw: bytes, port: int) -> str:
    """``ip:port`` for IPv4, ``[ip]:port`` for IPv6."""
    if len(raw) == 4:
        return f"{socket.inet_ntop(socket.AF_INET, raw)}:{port}"
    return f"[{socket.inet_ntop(socket.AF_INET6, raw)}]:{port}"
