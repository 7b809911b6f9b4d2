"""celerydiag capture --iface lo vs tcpdump on the same generated Redis load: packets, drops, ratio.

For each load level (redis-benchmark -t ping -c C -n N against a private redis-server on its own
loopback port, so the traffic counted is ours alone), tcpdump and ``celerydiag capture`` are
started on ``lo``, both announce they are listening, the load runs (bounded: -n requests and a
timeout), then both are stopped with SIGINT. Printed per level: packets on the load's port as
tcpdump wrote them and as celerydiag analysed them, each one's kernel drops, the ratio
celerydiag/tcpdump against the goal (>= 0.98 with 0 drops), the load's rate and the host's load
average (the machine may be shared: run it more than once).

Run as root: ``.venv/bin/python bench/live_vs_tcpdump.py [--levels 1,4,8] [--requests 150000] [--repeat 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
GOAL_RATIO = 0.98


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(proc: subprocess.Popen, stream: str, pattern: str, timeout: float, log: str) -> None:
    """Until ``pattern`` appears in the log file the process writes its stderr to."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log) as fh:
            if re.search(pattern, fh.read()):
                return
        if proc.poll() is not None:
            raise SystemExit(f"{stream} exited early: {open(log).read()[-500:]}")
        time.sleep(0.05)
    raise SystemExit(f"{stream} did not start within {timeout:.0f} s")


def start_redis(port: int, work: str) -> subprocess.Popen:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", work], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the private redis-server did not start")


def one_run(port: int, clients: int, requests: int, work: str, buffer_mib: float) -> dict:
    pcap = os.path.join(work, "tcpdump.pcap")
    tlog, clog = os.path.join(work, "tcpdump.err"), os.path.join(work, "celerydiag.err")
    report = os.path.join(work, "celerydiag.json")
    with open(tlog, "w") as terr, open(clog, "w") as cerr:
        tcpdump = subprocess.Popen(["tcpdump", "-i", "lo", "-n", "-w", pcap, f"tcp port {port}"],
                                   stdout=subprocess.DEVNULL, stderr=terr)
        ours = subprocess.Popen([PY, "-m", "celerydiag", "capture", "--iface", "lo", "-p", str(port), "-d", "120",
                                 "--buffer-mib", str(buffer_mib), "--format", "json", "--fail-on", "never",
                                 "-o", report], stdout=subprocess.DEVNULL, stderr=cerr, cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": ROOT})
        try:
            wait_for(tcpdump, "tcpdump", r"listening on", 20, tlog)
            wait_for(ours, "celerydiag", r"capturing on", 30, clog)
            load1 = os.getloadavg()[0]
            t = time.perf_counter()
            subprocess.run(["redis-benchmark", "-p", str(port), "-t", "ping", "-c", str(clients), "-n", str(requests),
                            "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, check=True)
            load_s = time.perf_counter() - t
            time.sleep(2.0)  # the last ACKs, and time for both to drain their rings before SIGINT
        finally:
            for proc in (tcpdump, ours):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            tcpdump.wait(timeout=60)
            ours.wait(timeout=600)  # it analyses what it captured before it exits
    terr_text = open(tlog).read()
    m_cap = re.search(r"(\d+) packets captured", terr_text)
    m_drop = re.search(r"(\d+) packets dropped by kernel", terr_text)
    doc = json.load(open(report))
    mine = sum(c["packets"] for c in doc["connections"] if c["server"].endswith(f":{port}"))
    return {"clients": clients, "requests": requests, "load_s": load_s, "loadavg": load1,
            "tcpdump": int(m_cap.group(1)) if m_cap else -1, "tcpdump_drops": int(m_drop.group(1)) if m_drop else -1,
            "ours": mine, "ours_drops": doc["live"]["kernel_drops"],
            "partial": any(f["id"] == "network.partial-capture" for f in doc["findings"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="1,4,8", help="redis-benchmark -c values, one run each")
    ap.add_argument("--requests", type=int, default=150_000,
                    help="redis-benchmark -n (each of PING_INLINE, PING_MBULK)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--buffer-mib", type=float, default=64.0, help="celerydiag capture --buffer-mib")
    args = ap.parse_args()
    for tool in ("tcpdump", "redis-server", "redis-benchmark"):
        if not shutil.which(tool):
            raise SystemExit(f"needs {tool}: bash scripts/system-packages.sh")
    if os.geteuid() != 0:
        raise SystemExit("live capture needs root")
    work = tempfile.mkdtemp(prefix="celerydiag-live-bench-")
    port = free_port()
    redis = start_redis(port, work)
    print(f"private redis-server on 127.0.0.1:{port}; {os.cpu_count()} CPUs; goal: ratio >= {GOAL_RATIO} and 0 drops")
    print(f"{'-c':>3} {'-n':>8} {'req/s':>8} {'load1':>6} {'tcpdump':>9} {'drops':>7} {'celerydiag':>10} "
          f"{'drops':>8} {'ratio':>6}  verdict")
    try:
        for _ in range(args.repeat):
            for clients in (int(c) for c in args.levels.split(",")):
                r = one_run(port, clients, args.requests, work, args.buffer_mib)
                ratio = r["ours"] / r["tcpdump"] if r["tcpdump"] > 0 else 0.0
                ok = ratio >= GOAL_RATIO and r["ours_drops"] == 0
                rate = 2 * r["requests"] / r["load_s"]
                print(f"{clients:>3} {r['requests']:>8} {rate:>8,.0f} {r['loadavg']:>6.2f} {r['tcpdump']:>9,} "
                      f"{r['tcpdump_drops']:>7,} {r['ours']:>10,} {r['ours_drops']:>8,} {ratio:>6.3f}  "
                      f"{'meets the goal' if ok else 'BELOW the goal'}"
                      f"{'' if r['partial'] == bool(r['ours_drops']) else '  (partial-capture finding MISSING)'}",
                      flush=True)
    finally:
        redis.terminate()
        redis.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
