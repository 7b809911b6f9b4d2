"""Live capture on ``lo`` against real RabbitMQ traffic (the tests run as root), Ctrl-C, the written
file without credentials, and the doctor's network probe on a file, live, and with nothing given."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.capture, pytest.mark.rabbitmq]
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "pcaps")
AMQP = os.environ.get("CELERYDIAG_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.fixture(scope="module", autouse=True)
def rabbitmq_up() -> None:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError as exc:
        pytest.fail(f"RabbitMQ is not reachable on 127.0.0.1:5672 ({exc}); start it: bash scripts/services.sh")
    if os.geteuid() != 0:
        pytest.fail("live capture tests need root (or CAP_NET_RAW): run the suite as root")


def amqp_traffic(delay: float, seconds: float, ports: list[int]) -> threading.Thread:
    """A kombu connection with a 2 s heartbeat that publishes to its own queue and drains it."""

    def run() -> None:
        from kombu import Connection, Exchange, Queue

        time.sleep(delay)
        qname = f"celerydiag-test-live-{os.getpid()}"
        with Connection(AMQP, heartbeat=2, connect_timeout=5) as conn:
            conn.connect()
            ports.append(conn.connection.transport.sock.getsockname()[1])
            queue = Queue(qname, Exchange(""), routing_key=qname, auto_delete=True)
            with conn.Consumer(queue, callbacks=[lambda body, msg: msg.ack()]):
                producer = conn.Producer()
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    producer.publish({"x": 1}, routing_key=qname, declare=[queue])
                    try:
                        conn.drain_events(timeout=0.2)
                    except TimeoutError:
                        pass
                    conn.heartbeat_check(rate=2)
            queue(conn.channel()).delete()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def ours(doc: dict, port: int) -> dict:
    found = [c for c in doc["connections"] if c["client"].endswith(f":{port}")]
    assert found, [c["client"] for c in doc["connections"]]
    return found[0]


def test_live_capture_on_lo_sees_real_amqp_and_writes_no_credentials(tmp_path) -> None:
    written = tmp_path / "live.pcapng"
    ports: list[int] = []
    traffic = amqp_traffic(1.5, 2.5, ports)
    proc = subprocess.run([sys.executable, "-m", "celerydiag", "capture", "--iface", "lo", "--port", "5672",
                           "--duration", "6", "--write", str(written), "--format", "json", "--fail-on", "never"],
                          capture_output=True, text=True, timeout=60)
    traffic.join(timeout=10)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "celerydiag.capture/1"
    assert doc["live"]["iface"] == "lo" and isinstance(doc["live"]["kernel_drops"], int)
    conn = ours(doc, ports[0])
    assert conn["protocol"] == "amqp"
    assert conn["amqp"]["heartbeat_s"] == 2
    assert conn["amqp"]["close"] == "amqp" and conn["amqp"]["closed_by"] == "client"
    # the written file is what tshark sees: same counts (a doubled loopback packet would show as retransmissions)
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
    from tests.support import tshark

    reference = tshark.per_side(str(written), [conn])[conn["stream"]]
    assert {name: conn["tcp"][name] for name in tshark.FILTERS} == reference
    retrans = sum(conn["tcp"]["retransmission"].values())
    assert retrans * 10 < sum(conn["tcp"]["data_segments"].values())  # doubled packets: every one a retransmission
    raw = written.read_bytes()
    assert raw[:4] == b"\x0a\x0d\x0d\x0a"  # pcapng: its statistics block keeps the kernel's drop count
    assert b"\0guest\0guest" not in raw
    assert "guest" not in proc.stdout + proc.stderr


def test_ctrl_c_stops_the_capture_and_still_prints_the_analysis() -> None:
    ports: list[int] = []
    traffic = amqp_traffic(1.0, 1.5, ports)
    proc = subprocess.Popen([sys.executable, "-m", "celerydiag", "capture", "--iface", "lo", "--port", "5672",
                             "--duration", "60", "--format", "json", "--fail-on", "never"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    traffic.join(timeout=15)
    time.sleep(0.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - started < 20
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert doc["live"]["interrupted"] is True
    assert ours(doc, ports[0])["protocol"] == "amqp"


def run_probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "celerydiag", "probe", "network", "--format", "json", *args],
                          capture_output=True, text=True, timeout=120)


def test_network_probe_on_a_file_finds_the_missed_heartbeats() -> None:
    proc = run_probe("--pcap", os.path.join(FIXTURES, "amqp_missed_heartbeat.pcap"))
    assert proc.returncode == 1, proc.stderr  # critical finding, default --fail-on critical
    doc = json.loads(proc.stdout)
    found = {f["id"]: f for f in doc["findings"]}
    assert found["network.missed-heartbeats"]["severity"] == "critical"
    assert found["network.missed-heartbeats"]["evidence"]["silent_side"] == "client"
    assert [p["status"] for p in doc["probes"]] == ["ran"]


def test_network_probe_without_a_capture_says_how_to_enable_it() -> None:
    """Issue 11: with nothing to analyse the probe is skipped (a value), not an info finding."""
    proc = run_probe()
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["findings"] == []
    [network] = doc["probes"]
    assert network["status"] == "skipped"
    assert "--pcap" in network["reason"] and "--iface" in network["reason"]


def test_network_probe_live_leaves_no_temporary_capture(tmp_path) -> None:
    import glob
    import tempfile

    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "celerydiag-capture-*.pcap")))
    ports: list[int] = []
    traffic = amqp_traffic(0.5, 1.0, ports)
    proc = run_probe("--iface", "lo", "--duration", "3", "--broker", AMQP, "--backend", "redis://127.0.0.1:6379/15")
    traffic.join(timeout=10)
    assert proc.returncode in (0, 1), proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["probes"][0]["status"] == "ran", doc["probes"]
    assert "network.missed-heartbeats" in {f["id"] for f in doc["findings"]}
    after = set(glob.glob(os.path.join(tempfile.gettempdir(), "celerydiag-capture-*.pcap")))
    assert after <= before
    assert "guest:guest" not in proc.stdout  # the user name may show, the password never
