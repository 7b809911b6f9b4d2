"""Partial data is a finding (issue 13, point 2): a capture whose pcapng statistics block says the
capture system dropped packets, or whose snap length cut payloads, gets the partial-capture
warning naming the share seen, and every ok verdict says it is a lower bound, in every format.
A complete capture gets neither. (Real kernel drops: tests/integration/test_capture_ring.py.)"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys

import pytest

from celerydiag.network.capture import analyse
from celerydiag.network.capture.coverage import Coverage, qualified
from celerydiag.network.capture.reader import open_capture

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, ROOT)
from tests.support import pcapwrite  # noqa: E402

HEALTHY = os.path.join(ROOT, "fixtures", "pcaps", "amqp_healthy.pcap")
FORMATS = ("text", "json", "markdown", "junit", "html")


def with_drops(path: str, drops: int) -> str:
    """The healthy fixture's frames as pcapng, closed by an ISB whose isb_ifdrop is ``drops``."""
    _info, frames = open_capture(HEALTHY)
    pcapwrite.write_pcapng(path, list(frames))
    isb = struct.pack("<III", 0, 0, 0) + struct.pack("<HHQ", 5, 8, drops) + struct.pack("<HH", 0, 0)
    with open(path, "ab") as fh:
        fh.write(pcapwrite._block(5, isb))
    return path


def test_the_healthy_fixture_is_complete_and_says_plain_ok() -> None:
    report = analyse(HEALTHY)
    assert "network.partial-capture" not in {f.id for f in report.findings}
    assert not [f.title for f in report.findings if "lower bound" in f.title]


@pytest.mark.parametrize("fmt", FORMATS)
def test_drops_in_the_statistics_block_are_a_warning_in_every_format(tmp_path, fmt: str) -> None:
    path = with_drops(str(tmp_path / "dropped.pcapng"), 699)  # 233 packets captured: 25.0 % seen
    proc = subprocess.run([sys.executable, "-m", "celerydiag", "capture", "--read", path, "--format", fmt,
                           "--fail-on", "never"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())  # the text renderer wraps long titles
    assert "network.partial-capture" in out and "25.0%" in out
    assert "every ok below is a lower bound" in out
    oks = analyse(path)
    n_ok = sum(1 for f in oks.findings if str(f.severity) == "ok")
    lower = "(a lower bound: the capture saw 25.0% of the packets)"
    if fmt == "text":  # the verdict and the folded line of ok checks (--verbose lists each one)
        assert out.startswith("Verdict:") and out.split("Capture ")[0].count(lower) == 1
        assert re.search(rf"{n_ok} checks ok: [^(]*\(--verbose lists them\)\. {re.escape(lower)}", out)
    else:
        assert n_ok >= 2 and out.count(lower) >= n_ok
    if fmt == "json":
        doc = json.loads(proc.stdout)
        [partial] = [f for f in doc["findings"] if f["id"] == "network.partial-capture"]
        assert partial["severity"] == "warning"
        assert partial["evidence"]["kernel_drops_count"] == 699 and partial["evidence"]["packets_count"] == 233
        assert partial["evidence"]["seen_ratio"] == 0.25
        assert all(f["evidence"]["lower_bound_seen_ratio"] == 0.25 for f in doc["findings"] if f["severity"] == "ok")


def test_a_snap_length_cut_says_what_share_of_the_payload_was_captured(tmp_path) -> None:
    _info, frames = open_capture(HEALTHY)
    path = str(tmp_path / "cut.pcap")
    pcapwrite.write_pcap(path, [(ts, link, f[:80]) for ts, link, f in frames])  # 14 + 20 + 32 + 14 payload bytes
    report = analyse(path)
    [partial] = [f for f in report.findings if f.id == "network.partial-capture"]
    assert partial.evidence["kernel_drops_count"] == 0 and partial.evidence["cut_packets_count"] > 0
    assert 0 < partial.evidence["payload_seen_ratio"] < 1
    assert "snap length" in partial.title
    assert all("lower bound" in f.title for f in report.findings if str(f.severity) == "ok")


def test_a_share_short_of_everything_never_reads_100_percent() -> None:
    cov = Coverage(packets=999_999, drops=1, cut_packets=0, payload_bytes=0, cut_bytes=0)
    assert cov.partial and "99.9%" in cov.phrase()
    assert qualified((), Coverage(10, 0, 0, 100, 0)) == ()
