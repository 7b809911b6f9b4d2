"""Fuzzing the capture parsers: seeds cut from the real captures, the entry points, a mutator.

One module for both fuzzers, so they exercise the same code the same way: ``bench/fuzz_parsers.py``
(atheris, coverage-guided, 200,000+ inputs) and ``tests/unit/test_fuzz_parsers.py`` (a
seeded corpus of a few thousand in the suite, :func:`corpus`).

An input is one selector byte and a body. The selector picks the entry point:

- ``0`` capture: the body is a pcap/pcapng file; reader -> TCP analysis -> AMQP/RESP parsers ->
  report -> JSON (``allow_nan=False``, as ``--format json`` writes it) and text, i.e. ``capture --read``
  and the network probe minus the file system;
- ``1`` scrub: the same file through ``capture --read F --write COPY`` (credentials blanked), and the
  copy must itself read back as a valid capture;
- ``2`` AMQP and ``3`` RESP: the body (after one byte of options) is one direction's TCP byte stream,
  fed through the reassembler in segments, with a hole when asked, to the protocol parser.

The documented error is :class:`~celerydiag.errors.InputError` ("not a capture", "cut short",
"malformed"): an input either parses or raises it. Anything else, or an input that runs past its
time bound (:class:`Hang`), is a bug.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import signal
import struct
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

from celerydiag.errors import InputError
from celerydiag.network.capture import Ports, analyse_frames
from celerydiag.network.capture.amqp import AmqpParser, AmqpState, scrub_start_ok
from celerydiag.network.capture.decode import tcp_segment
from celerydiag.network.capture.live import scrub_frames
from celerydiag.network.capture.reader import open_capture, open_stream
from celerydiag.network.capture.render import as_report, render_text
from celerydiag.network.capture.resp import RedisState, RespParser
from celerydiag.network.capture.stream import Reassembler
from tests.support import pcapwrite

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "fixtures", "pcaps")
CAPTURE, SCRUB, AMQP, RESP = 0, 1, 2, 3
RENDER = 0x80  # in the selector byte of a capture input: render the text report too
ENTRY_NAMES = {CAPTURE: "capture", SCRUB: "scrub", AMQP: "amqp", RESP: "resp"}
SEED_BYTES = 2000  # a window of a real capture: big enough for handshakes and frames, small to run fast
SEED_PACKETS = 12
MAX_INPUT = 8192
REDIS_FIXTURE_PORT = 6390  # celery_redis.pcap's server (a private redis-server), as `--port 6390` gives it
INPUT_SECONDS = 2.0  # per input: the slowest seed runs in a few milliseconds


class Hang(Exception):
    """An input ran past its time bound (raised from SIGALRM inside the parser)."""


# ---------------------------------------------------------------------------------------- entry points

def run_one(data: bytes) -> None:
    """Feed one fuzz input to the entry point its first byte selects; raises what the code raises."""
    if not data:
        return
    entry, body = data[0] % 4, data[1:]
    if entry == CAPTURE:
        _capture(body, render=bool(data[0] & RENDER))
    elif entry == SCRUB:
        _scrub(body)
    elif entry == AMQP:
        _stream(body, amqp=True)
    else:
        _stream(body, amqp=False)


def _capture(body: bytes, render: bool) -> None:
    info, frames = open_stream(io.BytesIO(body), "fuzz.pcap")
    ports = Ports()
    ports.redis.add(REDIS_FIXTURE_PORT)
    report = analyse_frames("fuzz.pcap", info, frames, ports=ports)
    json.dumps(report.to_dict(), allow_nan=False)  # what --format json writes: no NaN/inf, all serialisable
    as_report(report)  # markdown and junit render this
    if render:  # rich's layout costs ~20x the parse: only when the selector asks (its top bit)
        render_text(report, io.StringIO())


def _scrub(body: bytes) -> None:
    _info, frames = open_stream(io.BytesIO(body), "fuzz.pcap")
    out = io.BytesIO()
    written = scrub_frames(frames, out)
    if not written:
        return
    try:
        _info2, again = open_stream(io.BytesIO(out.getvalue()), "copy.pcap")
        n = sum(1 for _ in again)
    except InputError as exc:  # our own writer made a file our reader refuses: a bug, not bad input
        raise AssertionError(f"the scrubbed copy is not a valid capture: {exc}") from None
    if n != written:
        raise AssertionError(f"the scrubbed copy holds {n} packets, {written} were written")


def _stream(body: bytes, *, amqp: bool) -> None:
    """One direction's bytes in segments: sizes from the options byte, a hole if its top bit is set."""
    opts, stream = (body[0], body[1:]) if body else (0, b"")
    client = not opts & 1
    parser: Any
    if amqp:
        state: Any = AmqpState()
        side = "client" if client else "server"
        parser = AmqpParser(state, side)
    else:
        state = RedisState()
        parser = RespParser(state, client)
    r = Reassembler(parser, synced=not opts & 2)
    sizes = (1 + (opts >> 2) * 37 % 1461, 1 + (opts >> 2) * 11 % 97, 1460)
    seq, pos, i = 1_000_000, 0, 0
    while pos < len(stream):
        chunk = stream[pos:pos + sizes[i % 3]]
        if opts & 0x80 and i == 2:
            seq += 100  # a segment we never saw: the parser must resynchronise
        ts = i * 0.01
        r.segment(ts, seq & 0xFFFFFFFF, len(chunk), chunk)
        if amqp:
            state.activity(side, ts)
            scrub_start_ok(chunk)
        seq += len(chunk)
        pos += len(chunk)
        i += 1
    if amqp:
        state.finish(i * 0.01)
        state.missed_heartbeats()
    else:
        json.dumps(state.to_dict(), allow_nan=False)


# ------------------------------------------------------------------------------------ bounded, classified

def _on_alarm(signum: int, frame: Any) -> None:
    raise Hang(f"an input ran longer than {INPUT_SECONDS} s")


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """SIGALRM after ``seconds`` raises :class:`Hang` in the parser's own loop; the previous handler
    and timer (pytest-timeout's) are put back, less the time spent here."""
    old_handler = signal.signal(signal.SIGALRM, _on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay:
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - started), 0.001), old_interval)


def outcome(data: bytes, seconds: float = INPUT_SECONDS) -> str:
    """:func:`classify` within ``seconds`` (else :class:`Hang`)."""
    with time_limit(seconds):
        return classify(data)


def classify(data: bytes) -> str:
    """``"parsed"`` or ``"input-error"``; any other exception propagates."""
    try:
        run_one(data)
    except InputError as exc:
        if "\n" in str(exc) or not exc.message:
            raise AssertionError(f"an InputError must be one non-empty line: {exc!r}") from None
        return "input-error"
    return "parsed"


def signature(exc: BaseException) -> str:
    """Type and innermost celerydiag frame: one name per distinct bug, not per input."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "celerydiag" in f.filename] or frames
    where = f"{os.path.basename(ours[-1].filename)}:{ours[-1].lineno}" if ours else "?"
    return f"{type(exc).__name__}@{where}"


# ----------------------------------------------------------------------------------------------- seeds

def _frames(name: str) -> list[tuple[float, int, bytes]]:
    _info, frames = open_capture(os.path.join(FIXTURES, name))
    return list(frames)


def _window(frames: list[tuple[float, int, bytes]], start: int) -> list[tuple[float, int, bytes]]:
    out, size = [], 0
    for f in frames[start:start + SEED_PACKETS]:
        if out and size + len(f[2]) > SEED_BYTES:
            break
        out.append(f)
        size += len(f[2]) + 16
    return out


def _as_file(write: Any, frames: list[tuple[float, int, bytes]], **kw: Any) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "seed")
        write(path, frames, **kw)
        with open(path, "rb") as fh:
            return fh.read()


def _envelopes(frames: list[tuple[float, int, bytes]]) -> Iterator[tuple[str, bytes]]:
    """The same packets in each container and link layer the reader knows (as test_capture_reader)."""
    yield "pcap-us", _as_file(pcapwrite.write_pcap, frames)
    yield "pcap-nano-be", _as_file(pcapwrite.write_pcap, frames, nano=True, big=True)
    yield "pcapng-ns", _as_file(pcapwrite.write_pcapng, frames, tsresol=9)
    yield "pcapng-us", _as_file(pcapwrite.write_pcapng, frames, tsresol=6)
    for name, link in (("sll", 113), ("sll2", 276), ("raw", 101), ("null", 0)):
        yield name, _as_file(pcapwrite.write_pcap, [(ts, link, pcapwrite.rewrap(lt, f, link)) for ts, lt, f in frames])
    yield "ipv6", _as_file(pcapwrite.write_pcap, [(ts, 101, pcapwrite.to_ipv6(lt, f)) for ts, lt, f in frames])


def _ng_block(endian: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(endian + "II", btype, n) + body + struct.pack(endian + "I", n)


def _pcapng_rare(frames: list[tuple[float, int, bytes]]) -> bytes:
    """The pcapng blocks pcapwrite never writes: two sections (little then big endian), two
    interfaces, a binary if_tsresol, simple and obsolete packet blocks, statistics with drops."""
    out = b""
    for e in ("<", ">"):
        out += _ng_block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))
        out += _ng_block(e, 1, struct.pack(e + "HHI", 1, 0, 262144) + struct.pack(e + "HHB3x", 9, 1, 0x8A)
                         + struct.pack(e + "HH", 0, 0))
        out += _ng_block(e, 1, struct.pack(e + "HHI", 1, 0, 262144))
        for i, (ts, _link, f) in enumerate(frames[:8]):
            units = int(ts * 1024)
            if i % 3 == 0:
                out += _ng_block(e, 3, struct.pack(e + "I", len(f)) + f)
            elif i % 3 == 1:
                out += _ng_block(e, 2, struct.pack(e + "HHIIII", 1, 0, units >> 32, units & 0xFFFFFFFF, len(f),
                                                   len(f)) + f)
            else:
                out += _ng_block(e, 6, struct.pack(e + "IIIII", 0, units >> 32, units & 0xFFFFFFFF, len(f),
                                                   len(f)) + f)
        out += _ng_block(e, 5, struct.pack(e + "III", 0, 0, 0) + struct.pack(e + "HH", 5, 8)
                         + struct.pack(e + "Q", 3) + struct.pack(e + "HH", 0, 0))
    return out


def _directions(frames: list[tuple[float, int, bytes]], server_port: int) -> tuple[bytes, bytes]:
    """The client's and the server's bytes of the first connection to ``server_port``, in order."""
    client, server = bytearray(), bytearray()
    client_port = None
    for _ts, link, f in frames:
        seg = tcp_segment(link, f)
        if seg is None or server_port not in (seg[1], seg[3]):
            continue
        port = seg[1] if seg[3] == server_port else seg[3]
        client_port = port if client_port is None else client_port
        if port == client_port and seg[8]:
            (client if seg[3] == server_port else server).extend(seg[9])
    return bytes(client[:SEED_BYTES]), bytes(server[:SEED_BYTES])


@functools.lru_cache(maxsize=1)
def seeds() -> tuple[tuple[str, bytes], ...]:
    """Every seed as ``(name, input)``: windows of each fixture capture in every envelope (capture
    and scrub entries), the rare pcapng blocks, and the AMQP and RESP byte streams of real
    connections (client and server side, whole and with a hole)."""
    out: list[tuple[str, bytes]] = []
    names = sorted(n for n in os.listdir(FIXTURES) if n.endswith(".pcap"))
    for name in names:
        frames = _frames(name)
        for start in sorted({0, len(frames) // 2, max(len(frames) - SEED_PACKETS, 0)}):
            for env, blob in _envelopes(_window(frames, start)):
                out.append((f"{name}[{start}:]/{env}", bytes([CAPTURE]) + blob))
        first = _as_file(pcapwrite.write_pcap, _window(frames, 0))
        out.append((f"{name}/scrub", bytes([SCRUB]) + first))
        out.append((f"{name}/render", bytes([CAPTURE | RENDER]) + first))
        out.append((f"{name}/pcapng-rare", bytes([CAPTURE]) + _pcapng_rare(frames)))
    for entry, name, port in ((AMQP, "amqp_healthy.pcap", 5672), (RESP, "celery_redis.pcap", REDIS_FIXTURE_PORT)):
        client, server = _directions(_frames(name), port)
        for side, stream in (("client", client), ("server", server)):
            for opts, what in ((0x00, "whole"), (0x84, "hole")):
                opts |= 0 if side == "client" else 1
                out.append((f"{ENTRY_NAMES[entry]}/{side}/{what}", bytes([entry, opts]) + stream))
    return tuple((n, d[:MAX_INPUT]) for n, d in out)


# --------------------------------------------------------------------------------------------- mutator

MUTATIONS = ("flip", "byte", "word", "insert", "delete", "truncate", "splice", "repeat")
INTERESTING = (0, 1, 2, 3, 4, 12, 16, 20, 28, 32, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
               0x3FFFFFF, 0x4000000, 0x4000001, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)


def corpus(n: int, seed: int) -> Iterator[tuple[str, list[tuple[int, int, int]], bytes]]:
    """``n`` mutated seeds, the same for the same ``seed``: ``(seed name, ops, input)``. Half of
    the mutations of a pcap go inside one packet (:func:`mutate_packet`), so the file stays valid
    and the bytes reach the TCP, AMQP and RESP parsers rather than the reader's length checks."""
    import random

    rng = random.Random(seed)
    pool = seeds()
    for _ in range(n):
        name, data = pool[rng.randrange(len(pool))]
        ops = [(rng.randrange(len(MUTATIONS)), rng.getrandbits(32), rng.getrandbits(32))
               for _op in range(rng.randint(1, 6))]
        inside = None
        if rng.random() < 0.5:
            inside = mutate_packet(data, rng.getrandbits(32), lambda frame, ops=ops: mutate(b"\0" + frame, ops)[1:])
        yield name, ops, inside if inside is not None else mutate(data, ops)


_PCAP_LE_US = b"\xd4\xc3\xb2\xa1"


def mutate_packet(data: bytes, which: int, change: Any) -> bytes | None:
    """A capture input whose one packet (number ``which`` modulo their count) is replaced by
    ``change(frame)``, lengths fixed up; None when ``data`` is not a capture input holding a
    little-endian pcap (the envelope most seeds and tcpdump use). The structure-aware mutation of
    both fuzzers: libFuzzer's byte mutations alone mostly break the file's framing."""
    if len(data) < 25 or data[0] % 4 not in (CAPTURE, SCRUB) or data[1:5] != _PCAP_LE_US:
        return None
    head, body = data[:25], data[25:]
    records, pos = [], 0
    while pos + 16 <= len(body):
        incl = struct.unpack_from("<I", body, pos + 8)[0]
        if pos + 16 + incl > len(body):
            return None
        records.append((body[pos:pos + 8], body[pos + 16:pos + 16 + incl]))
        pos += 16 + incl
    if not records or pos != len(body):
        return None
    i = which % len(records)
    stamp, frame = records[i]
    records[i] = (stamp, bytes(change(frame)))
    out = b"".join(st + struct.pack("<II", len(f), len(f)) + f for st, f in records)
    return (head + out)[:MAX_INPUT]


def mutate(data: bytes, ops: Sequence[tuple[int, int, int]]) -> bytes:
    """``data`` after each ``(kind, where, value)``: bit flips, bytes, 16/32-bit words set to boundary
    values in either byte order (lengths are where parsers break), inserts, deletes, truncation,
    and splices of the input into itself. The selector byte is kept, so the entry point is too."""
    head, buf = data[:1], bytearray(data[1:])
    for kind, where, value in ops:
        n = len(buf)
        pos = where % (n + 1)
        name = MUTATIONS[kind % len(MUTATIONS)]
        if name == "flip" and n:
            buf[pos % n] ^= 1 << (value % 8)
        elif name == "byte" and n:
            buf[pos % n] = value & 0xFF
        elif name == "word":
            word = INTERESTING[value % len(INTERESTING)]
            fmt = ("<" if value & 0x100 else ">") + ("H" if value & 0x200 else "I")
            packed = struct.pack(fmt, word & (0xFFFF if fmt[1] == "H" else 0xFFFFFFFF))
            buf[pos:pos + len(packed)] = packed
        elif name == "insert":
            buf[pos:pos] = bytes([value & 0xFF]) * (1 + (value >> 8) % 64)
        elif name == "delete":
            del buf[pos:pos + 1 + (value % 256)]
        elif name == "truncate":
            del buf[pos:]
        elif name == "splice" and n:
            src = value % n
            buf[pos:pos] = buf[src:src + 1 + (value >> 8) % 512]
        elif name == "repeat" and n:
            src = pos % n
            chunk = buf[src:src + 1 + value % 64]
            buf[src:src] = chunk * (1 + (value >> 6) % 8)
    return (head + bytes(buf))[:MAX_INPUT]
