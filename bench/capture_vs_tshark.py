"""capture --read vs ``tshark -2 -q -z expert`` on one large real capture: speed, counts, memory.

1. Makes (not committed) a real capture of AMQP traffic against the local RabbitMQ: py-amqp
   publishers and a consumer on loopback, tcpdump with a 128-byte snaplen, until >= 300k packets.
2. Times ``celerydiag capture --read FILE --format json`` and ``tshark -2 -q -z expert -r FILE``
   in paired runs (one of each, alternating, --repeat pairs: a shared machine's load hits both
   alike), prints the median of the per-pair ratios of wall time (and of CPU time) against the
   goal (>= 3x), and whether the counts agree (tshark's expert totals vs our per-connection sums)
   on this file and on every fixture in fixtures/pcaps.
   The tree is timed as it stands: pure Python, or compiled where ``make native`` was run (it says
   which). With ``--native`` it also times a copy with the same modules compiled with mypyc (no
   source change; the output must be identical): what ``make native`` buys.
3. Builds 100k- and 1M-packet files by replaying the capture's records (each replay on new ports,
   so they are new connections) and reports celerydiag's peak RSS on each: memory stays flat when
   the analysis streams.

Run as root: ``.venv/bin/python bench/capture_vs_tshark.py [--packets 300000] [--keep DIR] [--reuse FILE] [--native]``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import resource
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from celerydiag.network.capture.native import HOT_MODULES, native_modules  # noqa: E402

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


GOAL = 3.0


def run_once(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(wall s, CPU s of the child, stdout) of one run. ``python -m`` puts its working directory first
    on sys.path: it runs in the PYTHONPATH it is given, so that copy of the package is the one timed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    cwd = (env or {}).get("PYTHONPATH") or None
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env, cwd=cwd)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{cmd[0]} failed: {proc.stderr.strip()[:300]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def paired(ours: list[str], theirs: list[str], pairs: int, env: dict[str, str] | None = None) -> dict:
    """Alternating runs; per-pair ratios (theirs / ours) of wall and CPU time."""
    rows = []
    for i in range(pairs):
        order = [(ours, env), (theirs, None)] if i % 2 == 0 else [(theirs, None), (ours, env)]
        got = {}
        for cmd, e in order:
            got[cmd is ours] = run_once(cmd, e)
        rows.append((got[True], got[False]))
    return {
        "ours_wall": [r[0][0] for r in rows], "theirs_wall": [r[1][0] for r in rows],
        "ours_cpu": [r[0][1] for r in rows], "theirs_cpu": [r[1][1] for r in rows],
        "wall_ratio": statistics.median(r[1][0] / r[0][0] for r in rows),
        "cpu_ratio": statistics.median(r[1][1] / r[0][1] for r in rows),
        "ours_out": rows[0][0][2], "theirs_out": rows[0][1][2],
    }


def build_native(work: str) -> str:
    """A copy of the package built by ``make native`` (scripts/build_native.py: the hot modules
    compiled with mypyc, with the project's mypy settings); returns its PYTHONPATH."""
    dest = os.path.join(work, "native")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(os.path.join(ROOT, "celerydiag"), os.path.join(dest, "celerydiag"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    os.makedirs(os.path.join(dest, "scripts"))
    shutil.copy(os.path.join(ROOT, "scripts", "build_native.py"), os.path.join(dest, "scripts"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), dest)
    proc = subprocess.run([PY, os.path.join("scripts", "build_native.py")], cwd=dest, capture_output=True,
                          text=True, timeout=1800, env={**os.environ, "PYTHONPATH": dest})
    if proc.returncode:
        raise SystemExit(f"mypyc failed: {proc.stdout[-500:]}{proc.stderr[-500:]}")
    return dest


def fixture_counts() -> list[tuple[str, bool, dict, dict]]:
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "fixtures", "pcaps", "*.pcap*"))):
        _w, _c, ours = run_once([PY, "-m", "celerydiag", "capture", "--read", path, "--format", "json",
                                 "--fail-on", "never"])
        _w, _c, theirs = run_once(["tshark", "-2", "-n", "-q", "-r", path, "-z", "expert"])
        mine, ref = our_counts(json.loads(ours)), expert_counts(theirs)
        out.append((os.path.basename(path), mine == ref, mine, ref))
    return out


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


def _sec(values: list[float]) -> str:
    return f"median {statistics.median(values):6.2f} s (min {min(values):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=300_000)
    ap.add_argument("--seconds", type=float, default=120.0, help="upper bound on traffic generation")
    ap.add_argument("--repeat", type=int, default=5, help="paired runs")
    ap.add_argument("--native", action="store_true", help="also time the hot modules compiled with mypyc")
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
        ours_cmd = [PY, "-m", "celerydiag", "capture", "--read", big, "--format", "json", "--fail-on", "never"]
        tshark_cmd = ["tshark", "-2", "-n", "-q", "-r", big, "-z", "expert"]
        print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs; shared machines are noisy)")
        res = paired(ours_cmd, tshark_cmd, args.repeat, env={**os.environ, "PYTHONPATH": ROOT})
        print(f"paired runs: {args.repeat}")
        built = native_modules()
        print("celerydiag as this tree stands: " + (f"compiled by `make native` ({', '.join(built)})" if built
                                                   else "pure Python (`make native` compiles the hot path)"))
        print(f"celerydiag capture --read : wall {_sec(res['ours_wall'])}  cpu {_sec(res['ours_cpu'])}  "
              f"{n / statistics.median(res['ours_wall']):10,.0f} packets/s")
        print(f"tshark -2 -q -z expert    : wall {_sec(res['theirs_wall'])}  cpu {_sec(res['theirs_cpu'])}  "
              f"{n / statistics.median(res['theirs_wall']):10,.0f} packets/s")
        print(f"speedup over tshark (median of pairs): wall {res['wall_ratio']:.2f}x, cpu {res['cpu_ratio']:.2f}x"
              f"  (goal >= {GOAL:g}x: {'met' if res['wall_ratio'] >= GOAL else 'NOT met'})")
        ours = our_counts(json.loads(res["ours_out"]))
        theirs = expert_counts(res["theirs_out"])
        same = ours == theirs
        print(f"counts match tshark's expert totals: {'yes' if same else 'NO'}")
        for name in ours:
            mark = "" if ours[name] == theirs[name] else "   <-- differs"
            print(f"  {name:24} celerydiag {ours[name]:8}  tshark {theirs[name]:8}{mark}")
        for name, ok, mine, ref in fixture_counts():
            diff = {k: (mine[k], ref[k]) for k in mine if mine[k] != ref[k]}
            print(f"fixture {name:28} counts {'identical to tshark' if ok else f'DIFFER {diff}'}")
        if args.native:
            native = build_native(work)
            nres = paired(ours_cmd, tshark_cmd, args.repeat, env={**os.environ, "PYTHONPATH": native})
            same_out = json.loads(nres["ours_out"]) == json.loads(res["ours_out"])
            print(f"mypyc-compiled {', '.join(HOT_MODULES)}: wall {_sec(nres['ours_wall'])}, speedup over tshark "
                  f"wall {nres['wall_ratio']:.2f}x, cpu {nres['cpu_ratio']:.2f}x; output identical to pure "
                  f"Python: {'yes' if same_out else 'NO'}")
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
