"""tshark as the reference: per-stream, per-direction counts of each tcp.analysis flag.

Used by the capture fixtures (to write their expected ``.yml``) and by the tests (to recompute the
counts on every run, so the reference is tshark itself and not a number we once wrote down).
"""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict

FLAGS = ("zero_window", "window_full", "retransmission", "fast_retransmission", "spurious_retransmission",
         "duplicate_ack", "keep_alive", "zero_window_probe", "window_update", "lost_segment", "out_of_order")
FILTERS = {name: f"tcp.analysis.{name}" for name in FLAGS}
FILTERS["reset"] = "tcp.flags.reset == 1"


def tshark() -> str:
    path = shutil.which("tshark")
    if not path:
        raise AssertionError("tshark is not installed: run `bash scripts/system-packages.sh` (apt-get install tshark)")
    return path


def _endpoint(ip4: str, ip6: str, port: str) -> str:
    return f"{ip4}:{port}" if ip4 else f"[{ip6}]:{port}"


def counts(path: str) -> dict[int, dict[str, dict[str, int]]]:
    """{stream: {flag: {"ip:port" of the sender: count}}} for every flag in FILTERS."""
    out: dict[int, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    for name, display in FILTERS.items():
        proc = subprocess.run(
            [tshark(), "-2", "-n", "-r", path, "-Y", display, "-T", "fields", "-e", "tcp.stream", "-e", "ip.src",
             "-e", "ipv6.src", "-e", "tcp.srcport"],
            capture_output=True, text=True, timeout=120, check=True)
        for line in proc.stdout.splitlines():
            stream, ip4, ip6, port = (line.split("\t") + ["", "", "", ""])[:4]
            out[int(stream)][name][_endpoint(ip4, ip6, port)] += 1
    return out


def per_side(path: str, connections: list[dict]) -> dict[int, dict[str, dict[str, int]]]:
    """tshark's counts keyed like ours: {stream: {flag: {"client": n, "server": n}}}."""
    raw = counts(path)
    result = {}
    for c in connections:
        flags = raw.get(c["stream"], {})
        result[c["stream"]] = {name: {"client": flags.get(name, {}).get(c["client"], 0),
                                      "server": flags.get(name, {}).get(c["server"], 0)} for name in FILTERS}
    return result


def expert_summary(path: str) -> str:
    proc = subprocess.run([tshark(), "-2", "-n", "-q", "-r", path, "-z", "expert"], capture_output=True, text=True,
                          timeout=600, check=True)
    return proc.stdout
