"""The reader gives the same analysis whatever the envelope: pcap micro/nano, either byte order,
pcapng, Ethernet / Linux cooked v1 and v2 / raw IP / BSD null, IPv4 or IPv6. A file cut short or
not a capture is bad input (InputError: exit 2, one line; test_capture_bad_files.py runs the CLIs)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from celerydiag.errors import InputError
from celerydiag.network.capture import analyse
from celerydiag.network.capture.reader import open_capture

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, ROOT)
from tests.support import pcapwrite  # noqa: E402

FIXTURES = os.path.join(ROOT, "fixtures", "pcaps")
ZERO_WINDOW = os.path.join(FIXTURES, "amqp_zero_window.pcap")
MISSED = os.path.join(FIXTURES, "amqp_missed_heartbeat.pcap")


def _frames(path: str) -> list[tuple[float, int, bytes]]:
    _info, frames = open_capture(path)
    return list(frames)


def _essence(path: str) -> list[dict]:
    """What must not depend on the envelope: every per-connection block except addresses."""
    out = []
    for c in analyse(path).to_dict()["connections"]:
        c = dict(c)
        c.pop("client"), c.pop("server")
        out.append(c)
    return out


@pytest.mark.parametrize("source", [ZERO_WINDOW, MISSED], ids=["zero_window", "missed_heartbeat"])
@pytest.mark.parametrize("kind", ["pcap-nano", "pcap-big-endian", "pcapng-ns", "pcapng-us", "sll", "sll2", "raw",
                                  "null", "ipv6"])
def test_same_analysis_in_every_envelope(tmp_path, source: str, kind: str) -> None:
    frames = _frames(source)
    out = str(tmp_path / f"x.{kind}")
    if kind == "pcap-nano":
        pcapwrite.write_pcap(out, frames, nano=True)
    elif kind == "pcap-big-endian":
        pcapwrite.write_pcap(out, frames, big=True)
    elif kind.startswith("pcapng"):
        pcapwrite.write_pcapng(out, frames, tsresol=9 if kind.endswith("ns") else 6)
    elif kind == "ipv6":
        pcapwrite.write_pcap(out, [(ts, 101, pcapwrite.to_ipv6(link, f)) for ts, link, f in frames], nano=True)
    else:
        new = {"sll": 113, "sll2": 276, "raw": 101, "null": 0}[kind]
        pcapwrite.write_pcap(out, [(ts, new, pcapwrite.rewrap(link, f, new)) for ts, link, f in frames], nano=True)
    assert _essence(out) == _essence(source)
    doc = analyse(out).to_dict()
    assert doc["file"]["format"] == ("pcapng" if kind.startswith("pcapng") else "pcap")
    if kind == "ipv6":
        assert doc["connections"][0]["client"].startswith("[::ffff:127.0.0.1]:")


def _record_ends(path: str) -> list[int]:
    """File offset just past each record of a pcap, read with struct alone (not with our reader)."""
    import struct

    data = open(path, "rb").read()
    pos, ends = 24, []
    while pos + 16 <= len(data):
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
        ends.append(pos)
    return ends


def test_file_cut_mid_record_is_input_error_naming_the_packets_before(tmp_path) -> None:
    """tshark warns "cut short in the middle of a packet" and analyses what came before; we refuse
    (a verdict on part of a capture can call "ok" the minutes that held the fault) and say how many
    complete packets precede the cut and how to keep them."""
    data = open(ZERO_WINDOW, "rb").read()
    ends = _record_ends(ZERO_WINDOW)
    cut_at = len(data) // 2 + 7
    before = sum(1 for e in ends if e <= cut_at)
    assert cut_at not in ends and 0 < before < len(ends)
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:cut_at])
    with pytest.raises(InputError) as err:
        analyse(str(cut))
    msg = str(err.value)
    assert "cut short in the middle of a packet" in msg
    assert f"{before} complete packets before the cut" in msg and f"FIXED.pcap 1-{before}" in msg
    assert "\n" not in msg
    assert analyse(ZERO_WINDOW).to_dict()["file"]["truncated"] is False  # the key stays, always false


def test_cut_at_a_record_boundary_is_a_complete_capture(tmp_path) -> None:
    """A file that ends between records is a shorter capture, not a broken one (tcpdump -c does this)."""
    data = open(ZERO_WINDOW, "rb").read()
    ends = _record_ends(ZERO_WINDOW)
    cut = tmp_path / "short.pcap"
    cut.write_bytes(data[:ends[99]])
    assert analyse(str(cut)).to_dict()["file"]["packets"] == 100


def test_not_a_capture_is_input_error(tmp_path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("this is not a capture\n")
    with pytest.raises(InputError) as err:
        analyse(str(bogus))
    assert "not a pcap or pcapng" in str(err.value)


def test_cli_not_a_capture_exit_2_one_line(tmp_path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello")
    proc = subprocess.run([sys.executable, "-m", "celerydiag", "capture", "--read", str(bogus)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("celerydiag: error:") and "not a pcap or pcapng" in proc.stderr
