"""The capture parsers under a seeded corpus of mutated real captures: every input parses or raises
InputError (the documented error: exit 2, one line), never anything else, never a hang.

Same entry points and seeds as ``bench/fuzz_parsers.py`` (tests/support/fuzzing.py): the pcap/pcapng
reader, the TCP analysis, the AMQP and RESP decoders, the report (JSON without NaN, text), and the
scrubbed copy of ``capture --read --write``. The benchmark runs 200,000+ coverage-guided inputs; this
runs a few thousand, the same on every run (``fuzzing.corpus`` with a fixed seed), in the suite.
Below it, one regression test per class of bug the fuzzing found.
"""

from __future__ import annotations

import collections
import io
import os
import struct
import sys
import time
from typing import Any

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, ROOT)
from celerydiag.errors import InputError  # noqa: E402
from celerydiag.network.capture.live import scrub_frames  # noqa: E402
from celerydiag.network.capture.reader import open_stream  # noqa: E402
from tests.support import fuzzing  # noqa: E402

SEEDS = fuzzing.seeds()
EXAMPLES = 3000
CORPUS_SEED = 2026


def test_every_seed_is_a_real_capture_or_stream_that_parses() -> None:
    """The seeds are valid (so a mutation is what breaks them) and reach every entry point."""
    entries = collections.Counter(data[0] % 4 for _name, data in SEEDS)
    assert set(entries) == {fuzzing.CAPTURE, fuzzing.SCRUB, fuzzing.AMQP, fuzzing.RESP}
    for name, data in SEEDS:
        assert fuzzing.outcome(data) == "parsed", name


def test_mutated_corpus_parses_or_raises_input_error_only(tmp_path) -> None:
    seen: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    for i, (name, ops, data) in enumerate(fuzzing.corpus(EXAMPLES, CORPUS_SEED)):
        try:
            seen[fuzzing.outcome(data)] += 1
        except Exception as exc:  # Hang, or anything but InputError: keep the input to reproduce it
            path = tmp_path / f"input-{i}.bin"
            path.write_bytes(data)
            raise AssertionError(f"input {i} (seed {name}, ops {ops}, saved to {path}; replay with "
                                 f"bench/fuzz_parsers.py --replay): {fuzzing.signature(exc)}: {exc}") from exc
    # not vacuous: the mutations broke files and also left many parseable
    assert seen["parsed"] >= EXAMPLES // 10 and seen["input-error"] >= EXAMPLES // 10, seen
    assert time.monotonic() - started < 120  # generous (a hang check): about 10 s here


def test_a_hang_is_caught_and_named() -> None:
    """The per-input bound works (so a parser loop that never ends fails the test, not the suite)."""
    with pytest.raises(fuzzing.Hang):
        with fuzzing.time_limit(0.05):
            while True:
                pass


# ---------------------------------------------------------------- regressions, one per bug class found

FRAME = b"\0" * 12 + b"\x08\x00" + b"\x45" + b"\0" * 19  # Ethernet + an IPv4 header, no TCP


def _block(btype: int, body: bytes, blen: int | None = None, trailer: int | None = None) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack("<II", btype, n if blen is None else blen) + body + struct.pack("<I", n if trailer is None
                                                                                        else trailer)


SHB = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
IDB = _block(1, struct.pack("<HHI", 1, 0, 262144))
EPB = _block(6, struct.pack("<IIIII", 0, 0, 0, len(FRAME), len(FRAME)) + FRAME)


def _read(data: bytes) -> list[tuple[float, int, bytes]]:
    _info, frames = open_stream(io.BytesIO(data), "x.pcapng")
    return list(frames)


def test_pcapng_the_seeds_build_on_read_back() -> None:
    assert [len(f) for _ts, _link, f in _read(SHB + IDB + EPB + EPB)] == [len(FRAME)] * 2


@pytest.mark.parametrize("data, why", [
    # a packet block shorter than its fixed fields, last in the file: was struct.error (unpack_from past the end)
    (SHB + IDB + struct.pack("<III", 6, 12, 12), "12, less than the 32 of its type 6"),
    (SHB + struct.pack("<III", 1, 12, 12), "12, less than the 20 of its type 1"),
    (SHB + IDB + struct.pack("<III", 5, 12, 12), "12, less than the 24 of its type 5"),
    # a captured length past the end of its block: was read silently out of the next block
    (SHB + IDB + _block(6, struct.pack("<IIIII", 0, 0, 0, 200, 200) + FRAME) + EPB, "too short for the 200 bytes"),
    # leading and trailing lengths disagree: was accepted (Wireshark refuses it)
    (SHB + IDB + _block(6, struct.pack("<IIIII", 0, 0, 0, len(FRAME), len(FRAME)) + FRAME, trailer=999),
     "at its start, another at its end"),
    # the block length the issue names: not a multiple of 4, or absurd: was "truncated", analysed as far as read
    (SHB + IDB + _block(6, struct.pack("<IIIII", 0, 0, 0, len(FRAME), len(FRAME)) + FRAME, blen=66),
     "66, not a multiple"),
    (SHB + IDB + EPB[:4] + struct.pack("<I", 0x40000004) + EPB[8:], "more than any block"),
], ids=["short-epb", "short-idb", "short-isb", "caplen-past-block", "trailer-mismatch", "not-multiple-of-4", "huge"])
def test_pcapng_block_length_errors_are_input_errors(data: bytes, why: str) -> None:
    with pytest.raises(InputError, match="bad block length") as err:
        _read(data)
    assert why in str(err.value)


def test_pcapng_section_without_byte_order_magic_is_input_error() -> None:
    """A section header whose byte-order magic is neither order: was read as big-endian garbage."""
    bad = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x11223344, 1, 0, -1))
    with pytest.raises(InputError, match="no valid byte-order magic"):
        _read(bad + IDB + EPB)


def test_pcap_record_length_past_any_frame_is_input_error() -> None:
    """A pcap record claiming more than 64 MiB: was "truncated" and the packets before it analysed."""
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
    rec = struct.pack("<IIII", 0, 0, len(FRAME), len(FRAME)) + FRAME
    data = head + rec + struct.pack("<IIII", 0, 0, 0x7FFFFFFF, 0x7FFFFFFF) + FRAME
    with pytest.raises(InputError, match="the record at byte 74 \\(after 1 packet\\) claims 2147483647 bytes"):
        _read(data)


def test_scrub_copy_of_a_timestamp_a_pcap_cannot_hold_is_input_error() -> None:
    """Found by bench/fuzz_parsers.py: a pcapng timestamp past 2106 (or a binary if_tsresol of 2^0)
    made ``capture --read F --write COPY`` die with struct.error packing the pcap record's 32-bit
    seconds. Now: InputError naming the packet."""
    idb_seconds = _block(1, struct.pack("<HHI", 1, 0, 262144) + struct.pack("<HHB3x", 9, 1, 0x80)
                         + struct.pack("<HH", 0, 0))  # if_tsresol 2^-0: one unit is a second
    far = _block(6, struct.pack("<IIIII", 0, 1, 0, len(FRAME), len(FRAME)) + FRAME)  # 2**32 s
    _info, frames = open_stream(io.BytesIO(SHB + idb_seconds + far), "far.pcapng")
    with pytest.raises(InputError, match="packet 1 has a timestamp .* a pcap cannot hold"):
        scrub_frames(frames, io.BytesIO())


def _segments(parser: Any, stream: bytes, size: int = 1448) -> None:
    from celerydiag.network.capture.stream import Reassembler

    r = Reassembler(parser)
    for i in range(0, len(stream), size):
        chunk = stream[i:i + size]
        r.segment(i * 1e-6, 1 + i, len(chunk), chunk)


def test_a_large_redis_value_is_linear_not_quadratic() -> None:
    """Found while bounding the fuzz inputs' time: a 15 MiB value (a big task result) in 1448-byte
    segments took 97 s (4 MiB: 3.6 s), its bytes joined and parsed again on every segment. Now the
    parser says how much the unfinished value needs (``want``) and the reassembler waits for it."""
    from celerydiag.network.capture.resp import RedisState, RespParser

    body = b"x" * (15 << 20)
    stream = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$%d\r\n" % len(body) + body + b"\r\n*1\r\n$4\r\nPING\r\n"
    state = RedisState()
    with fuzzing.time_limit(20.0):  # generous: about 0.1 s here
        _segments(RespParser(state, True), stream)
    assert [p[0] for p in state.pending] == ["SET", "PING"]


def test_a_large_redis_array_is_linear_not_quadratic() -> None:
    """The same for an aggregate: an MGET reply of 100,000 small values (a group's results, ~1 MiB)
    took 277 s, parsed from its start on every segment; ``_scan`` now resumes where it stopped."""
    from celerydiag.network.capture.resp import RedisState, RespParser

    n = 100_000
    stream = b"*%d\r\n" % n + b"$5\r\nhello\r\n" * n + b"+OK\r\n"
    state = RedisState()
    state.pending.extend([("MGET", n, 0.0), ("SET", 2, 0.0)])
    with fuzzing.time_limit(30.0):  # generous: about 1 s here
        _segments(RespParser(state, False), stream)
    assert not state.pending and set(state.latency) == {"MGET", "SET"}
