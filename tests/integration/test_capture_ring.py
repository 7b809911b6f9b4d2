"""The live capture's ring against tcpdump on the same real traffic: lo, ``any``, a veth pair in a
network namespace we create, VLAN-tagged frames on it, and kernel drops that really happen.

The load is redis-benchmark (bounded by -n and a timeout) against a private redis-server on its
own port, so every packet on that port is this test's: tcpdump's count is then deterministic, and
ours must equal it (no drops) or, with a ring too small to hold the load, what we saw plus what
the kernel says it dropped must equal it. Runs as root (the suite does).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import pytest

from celerydiag.network.capture import analyse_frames, live
from celerydiag.network.capture.analysis import Ports

pytestmark = [pytest.mark.integration, pytest.mark.capture]
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


@pytest.fixture(scope="module", autouse=True)
def tools() -> None:
    for tool in ("tcpdump", "redis-server", "redis-benchmark", "redis-cli", "ip"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is missing: bash scripts/system-packages.sh")
    if os.geteuid() != 0:
        pytest.fail("live capture tests need root (or CAP_NET_RAW): run the suite as root")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def redis_server(port: int, bind: str = "127.0.0.1", netns: str | None = None) -> Iterator[None]:
    """A private redis-server, stopped by its pid; in ``netns`` when given."""
    argv = ["redis-server", "--port", str(port), "--bind", bind, "--save", "", "--appendonly", "no",
            "--protected-mode", "no"]  # bound to loopback or to our own namespace only
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ping = ["redis-cli", "-h", bind, "-p", str(port), "ping"]
        deadline = time.monotonic() + 15
        while subprocess.run(ping, capture_output=True, text=True).stdout.strip() != "PONG":
            assert proc.poll() is None and time.monotonic() < deadline, "private redis-server did not start"
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def load(port: int, host: str = "127.0.0.1", requests: int = 2000, clients: int = 2) -> None:
    subprocess.run(["redis-benchmark", "-h", host, "-p", str(port), "-t", "ping", "-c", str(clients),
                    "-n", str(requests), "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=120, check=True)


@contextmanager
def tcpdump(iface: str, port: int, path: str) -> Iterator[dict[str, int]]:
    """tcpdump on the same traffic; on exit the dict holds what it says it captured and dropped."""
    err = path + ".err"
    with open(err, "w") as fh:
        proc = subprocess.Popen(["tcpdump", "-i", iface, "-n", "-B", "65536", "-w", path, f"tcp port {port}"],
                                stdout=subprocess.DEVNULL, stderr=fh)
    result: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 20
        while "listening on" not in open(err).read():
            assert proc.poll() is None and time.monotonic() < deadline, open(err).read()
            time.sleep(0.05)
        yield result
        time.sleep(1.0)  # let it drain its own ring before it is stopped
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    text = open(err).read()
    result["captured"] = int(re.search(r"(\d+) packets? captured", text).group(1))  # type: ignore[union-attr]
    result["dropped"] = int(re.search(r"(\d+) packets? dropped by kernel", text).group(1))  # type: ignore[union-attr]


def ours_on(doc: dict, port: int) -> int:
    return sum(c["packets"] for c in doc["connections"] if c["server"].endswith(f":{port}"))


@pytest.mark.parametrize("iface", ["lo", "any"])
def test_live_counts_equal_tcpdumps_on_the_same_load(tmp_path, iface: str) -> None:
    port = free_port()
    with redis_server(port):
        argv = [sys.executable, "-m", "celerydiag", "capture", "--iface", iface, "-p", str(port), "-d", "60",
                "--format", "json", "--fail-on", "never", "--write", str(tmp_path / "ours.pcapng")]
        with tcpdump(iface, port, str(tmp_path / "ref.pcap")) as ref:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
            try:
                _wait_capturing(proc)
                load(port)
                time.sleep(1.0)
            finally:
                proc.send_signal(signal.SIGINT)  # Ctrl-C: stop and analyse
            out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert doc["live"]["kernel_drops"] == 0 and ref["dropped"] == 0
    assert ours_on(doc, port) == ref["captured"] > 8000  # 2 x 2000 PINGs: request + reply each, + handshakes
    assert doc["file"]["link_type"] == ("linux-sll" if iface == "any" else "ethernet")
    assert "network.partial-capture" not in {f["id"] for f in doc["findings"]}
    assert not [f["title"] for f in doc["findings"] if "lower bound" in f["title"]]
    # the file we wrote holds the same packets, with the drop count (0) in its statistics block
    again = subprocess.run([sys.executable, "-m", "celerydiag", "capture", "--read", str(tmp_path / "ours.pcapng"),
                            "--format", "json", "--fail-on", "never"], capture_output=True, text=True, cwd=ROOT,
                           timeout=120)
    redoc = json.loads(again.stdout)
    assert ours_on(redoc, port) == ref["captured"] and redoc["file"]["interface_drops"] == 0
    assert redoc["file"]["format"] == "pcapng"


def _wait_capturing(proc: subprocess.Popen) -> None:
    """Until the command says it is capturing (it says so once the socket and filter are in place)."""
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "capturing on" in line, line + proc.stderr.read()


def test_a_ring_too_small_for_the_load_drops_and_says_what_share_it_saw(tmp_path) -> None:
    """Kernel drops for real: a 128 KiB ring (about 800 small packets) that is not read while the
    load runs. Seen + dropped is what tcpdump saw; the finding names the share, every ok says
    lower bound, in every format."""
    from celerydiag.findings import Severity
    from celerydiag.network.capture.render import as_report, render_text
    from celerydiag.render import OutputFormat, render

    port = free_port()
    with redis_server(port), tcpdump("lo", port, str(tmp_path / "ref.pcap")) as ref:
        with live.LiveCapture("lo", [port], duration=1.0, buffer_bytes=128 << 10) as cap:
            load(port, requests=3000)  # ~12,000 packets into a ring that holds ~800: the kernel must drop
            report = analyse_frames("lo (live)", cap.info, cap.frames(), ports=Ports(redis={port}))
    seen, drops = cap.packets, cap.kernel_drops
    assert drops is not None and drops > 0 and seen > 0
    assert seen + drops == ref["captured"] and ref["dropped"] == 0
    assert cap.ring is None  # closed on exit
    found = {f.id: f for f in report.findings}
    partial = found["network.partial-capture"]
    assert partial.severity is Severity.WARNING
    assert partial.evidence["kernel_drops_count"] == drops and partial.evidence["packets_count"] == seen
    assert partial.evidence["seen_ratio"] == pytest.approx(seen / (seen + drops), abs=1e-6)
    share = f"{seen / (seen + drops):.1%}"
    assert share in partial.title
    oks = [f for f in report.findings if f.severity is Severity.OK]
    assert oks and all("lower bound" in f.title and share in f.title for f in oks)
    import io

    texts = {}
    for fmt in (OutputFormat.MARKDOWN, OutputFormat.JUNIT):
        buf = io.StringIO()
        render(as_report(report), fmt, buf, fail_on=Severity.CRITICAL)
        texts[fmt] = buf.getvalue()
    buf = io.StringIO()
    render_text(report, buf)
    texts[OutputFormat.TEXT] = buf.getvalue()
    texts[OutputFormat.JSON] = json.dumps(report.to_dict())
    for fmt, text in texts.items():
        assert "network.partial-capture" in text and share in text, fmt
        assert text.count("lower bound") >= len(oks), fmt


NS = f"cdiag-cap-{os.getpid()}"


@pytest.fixture
def veth_pair() -> Iterator[dict[str, str]]:
    """A veth pair: one end here (10.213.7.1), the other in a namespace of ours (10.213.7.2). Removed after."""
    a, b = f"cdv{os.getpid() % 10000}a", f"cdv{os.getpid() % 10000}b"
    cmds = [
        ["ip", "netns", "add", NS],
        ["ip", "link", "add", a, "type", "veth", "peer", "name", b],
        ["ip", "link", "set", b, "netns", NS],
        ["ip", "addr", "add", "10.213.7.1/24", "dev", a], ["ip", "link", "set", a, "up"],
        ["ip", "netns", "exec", NS, "ip", "addr", "add", "10.213.7.2/24", "dev", b],
        ["ip", "netns", "exec", NS, "ip", "link", "set", b, "up"],
        ["ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up"],
    ]
    try:
        for cmd in cmds:
            subprocess.run(cmd, check=True, capture_output=True, timeout=30)
        yield {"here": a, "there": b, "mac": open(f"/sys/class/net/{a}/address").read().strip()}
    finally:
        subprocess.run(["ip", "link", "del", a], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", NS], capture_output=True, timeout=30)


def test_ethernet_on_a_veth_matches_tcpdump(tmp_path, veth_pair) -> None:
    """Real Redis traffic over a veth pair into our namespace, captured on our end."""
    port = free_port()
    iface = veth_pair["here"]
    with redis_server(port, bind="10.213.7.2", netns=NS), tcpdump(iface, port, str(tmp_path / "ref.pcap")) as ref:
        with live.LiveCapture(iface, [port], duration=60) as cap:
            load(port, host="10.213.7.2", requests=500, clients=1)
            time.sleep(0.5)
            cap._stop = True  # what Ctrl-C does
            frames = list(cap.frames())
    assert cap.kernel_drops == 0 and ref["dropped"] == 0
    doc = analyse_frames(iface, cap.info, frames, ports=Ports(redis={port})).to_dict()
    assert ours_on(doc, port) == ref["captured"] > 2000
    conns = [c for c in doc["connections"] if c["server"] == f"10.213.7.2:{port}"]
    assert conns and all(c["protocol"] == "redis" for c in conns)


def tagged_conversation(mac: str, port: int, pings: int, qinq: bool = False) -> list[bytes]:
    """A Redis client/server conversation in 802.1Q-tagged frames (VLAN 100; with ``qinq`` inside an
    802.1ad tag, VLAN 7): handshake, PINGs and PONGs with their sequence numbers right, FINs. Built
    with scapy (the kernel here has no 8021q module, so no VLAN device can make them)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

    c, s = ("10.213.9.1", 40000), ("10.213.9.2", port)
    cseq, sseq = 1000, 5000

    def frame(src: tuple, dst: tuple, flags: str, seq: int, ack: int, data: bytes = b"") -> bytes:
        eth = Ether(src="02:00:00:00:00:09", dst=mac)
        if qinq:
            eth = eth / Dot1AD(vlan=7)
        pkt = eth / Dot1Q(vlan=100) / IP(src=src[0], dst=dst[0]) / \
            TCP(sport=src[1], dport=dst[1], flags=flags, seq=seq, ack=ack, window=65535) / data
        return bytes(pkt)

    out = [frame(c, s, "S", cseq, 0), frame(s, c, "SA", sseq, cseq + 1), frame(c, s, "A", cseq + 1, sseq + 1)]
    cseq, sseq = cseq + 1, sseq + 1
    for _ in range(pings):
        out.append(frame(c, s, "PA", cseq, sseq, b"PING\r\n"))
        cseq += 6
        out.append(frame(s, c, "PA", sseq, cseq, b"+PONG\r\n"))
        sseq += 7
    out += [frame(c, s, "FA", cseq, sseq), frame(s, c, "FA", sseq, cseq + 1), frame(c, s, "A", cseq + 1, sseq + 1)]
    return out


@pytest.mark.parametrize("on", ["veth", "any", "veth-qinq"])
def test_vlan_tagged_frames_keep_their_tag_and_match_tcpdump(tmp_path, veth_pair, on: str) -> None:
    """Tagged frames arriving on an Ethernet device: the kernel moves the tag beside the frame;
    we put it back (as libpcap does: after the MAC addresses, or after the cooked header's
    address on `any`) and still decode the connection under it."""
    port = free_port()
    iface = "any" if on == "any" else veth_pair["here"]
    sent = tagged_conversation(veth_pair["mac"], port, pings=200, qinq=on.endswith("qinq"))
    sender = ("import socket, sys\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
              f"s.bind(({veth_pair['there']!r}, 0))\n"
              "for line in sys.stdin:\n    s.send(bytes.fromhex(line.strip()))\n")
    # tcpdump's own `tcp port` misses the inner tag of QinQ (so would ours without `vlan`): there the
    # reference is what was sent, byte for byte
    reference = tcpdump(iface, port, str(tmp_path / "ref.pcap")) if on != "veth-qinq" else nullcontext({})
    with reference as ref:
        with live.LiveCapture(iface, [port], duration=60) as cap:
            subprocess.run(["ip", "netns", "exec", NS, sys.executable, "-c", sender], check=True, timeout=60,
                           input="\n".join(f.hex() for f in sent), text=True)
            time.sleep(0.5)
            cap._stop = True
            frames = list(cap.frames())
    assert cap.kernel_drops == 0 and ref.get("dropped", 0) == 0
    assert len(frames) == ref.get("captured", len(sent)) == len(sent)
    if on != "any":
        assert [f for _ts, _link, f in frames] == sent  # byte for byte: the tag back where it was
    else:  # Linux cooked: the tag after the 14-byte address part, the frame's own bytes after the MACs
        assert [(f[14:18], f[20:]) for _ts, _link, f in frames] == [(s[12:16], s[18:]) for s in sent]
    doc = analyse_frames(iface, cap.info, frames, ports=Ports(redis={port})).to_dict()
    [conn] = doc["connections"]
    assert conn["client"] == "10.213.9.1:40000" and conn["protocol"] == "redis"
    assert conn["redis"]["commands"]["PING"]["samples"] == 200
    assert sum(conn["tcp"]["retransmission"].values()) == 0
