"""`celerydiag capture --read`: the celerydiag.capture/1 contract (design.md keys all present), exit
codes by --fail-on, every format renders, --write blanks credentials, usage errors exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "pcaps")
MISSED = os.path.join(FIXTURES, "amqp_missed_heartbeat.pcap")
HEALTHY = os.path.join(FIXTURES, "amqp_healthy.pcap")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "celerydiag", "capture", *args], capture_output=True, text=True,
                          timeout=120)


def test_json_has_every_documented_key() -> None:
    proc = cli("--read", MISSED, "--format", "json")
    assert proc.returncode == 1  # a critical finding, --fail-on critical by default
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "celerydiag.capture/1"
    assert {"packets", "link_type", "format", "truncated"} <= set(doc["file"])
    assert doc["file"]["format"] == "pcap" and doc["file"]["truncated"] is False
    conn = doc["connections"][0]
    assert {"client", "server", "protocol", "packets", "tcp", "amqp"} <= set(conn)
    for key in ("zero_window", "window_full", "retransmission", "fast_retransmission", "duplicate_ack", "reset",
                "rtt_ms"):
        assert {"client", "server"} <= set(conn["tcp"][key]), key
    assert {"heartbeat_s", "heartbeat_frames", "max_silence_s", "missed_heartbeats", "closed_by", "close"} <= set(
        conn["amqp"])
    assert conn["amqp"]["close"] in ("amqp", "fin", "rst", "open")
    finding = doc["findings"][0]
    assert {"id", "cause", "severity", "title", "detail", "impact_ms", "evidence", "fix"} <= set(finding)
    assert finding["id"] == "network.missed-heartbeats" and finding["cause"] == "network"


@pytest.mark.parametrize("fail_on,code", [("never", 0), ("critical", 1), ("warning", 1)])
def test_exit_codes_follow_fail_on(fail_on: str, code: int) -> None:
    assert cli("--read", MISSED, "--format", "json", "--fail-on", fail_on).returncode == code


def test_healthy_capture_exits_0() -> None:
    proc = cli("--read", HEALTHY)
    assert proc.returncode == 0, proc.stderr
    assert "Connections" in proc.stdout and "Timeline" in proc.stdout


@pytest.mark.parametrize("fmt", ["text", "markdown", "junit"])
def test_every_format_renders_the_finding(fmt: str) -> None:
    proc = cli("--read", MISSED, "--format", fmt, "--fail-on", "never")
    assert proc.returncode == 0, proc.stderr
    assert "network.missed-heartbeats" in proc.stdout
    assert "\0guest" not in proc.stdout and "guest:guest" not in proc.stdout


def test_write_from_read_blanks_credentials(tmp_path) -> None:
    out = tmp_path / "copy.pcap"
    proc = cli("--read", MISSED, "--write", str(out), "--format", "json", "--fail-on", "never")
    assert proc.returncode == 0, proc.stderr
    assert b"\0guest\0guest" not in out.read_bytes()
    again = cli("--read", str(out), "--format", "json", "--fail-on", "never")
    assert json.loads(again.stdout)["connections"][0]["amqp"]["missed_heartbeats"] is True


def test_read_or_iface_exactly_one() -> None:
    for args in ((), ("--read", MISSED, "--iface", "lo")):
        proc = cli(*args)
        assert proc.returncode == 2
        assert "exactly one of --read FILE or --iface IFACE" in proc.stderr


def test_missing_file_exit_2() -> None:
    proc = cli("--read", "/nonexistent/x.pcap")
    assert proc.returncode == 2 and "no such file" in proc.stderr and "Traceback" not in proc.stderr


def test_write_onto_the_file_being_read_is_refused(tmp_path) -> None:
    import shutil

    copy = tmp_path / "cap.pcap"
    shutil.copyfile(HEALTHY, copy)
    before = copy.read_bytes()
    done = cli("--read", str(copy), "--write", str(copy))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert copy.read_bytes() == before  # the user's capture is intact


def test_pcapng_packet_before_any_interface_block_is_bad_input(tmp_path) -> None:
    import struct

    shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
    epb = struct.pack("<IIIIIII", 6, 32, 0, 0, 0, 0, 0) + struct.pack("<I", 32)
    path = tmp_path / "bad.pcapng"
    path.write_bytes(shb + epb)
    done = cli("--read", str(path))
    assert done.returncode == 2, done.stderr
    assert "interface" in done.stderr and "Traceback" not in done.stderr
