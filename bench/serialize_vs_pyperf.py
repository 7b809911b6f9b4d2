"""Do our serializer timings agree with pyperf's? Run: .venv/bin/python bench/serialize_vs_pyperf.py

Times the same kombu encodes (the calls Celery makes for update_state) with celerydiag's harness
and with pyperf (``pyperf.Runner.bench_func``) in one run: 5 rounds, each one fresh process of our
harness then a few pyperf worker processes, case by case (pyperf's runs appended to one file), so
load from other programs hits both alike. Prints both medians, their ratio and our spread over the 5 runs, and
exits 1 when a median differs from pyperf's by more than 10 %. Needs the bench extra (pyperf).

The cases avoid multi-megabyte outputs on purpose: their cost depends on the allocator's state
(glibc raises its mmap threshold after the first large free), which differs between a fresh
pyperf worker and a long-lived process, and that is not what this benchmark is checking.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CASES = (  # (payload kind, serializer)
    ("progress-meta", "json"),
    ("floats-10k", "json"),
    ("floats-10k", "pickle"),
    ("dataframe-columns", "msgpack"),
)
TOLERANCE = 0.10
REPEATS = 5

WORKER = """
import sys
sys.path.insert(0, {root!r})
import pyperf
from celerydiag.serialization.harness import codec, standard_payload

runner = pyperf.Runner()
kind, name = {case!r}
stored = standard_payload(kind).stored
encode, _ = codec(name)
runner.bench_func(kind + "/" + name, encode, stored)
"""


def run_pyperf(out: str, case: tuple[str, str], processes: int) -> None:
    """One pyperf invocation for one case (its own calibration and worker processes), appended
    to ``out``."""
    script = out + ".worker.py"
    with open(script, "w", encoding="utf-8") as stream:
        stream.write(WORKER.format(root=ROOT, case=case))
    subprocess.run([sys.executable, script, "--quiet", "--append", out, "-p", str(processes)],
                   check=True, timeout=600, stdout=subprocess.DEVNULL)


def run_ours(case: tuple[str, str]) -> float:
    """One run of our harness on one case in a fresh process, as pyperf's workers are (a
    long-lived process has another allocator state; see the docstring): median ms per call."""
    proc = subprocess.run([sys.executable, __file__, "--ours-worker", *case], check=True, timeout=600,
                          capture_output=True, text=True)
    return float(proc.stdout)


def ours_worker(kind: str, name: str) -> int:
    from celerydiag.serialization.harness import HarnessConfig, codec, measure, standard_payload

    stored = standard_payload(kind).stored
    encode, _ = codec(name)
    print(measure(lambda: encode(stored), HarnessConfig()).median_ms)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=3,
                        help="pyperf worker processes per round (x5 rounds; pyperf's default total is 20)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--ours-worker", nargs=2, metavar=("KIND", "SERIALIZER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ours_worker:
        return ours_worker(*args.ours_worker)

    import pyperf

    # Interleaved case by case, so load from other programs on the machine hits both sides alike.
    mine: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="celerydiag-bench-") as tmp:
        out = os.path.join(tmp, "pyperf.json")
        for round_ in range(REPEATS):
            print(f"round {round_ + 1}/{REPEATS}", file=sys.stderr)
            for case in CASES:
                mine.setdefault("/".join(case), []).append(run_ours(case))
                run_pyperf(out, case, args.processes)
        suite = pyperf.BenchmarkSuite.load(out)
        theirs = {bench.get_name(): bench.median() for bench in suite.get_benchmarks()}
    rows, failed = [], False
    print(f"{'case':<28} {'ours ms':>10} {'pyperf ms':>10} {'ratio':>7} {'our spread/5 runs':>18}")
    for case, values in mine.items():
        ours_ms = statistics.median(values)
        pyperf_ms = theirs[case] * 1000.0
        ratio = ours_ms / pyperf_ms
        spread = statistics.stdev(values) / statistics.fmean(values)
        ok = abs(ratio - 1) <= TOLERANCE
        failed |= not ok
        rows.append({"case": case, "ours_ms": ours_ms, "pyperf_ms": pyperf_ms, "ratio": ratio,
                     "spread_ratio": spread, "runs_ms": values, "agree": ok})
        print(f"{case:<28} {ours_ms:>10.4f} {pyperf_ms:>10.4f} {ratio:>7.3f} {spread:>17.1%}"
              + ("" if ok else "   DISAGREE (> 10 %)"))
    if args.json:
        print(json.dumps(rows, indent=2))
    print(f"load average during the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
          "(a busy machine widens both spreads; rerun when it is quiet)", file=sys.stderr)
    print("agree within 10 %" if not failed else "DISAGREE: a median is more than 10 % away from pyperf's",
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
