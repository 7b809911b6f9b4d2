"""A Linux packet socket with a TPACKET_V3 receive ring and the BPF filter in the kernel.

Why not scapy's ``sniff``: it builds a dissected Packet per frame, about 30k packets/s, and the
kernel dropped 95 % of a 200k packets/s Redis load (issue 13). Here the kernel filters (the BPF
program libpcap compiles, attached with SO_ATTACH_FILTER) and writes the frames that pass into
a ring mapped into our memory (PACKET_RX_RING, TPACKET_V3: variable-size frames packed into
blocks), so a burst waits in the ring, not in a socket queue that overflows; we copy each frame
out once and hand the block back. Kernel drops are read from PACKET_STATISTICS (``tp_drops``).

Frames come out as a pcap would hold them, so the offline analysis reads them unchanged:

- ``lo`` and Ethernet interfaces: Ethernet frames (linktype 1), the 802.1Q tag the kernel moved
  into the ring header put back in the frame, as libpcap does;
- ``any`` and every other device type: Linux cooked frames (SLL, linktype 113) built from the
  ring's sockaddr_ll, the VLAN tag after its protocol field, as libpcap does.

On loopback the kernel hands a packet socket every packet twice (outgoing, then incoming); libpcap
drops the outgoing copy in user space, we drop it in the filter (``SKF_AD_PKTTYPE``), so it takes
no ring space and its drops are not counted.
"""

from __future__ import annotations

import ctypes
import mmap
import select
import socket
import struct
from dataclasses import dataclass

SOL_PACKET = 263
PACKET_RX_RING, PACKET_STATISTICS, PACKET_VERSION = 5, 6, 10
TPACKET_V3 = 2
SO_ATTACH_FILTER = 26
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
TP_STATUS_USER, TP_STATUS_VLAN_VALID, TP_STATUS_VLAN_TPID_VALID = 0x1, 0x10, 0x40
ARPHRD_ETHER, ARPHRD_LOOPBACK = 1, 772
LINK_ETHERNET, LINK_SLL = 1, 113
DLT_EN10MB, DLT_RAW = 1, 12
SKF_AD_OFF = 0xFFFFF000  # -0x1000: the kernel's ancillary loads
SKF_AD_PKTTYPE, SKF_AD_IFINDEX = 4, 8
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06

DEFAULT_SNAPLEN = 262144  # tcpdump's
DEFAULT_BUFFER = 64 << 20
MAX_BLOCK = 1 << 18  # 256 KiB blocks: a 64 KiB loopback segment (lo's MTU) always fits whole
MIN_BLOCK = 1 << 16
# A block that is not full is handed over after this long. Not shorter: while we are behind, each
# early handover wastes the rest of its block (10 ms lost 11 % of a 200k packets/s load).
RETIRE_MS = 100
POLL_MS = 100  # how often an idle capture looks at its deadline and at Ctrl-C

_BLOCK = struct.Struct("=III").unpack_from  # block_status, num_pkts, offset_to_first_pkt (at +8)
# tp_next_offset tp_sec tp_nsec tp_snaplen tp_len tp_status tp_mac tp_net tp_rxhash tp_vlan_tci tp_vlan_tpid
_HDR = struct.Struct("=IIIIIIHHIIH").unpack_from
_SLL_ADDR = struct.Struct("=HBB").unpack_from  # sll_hatype, sll_pkttype, sll_halen (at +56 of the header)
_VLAN = struct.Struct("!HH").pack
_STATS = struct.Struct("=III").unpack  # tpacket_stats_v3: tp_packets, tp_drops, tp_freeze_q_cnt
SLL_OFFSET = 48  # TPACKET_ALIGN(sizeof(struct tpacket3_hdr)): where the sockaddr_ll sits


class RingError(Exception):
    """The socket, filter or ring could not be set up; ``errno`` kept for the caller's message."""

    def __init__(self, what: str, exc: BaseException) -> None:
        super().__init__(f"{what}: {getattr(exc, 'strerror', None) or exc}")
        self.errno = getattr(exc, "errno", None)
        self.cause = exc


@dataclass
class Stats:
    """Packets the filter passed (``seen`` + ``drops``) and the ones the ring had no room for."""

    kernel_packets: int = 0
    drops: int = 0


def ring_geometry(buffer_bytes: int) -> tuple[int, int]:
    """(block size, block count) for a ring of about ``buffer_bytes``: at least two blocks, each
    a power of two between 64 KiB and 1 MiB (a frame never spans blocks)."""
    block = MAX_BLOCK
    while block > MIN_BLOCK and buffer_bytes < 2 * block:
        block //= 2
    return block, max(2, buffer_bytes // block)


def compile_bpf(expr: str, dlt: int, snaplen: int, drop_outgoing_on: int | None) -> bytes:
    """The classic BPF program for ``expr`` (libpcap's compiler, through scapy) as ``sock_filter``
    bytes: accept statements return ``snaplen``; with ``drop_outgoing_on`` (an ifindex, or 0 for
    the bound interface itself) outgoing copies on that loopback device are rejected first."""
    from scapy.arch.common import compile_filter

    prog = compile_filter(expr, linktype=dlt)
    raw = bytearray(ctypes.string_at(prog.bf_insns, prog.bf_len * 8))
    for i in range(0, len(raw), 8):
        code, jt, jf, k = struct.unpack_from("=HBBI", raw, i)
        if code == BPF_RET_K and k:
            struct.pack_into("=HBBI", raw, i, code, jt, jf, snaplen)
    if drop_outgoing_on is None:
        return bytes(raw)
    ins = struct.Struct("=HBBI").pack
    reject = ins(BPF_LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_PKTTYPE) + ins(BPF_JEQ_K, 0, 1, PACKET_OUTGOING) + \
        ins(BPF_RET_K, 0, 0, 0)
    if drop_outgoing_on:  # `any`: only the loopback device's outgoing copies
        reject = ins(BPF_LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_IFINDEX) + ins(BPF_JEQ_K, 0, 3, drop_outgoing_on) + reject
    return reject + bytes(raw)


def _attach(sock: socket.socket, program: bytes) -> None:
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("@HL", len(program) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def device_type(iface: str) -> int | None:
    try:
        with open(f"/sys/class/net/{iface}/type") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


class PacketRing:
    """One capture: open (filter, ring, bind), then :meth:`frames` until stopped, then close."""

    def __init__(self, iface: str, bpf: str, *, snaplen: int = DEFAULT_SNAPLEN,
                 buffer_bytes: int = DEFAULT_BUFFER) -> None:
        self.iface = iface
        self.snaplen = snaplen
        self.stats = Stats()
        hatype = None if iface == "any" else device_type(iface)
        if iface != "any" and hatype is None:
            raise RingError(f"no interface named {iface!r}", OSError(19, "No such device"))
        self.cooked = hatype not in (ARPHRD_ETHER, ARPHRD_LOOPBACK)
        self.link_type = LINK_SLL if self.cooked else LINK_ETHERNET
        if iface == "any":
            drop_on: int | None = _ifindex("lo")
        else:
            drop_on = 0 if hatype == ARPHRD_LOOPBACK else None
        # On Ethernet the kernel takes the outer 802.1Q tag out before the filter runs; an inner one
        # (QinQ) stays in the frame, where only libpcap's `vlan` shifts the offsets past it.
        expr = bpf if self.cooked else f"({bpf}) or (vlan and ({bpf}))"
        try:
            program = compile_bpf(expr, DLT_RAW if self.cooked else DLT_EN10MB, snaplen, drop_on)
        except Exception as exc:  # noqa: BLE001 - scapy raises its own types (no libpcap, bad filter)
            raise RingError(f"cannot compile the filter {bpf!r}", exc) from None
        kind = socket.SOCK_DGRAM if self.cooked else socket.SOCK_RAW
        block, nblocks = ring_geometry(buffer_bytes)
        self.block_size, self.blocks = block, nblocks
        try:
            # protocol 0: nothing arrives before the filter and ring are in place (bound below);
            # `any` cannot be bound to ifindex 0 from Python, so it listens from the start
            self.sock = socket.socket(socket.AF_PACKET, kind, socket.htons(ETH_P_ALL) if iface == "any" else 0)
        except OSError as exc:
            raise RingError("cannot open a packet socket", exc) from None
        try:
            _attach(self.sock, program)
            self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            req = struct.pack("=IIIIIII", block, nblocks, 2048, block // 2048 * nblocks, RETIRE_MS, 0, 0)
            self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self.map = mmap.mmap(self.sock.fileno(), block * nblocks, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
            if iface != "any":
                self.sock.bind((iface, ETH_P_ALL))  # Python applies htons here
        except OSError as exc:
            self.sock.close()
            raise RingError(f"cannot capture on {iface}", exc) from None
        self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)  # reset: count from here on
        self.poller = select.poll()
        self.poller.register(self.sock.fileno(), select.POLLIN | select.POLLERR)
        self.current = 0

    def read_stats(self) -> Stats:
        """Add the kernel's counters since the last read (reading resets them) and return the totals
        (unchanged once closed: a generator finalised after the capture must not fail)."""
        if self.sock.fileno() < 0:
            return self.stats
        packets, drops, _freeze = _STATS(self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12))
        self.stats.kernel_packets += packets
        self.stats.drops += drops
        return self.stats

    def wait(self, timeout_ms: int = POLL_MS) -> bool:
        """Block until the current block is ready (True) or ``timeout_ms`` passed (False)."""
        if self._ready():
            return True
        self.poller.poll(timeout_ms)
        return self._ready()

    def _ready(self) -> bool:
        return bool(_BLOCK(self.map, self.current * self.block_size + 8)[0] & TP_STATUS_USER)

    def block(self) -> list[tuple[float, int, bytes]]:
        """The frames of the current (ready) block as ``(ts, link, frame)``, copied out;
        the block goes back to the kernel before this returns."""
        mm = self.map
        base = self.current * self.block_size
        _status, count, first = _BLOCK(mm, base + 8)
        link = self.link_type
        cooked = self.cooked
        out = []
        off = base + first
        for _ in range(count):
            nxt, sec, nsec, caplen, _wirelen, status, mac, net, _rx, tci, tpid = _HDR(mm, off)
            if cooked:
                frame = _cooked(mm, off, net, caplen, status, tci, tpid)
            else:
                frame = mm[off + mac:off + mac + caplen]
                if status & TP_STATUS_VLAN_VALID:  # the kernel took the tag out: put it back
                    tag = _VLAN(tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100, tci & 0xFFFF)
                    frame = frame[:12] + tag + frame[12:]
            out.append((sec + nsec * 1e-9, link, frame))
            off += nxt
        struct.pack_into("=I", mm, base + 8, 0)  # TP_STATUS_KERNEL: the kernel may fill it again
        self.current = (self.current + 1) % self.blocks
        return out

    def close(self) -> None:
        try:
            self.map.close()
        finally:
            self.sock.close()


def _cooked(mm: mmap.mmap, off: int, net: int, caplen: int, status: int, tci: int, tpid: int) -> bytes:
    """A Linux cooked (SLL v1) frame: the 16-byte header libpcap builds from sockaddr_ll, then the
    network-layer bytes (what a SOCK_DGRAM ring holds)."""
    hatype, pkttype, halen = _SLL_ADDR(mm, off + SLL_OFFSET + 8)
    proto = mm[off + SLL_OFFSET + 2:off + SLL_OFFSET + 4]
    addr = mm[off + SLL_OFFSET + 12:off + SLL_OFFSET + 12 + min(halen, 8)]
    head = struct.pack("!HHH", pkttype, hatype, halen) + addr.ljust(8, b"\0")
    if status & TP_STATUS_VLAN_VALID:
        head += _VLAN(tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100, tci & 0xFFFF)
    return head + proto + mm[off + net:off + net + caplen]


def _ifindex(name: str) -> int | None:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None

