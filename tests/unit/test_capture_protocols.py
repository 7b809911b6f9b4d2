"""AMQP frames and RESP messages are parsed the same however TCP cut the byte stream, requests pair
with their replies (pipelining, pub/sub pushes), and PLAIN credentials never survive --write."""

from __future__ import annotations

import os
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from celerydiag.network.capture.amqp import AmqpParser, AmqpState, scrub_start_ok, start_ok_response_span
from celerydiag.network.capture.live import scrub_file
from celerydiag.network.capture.reader import open_capture
from celerydiag.network.capture.resp import RedisState, RespParser
from celerydiag.network.capture.stream import Reassembler

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "pcaps")


def frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return struct.pack("!BHI", ftype, channel, len(payload)) + payload + b"\xce"


def method(cls: int, mid: int, args: bytes = b"") -> bytes:
    return frame(1, 0, struct.pack("!HH", cls, mid) + args)


def shortstr(s: str) -> bytes:
    return bytes([len(s)]) + s.encode()


CLIENT_STREAM = (b"AMQP\x00\x00\x09\x01" + method(10, 31, struct.pack("!HIH", 2047, 131072, 7))
                 + frame(8, 0, b"") * 3 + method(60, 40, b"\x00" * 8) + frame(3, 1, b"x" * 5000)
                 + method(10, 50, struct.pack("!H", 320) + shortstr("CONNECTION_FORCED - bye") + b"\0\0\0\0"))


def feed_in_pieces(stream: bytes, cuts: list[int], parser) -> None:  # noqa: ANN001
    r = Reassembler(parser)
    seq = 1000
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for a, b in zip(points, points[1:]):
        r.segment(float(a), seq + a, b - a, stream[a:b])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(CLIENT_STREAM)), max_size=40))
def test_amqp_frames_survive_any_segmentation(cuts: list[int]) -> None:
    state = AmqpState()
    feed_in_pieces(CLIENT_STREAM, cuts, AmqpParser(state, "client"))
    side = state.sides["client"]
    assert state.heartbeat_s == 7
    assert side.heartbeat_frames == 3
    assert side.publishes == 1
    assert side.frames == 7
    assert (state.close_by, state.close_code, state.close_text) == ("client", 320, "CONNECTION_FORCED - bye")


def test_amqp_retransmitted_and_missing_bytes() -> None:
    state = AmqpState()
    r = Reassembler(AmqpParser(state, "client"))
    hb = frame(8, 0, b"")
    r.segment(0.0, 1, 8, hb)
    r.segment(0.1, 1, 8, hb)  # retransmission: not counted twice
    r.segment(0.2, 100, 8, hb)  # a hole before it: resynchronised, still a frame
    r.segment(0.3, 108, 4, hb[:4])
    r.segment(0.4, 112, 4, hb[4:])
    assert state.sides["client"].heartbeat_frames == 3
    assert r.gaps == 1


def test_heartbeat_silence_counts_any_traffic() -> None:
    state = AmqpState()
    AmqpParser(state, "client").feed(10.0, method(10, 31, struct.pack("!HIH", 0, 131072, 5)))
    for t in (11.0, 12.0, 25.0):
        state.activity("client", t)
    state.activity("server", 11.0)
    state.finish(26.0)
    assert state.sides["client"].max_silence_s == 13.0
    assert state.sides["server"].max_silence_s == 15.0
    assert state.missed_heartbeats() == ["client", "server"]


def resp(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


# Replies of every RESP2/RESP3 shape, nested, with a bulk past the 256-byte copy limit and one under.
REPLY_STREAM = (b"+OK\r\n" + b"*3\r\n$5\r\nhello\r\n*2\r\n:1\r\n%1\r\n+k\r\n~2\r\n_\r\n,1.5\r\n$-1\r\n"
                + b"$300\r\n" + b"v" * 300 + b"\r\n" + b"-ERR no\r\n" + b"*-1\r\n" + b"*0\r\n"
                + b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\n{}\r\n"
                + b"*2\r\n*2\r\n*1\r\n$3\r\nabc\r\n:7\r\n$1\r\nz\r\n" + b":42\r\n")
REPLIES = 8  # replies that pair with a command (the push does not)


def _reply_state(cuts: list[int]) -> tuple:
    state = RedisState()
    state.pending.extend(("GET", 1, 0.0) for _ in range(REPLIES + 1))
    feed_in_pieces(REPLY_STREAM, cuts, RespParser(state, False))
    return len(state.pending), state.pushes, state.errors, sorted((k, r.count) for k, r in state.latency.items())


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(REPLY_STREAM)), max_size=60))
def test_resp_replies_survive_any_segmentation(cuts: list[int]) -> None:
    """Nested aggregates are found complete by a resumable scan (``resp._scan``) before they are
    parsed: however TCP cut the stream, the same replies pair with the same commands."""
    assert _reply_state(cuts) == _reply_state([]) == (1, 1, 1, [("GET", REPLIES)])


def test_resp_pairs_pipelined_requests_and_pubsub_pushes() -> None:
    state = RedisState()
    client, server = RespParser(state, True), RespParser(state, False)
    tid = b"celery-task-meta-6a1b"
    client.feed(1.0, resp(b"SUBSCRIBE", tid) + resp(b"GET", tid))
    server.feed(1.002, b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:1\r\n" % (len(tid), tid))  # confirmation
    server.feed(1.003, b"$-1\r\n")
    client.feed(2.0, resp(b"GET", tid) + resp(b"MULTI") + resp(b"SETEX", tid, b"86400", b"{}")
                + resp(b"PUBLISH", tid, b"{}") + resp(b"EXEC"))
    server.feed(2.004, resp(b"message", tid, b"{}") + b"$2\r\n{}\r\n+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n:1\r\n")
    doc = state.to_dict()
    assert doc["pubsub_pushes"] == 1
    assert doc["task_ids_polled"] == 1 and doc["polls_per_task"] == {"mean": 2.0, "max": 2}
    assert set(doc["commands"]) == {"SUBSCRIBE", "GET", "MULTI", "SETEX", "PUBLISH", "EXEC"}
    assert doc["commands"]["GET"]["samples"] == 2
    assert abs(doc["transaction_ms"]["p50_ms"] - 4.0) < 0.01
    assert not state.pending


def start_ok(user: str, password: str) -> bytes:
    props = b""
    response = f"\0{user}\0{password}".encode()
    args = struct.pack("!I", len(props)) + props + shortstr("PLAIN") + struct.pack("!I", len(response)) + response
    return method(10, 11, args + shortstr("en_US"))


def test_scrub_blanks_only_the_credentials() -> None:
    payload = start_ok("guest", "s3cret-pw")
    a, b = start_ok_response_span(payload)
    assert payload[a:b] == b"\0guest\0s3cret-pw"
    scrubbed = scrub_start_ok(payload)
    assert b"s3cret" not in scrubbed and len(scrubbed) == len(payload)
    assert scrubbed.endswith(shortstr("en_US") + b"\xce")


def test_write_copy_of_a_capture_has_no_credentials(tmp_path) -> None:
    src = os.path.join(FIXTURES, "amqp_missed_heartbeat.pcap")
    raw = open(src, "rb").read()
    assert b"\0guest\0guest" in raw  # the real capture holds them in clear
    out = tmp_path / "shareable.pcap"
    n = scrub_file(src, str(out))
    written = out.read_bytes()
    assert b"\0guest\0guest" not in written
    _info, frames = open_capture(str(out))
    assert sum(1 for _ in frames) == n


def test_every_protocol_has_its_round_trips_and_reaches_json_as_its_value() -> None:
    from celerydiag.network.capture import analyse
    from celerydiag.network.capture.analysis import Protocol
    from celerydiag.network.capture.assess import ROUND_TRIPS

    assert set(ROUND_TRIPS) == set(Protocol)
    conns = analyse(os.path.join(FIXTURES, "amqp_healthy.pcap")).to_dict()["connections"]
    assert conns and {type(c["protocol"]) for c in conns} == {str}
    assert {c["protocol"] for c in conns} <= {p.value for p in Protocol}
