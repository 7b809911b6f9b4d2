#!/usr/bin/env python3
"""Does `celerydiag watch` grow in memory over time? Run it at a short interval and print RSS.

Starts the real console script (`celerydiag watch --format json --prometheus 127.0.0.1:PORT`) in
a subprocess, as a user would, scrapes its /metrics the way Prometheus does, and every
--sample-every seconds prints its RSS (psutil) next to the number of intervals it has run. At the
end: the RSS after warm-up (the reference, measured in the same run), the last RSS, and the
least-squares slope after warm-up in KiB per 1000 intervals, extrapolated to a day at the default
10 s interval (8640 intervals).

    .venv/bin/python bench/watch_memory.py                              # embedded default, 3 min
    .venv/bin/python bench/watch_memory.py --minutes 5 --interval 0.5
    .venv/bin/python bench/watch_memory.py --broker amqp://guest:guest@127.0.0.1:5672// \\
        --backend redis://127.0.0.1:6379/15

Exit status: 0 when watch ran to the end and answered every scrape, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

SCRIPT = Path(sys.executable).with_name("celerydiag")
CLI = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "celerydiag"]
WARMUP_SHARE = 0.2  # of the run: imports, first connections, allocator arenas settling
DAY_INTERVALS = 8640  # a day at the default --interval 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def main() -> int:
    import psutil

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--interval", type=float, default=0.5, help="watch --interval (s)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between RSS readings")
    parser.add_argument("--broker")
    parser.add_argument("--backend")
    args = parser.parse_args()

    port = free_port()
    argv = [*CLI, "watch", "--interval", str(args.interval), "--format", "json", "--prometheus", f"127.0.0.1:{port}"]
    for flag, value in (("--broker", args.broker), ("--backend", args.backend)):
        if value:
            argv += [flag, value]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rounds = [0]
    failed = [0]

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            doc = json.loads(line)
            rounds[0] = doc["round"]
            failed[0] += doc["canary"] != "ok"

    threading.Thread(target=read, daemon=True).start()
    threading.Thread(target=lambda: proc.stderr and proc.stderr.read(), daemon=True).start()
    ps = psutil.Process(proc.pid)
    points: list[tuple[float, float, float]] = []  # (elapsed s, intervals, RSS MiB)
    scrapes_failed = 0
    start = time.monotonic()
    end = start + args.minutes * 60
    print(f"celerydiag watch --interval {args.interval:g} for {args.minutes:g} min, RSS every "
          f"{args.sample_every:g} s ({' '.join(argv[len(CLI):])})")
    print(f"{'elapsed_s':>9} {'intervals':>9} {'rss_mib':>8} {'canary_not_ok':>13}")
    try:
        while time.monotonic() < end and proc.poll() is None:
            time.sleep(min(args.sample_every, max(0.0, end - time.monotonic())))
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    r.read()
            except OSError:
                scrapes_failed += 1
            if proc.poll() is not None:
                break
            rss = ps.memory_info().rss / 2**20
            points.append((time.monotonic() - start, float(rounds[0]), rss))
            print(f"{points[-1][0]:9.0f} {rounds[0]:9d} {rss:8.1f} {failed[0]:13d}", flush=True)
    finally:
        alive = proc.poll() is None
        if alive:
            proc.terminate()
            proc.wait(30)
    after = [p for p in points if p[0] >= WARMUP_SHARE * args.minutes * 60]
    if len(after) < 3:
        print("too few readings after warm-up: run longer", file=sys.stderr)
        return 1
    kib_per_1000 = slope([(p[1], p[2]) for p in after]) * 1024 * 1000
    print(f"reference: RSS after warm-up {after[0][2]:.1f} MiB at interval {after[0][1]:.0f}; "
          f"last {after[-1][2]:.1f} MiB at interval {after[-1][1]:.0f}")
    per_day_mib = kib_per_1000 * DAY_INTERVALS / 1000 / 1024
    print(f"slope after warm-up: {kib_per_1000:+.1f} KiB per 1000 intervals "
          f"(x {DAY_INTERVALS / 1000:.2f} = {per_day_mib:+.2f} MiB per day at --interval 10)")
    print(f"scrapes failed: {scrapes_failed}; intervals whose canary was not ok: {failed[0]}; "
          f"exit {'on time (SIGTERM)' if alive else f'EARLY, code {proc.returncode}'}")
    return 0 if alive and not scrapes_failed else 1


if __name__ == "__main__":
    sys.exit(main())
