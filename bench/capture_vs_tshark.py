"""capture --read vs ``tshark -2 -q -z expert`` on one large real capture: speed, counts, memory.

1. Makes (not committed) a real capture of AMQP traffic against the local RabbitMQ: py-amqp
   publishers and a consumer on loopback, tcpdump with a 128-byte snaplen, until >= 300k packets.
2. Times ``celerydiag capture --read FILE --format json`` and ``tshark -2 -q -z expert -r FILE``
   in the same run (same file, same machine, best of --repeat runs each), prints packets/s for both
   and the ratio, and whether the counts agree (tshark's expert totals vs our per-connection sums).
3. Builds 100k- and 1M-packet files by replaying the capture's records (each replay on new ports,
   so they are new connections) and reports celerydiag's peak RSS on each: memory stays flat when
   the analysis streams.

Run as root: ``.venv/bin/python bench/capture_vs_tshark.py [--packets 300000] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PY = sys.executable
AMQP_HOST = "127.0.0.1"

EXPERT = [  # (our tcp flag, regex on tshark's expert summary)
    ("retransmission", r"\(suspected\) retransmission"),
    ("fast_retransmission", r"\(suspected\) fast retransmission"),
    ("spurious_retransmission", r"\(suspected\) spurious retransmission"),
    ("out_of_order", r"\(suspected\) out-of-order"),
    ("duplicate_ack", r"^Duplicate ACK"),
    ("zero_window", r"^TCP Zero ?Window segment|^TCP Zero Window$|zero window(?! probe)"),
    ("window_full", r"completely full"),
    ("keep_alive", r"^TCP keep-alive segment"),
    ("reset", r"Connection reset \(RST\)"),
    ("window_update", r"window update"),
    ("lost_segment", r"^Previous segment"),
    ("zero_window_probe", r"Zero ?Window Probe$"),
]


def make_capture(path: str, packets: int, seconds: float) -> None:
    """Real AMQP traffic on loopback until the capture holds ``packets`` packets (or ``seconds``)."""
    import amqp

    proc = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "--immediate-mode", "-B", "65536", "-s", "128", "-n",
                             "-w", path, "tcp port 5672"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    stop = threading.Event()
    queue = f"celerydiag-bench-{os.getpid()}"
    consumer = amqp.Connection(AMQP_HOST, userid="guest", password="guest", heartbeat=10)
    consumer.connect()
    cch = consumer.channel()
    cch.queue_declare(queue, auto_delete=True)
    cch.basic_consume(queue, no_ack=True, callback=lambda m: None)

    def drain() -> None:
        while not stop.is_set():
            try:
                consumer.drain_events(timeout=0.2)
            except Exception:  # noqa: BLE001 - socket timeout between bursts
                pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()

    def publish(n_conn: int) -> None:
        conn = amqp.Connection(AMQP_HOST, userid="guest", password="guest", heartbeat=10)
        conn.connect()
        ch = conn.channel()
        body = amqp.Message(b"x" * 60)
        while not stop.is_set():
            for _ in range(200):
                ch.basic_publish(body, exchange="", routing_key=queue)
            time.sleep(0.001)
        conn.close()

    pubs = [threading.Thread(target=publish, args=(i,), daemon=True) for i in range(2)]
    for t in pubs:
        t.start()
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            time.sleep(0.5)
            if os.path.getsize(path) > packets * 150:  # ~128-byte records + header: enough packets
                break
    finally:
        stop.set()
        for t in pubs:
            t.join(timeout=10)
        reader.join(timeout=5)
        try:
            consumer.close()
        except Exception:  # noqa: BLE001
            pass
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def read_records(path: str):
    with open(path, "rb") as fh:
        head = fh.read(24)
        assert head[:4] == b"\xd4\xc3\xb2\xa1", "bench expects a little-endian microsecond pcap (tcpdump's)"
        data = fh.read()
    out = []
    pos = 0
    while pos + 16 <= len(data):
        _s, _u, incl, _o = struct.unpack_from("<IIII", data, pos)
        if pos + 16 + incl > len(data):
            break
        out.append(data[pos:pos + 16 + incl])
        pos += 16 + incl
    return head, out


def replay(src: str, dst: str, packets: int) -> None:
    """``packets`` records: the capture repeated, each copy shifted in time and onto new client ports."""
    head, records = read_records(src)
    first = struct.unpack_from("<I", records[0], 0)[0]
    last = struct.unpack_from("<I", records[-1], 0)[0]
    span = last - first + 2
    written = 0
    with open(dst, "wb") as out:
        out.write(head)
        copy = 0
        while written < packets:
            for rec in records:
                if written >= packets:
                    break
                rec = bytearray(rec)
                struct.pack_into("<I", rec, 0, struct.unpack_from("<I", rec, 0)[0] + copy * span)
                tcp = 16 + 14 + (rec[16 + 14] & 0x0F) * 4  # pcap record + Ethernet + IPv4 header
                for off in (tcp, tcp + 2):  # move the client port (the one that is not 5672)
                    port = struct.unpack_from("!H", rec, off)[0]
                    if port != 5672:
                        struct.pack_into("!H", rec, off, 1024 + (port + copy * 7919) % 64000)
                out.write(rec)
                written += 1
            copy += 1


def timed(cmd: list[str], repeat: int) -> tuple[float, str]:
    best, out = float("inf"), ""
    for _ in range(repeat):
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        elapsed = time.perf_counter() - t
        if proc.returncode not in (0, 1):
            raise SystemExit(f"{cmd[0]} failed: {proc.stderr.strip()[:300]}")
        if elapsed < best:
            best, out = elapsed, proc.stdout
    return best, out


def expert_counts(text: str) -> dict[str, int]:
    counts = dict.fromkeys((name for name, _ in EXPERT), 0)
    for line in text.splitlines():
        m = re.match(r"\s+(\d+)\s+\S+\s+TCP\s+(.*)$", line)
        if not m:
            continue
        n, summary = int(m.group(1)), m.group(2).strip()
        for name, pattern in EXPERT:
            if re.search(pattern, summary, re.IGNORECASE):
                counts[name] += n
                break
    return counts


def our_counts(doc: dict) -> dict[str, int]:
    return {name: sum(c["tcp"][name]["client"] + c["tcp"][name]["server"] for c in doc["connections"])
            for name, _ in EXPERT}


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """Peak RSS (MB) and wall time of ``cmd`` in a fresh process (GNU time's %M: measured after exec,
    so the benchmark's own memory is not counted, as a fork's ru_maxrss would)."""
    if not shutil.which("time") and not os.path.exists("/usr/bin/time"):
        raise SystemExit("needs GNU time (/usr/bin/time) to measure peak RSS")
    t = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, timeout=3600)
    wall = time.perf_counter() - t
    return int(proc.stderr.strip().splitlines()[-1]) / 1024.0, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=300_000)
    ap.add_argument("--seconds", type=float, default=120.0, help="upper bound on traffic generation")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", metavar="DIR", help="keep the generated captures here")
    ap.add_argument("--reuse", metavar="FILE", help="use this capture (e.g. from --keep) instead of making one")
    args = ap.parse_args()
    if not shutil.which("tshark") or not shutil.which("tcpdump"):
        raise SystemExit("needs tshark and tcpdump: bash scripts/system-packages.sh")
    work = args.keep or tempfile.mkdtemp(prefix="celerydiag-bench-")
    os.makedirs(work, exist_ok=True)
    try:
        big = args.reuse or os.path.join(work, "amqp-real.pcap")
        if not args.reuse:
            print(f"generating >= {args.packets} packets of real AMQP traffic on lo ...", file=sys.stderr)
            make_capture(big, args.packets, args.seconds)
        _head, records = read_records(big)
        n = len(records)
        del records
        print(f"capture: {big}: {n} packets, {os.path.getsize(big) / 1e6:.1f} MB")
        ours_s, ours_out = timed([PY, "-m", "celerydiag", "capture", "--read", big, "--format", "json",
                                  "--fail-on", "never"], args.repeat)
        tshark_s, tshark_out = timed(["tshark", "-2", "-n", "-q", "-r", big, "-z", "expert"], args.repeat)
        ours = our_counts(json.loads(ours_out))
        theirs = expert_counts(tshark_out)
        print(f"celerydiag capture --read : {ours_s:7.2f} s  {n / ours_s:10,.0f} packets/s")
        print(f"tshark -2 -q -z expert    : {tshark_s:7.2f} s  {n / tshark_s:10,.0f} packets/s")
        print(f"ratio (celerydiag / tshark packets/s): {tshark_s / ours_s:.2f}x  (goal >= 2x)")
        same = ours == theirs
        print(f"counts match tshark's expert totals: {'yes' if same else 'NO'}")
        for name in ours:
            mark = "" if ours[name] == theirs[name] else "   <-- differs"
            print(f"  {name:24} celerydiag {ours[name]:8}  tshark {theirs[name]:8}{mark}")
        for target in (100_000, 1_000_000):
            path = os.path.join(work, f"replay-{target}.pcap")
            replay(big, path, target)
            rss, wall = peak_rss_mb([PY, "-m", "celerydiag", "capture", "--read", path, "--format", "json",
                                     "--fail-on", "never", "-o", os.devnull])
            t_rss, t_wall = peak_rss_mb(["tshark", "-2", "-n", "-q", "-r", path, "-z", "expert"])
            print(f"peak RSS, {target:>9,} packets: celerydiag {rss:7.1f} MB ({target / wall:9,.0f} packets/s), "
                  f"tshark {t_rss:7.1f} MB ({target / t_wall:9,.0f} packets/s)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
