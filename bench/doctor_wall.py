#!/usr/bin/env python3
"""How long `celerydiag doctor` takes, where the time goes, and how many e2e samples it gets.

Runs the real console script (`celerydiag doctor --format json`) in a subprocess, as a user
would, on the embedded default and against the local RabbitMQ + Redis, and prints for each:
wall time, time per probe (`probes[].elapsed_s`), the overhead outside the probes (interpreter
start, imports, reachability check, rendering), and the e2e findings' `evidence.samples`.

References measured in the same run, so the figures mean something on any machine:
- `celerydiag --version`: the cost of starting the interpreter and the CLI at all;
- the issue's promise that the demo (`doctor` on the embedded default) finishes in under 30 s.

    .venv/bin/python bench/doctor_wall.py                    # both targets, once each
    .venv/bin/python bench/doctor_wall.py --repeat 3         # median of 3
    .venv/bin/python bench/doctor_wall.py --no-services      # embedded default only
    .venv/bin/python bench/doctor_wall.py --broker amqp://u:p@host// --backend redis://host/0

Exit status: 0 when every run produced a report, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEMO_PROMISE_S = 30.0
RUN_TIMEOUT_S = 600.0
SCRIPT = Path(sys.executable).with_name("celerydiag")
CLI = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "celerydiag"]
AMQP = os.environ.get("CELERYDIAG_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
REDIS = os.environ.get("CELERYDIAG_TEST_REDIS", "redis://127.0.0.1:6379/15")


def redact_url(url: str) -> str:
    try:
        from celerydiag.target import redact_url as redact
    except ImportError:  # run from a checkout without the package installed: hide userinfo whole
        head, sep, rest = url.partition("://")
        return f"{head}{sep}**@{rest.split('@', 1)[1]}" if "@" in rest else url
    return redact(url)


@dataclass
class Run:
    label: str
    wall_s: float
    returncode: int
    report: dict[str, Any] | None
    error: str = ""
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.report is not None


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")}


def run_doctor(label: str, args: list[str]) -> Run:
    started = time.perf_counter()
    try:
        proc = subprocess.run([*CLI, "doctor", "--format", "json", *args], capture_output=True, text=True,
                              env=clean_env(), timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return Run(label, time.perf_counter() - started, -1, None, f"no report within {RUN_TIMEOUT_S:.0f} s")
    wall = time.perf_counter() - started
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        lines = proc.stderr.strip().splitlines() or ["(nothing on stderr)"]
        said = next((x for x in lines if x.startswith("celerydiag: error:")), lines[-1])
        return Run(label, wall, proc.returncode, None, f"exit {proc.returncode}: {said}")
    run = Run(label, wall, proc.returncode, report)
    run.probes = {p["name"]: p for p in report.get("probes", [])}
    return run


def startup_s(repeat: int) -> float:
    times = []
    for _ in range(max(repeat, 3)):
        started = time.perf_counter()
        subprocess.run([*CLI, "--version"], capture_output=True, env=clean_env(), timeout=60, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def e2e_lines(run: Run) -> list[str]:
    """The e2e probe's sample counts, or plainly why there are none."""
    assert run.report is not None
    probe = run.probes.get("e2e")
    if probe is None:
        return ["e2e: not registered in this build (findings.Cause has no E2E member): no sample count"]
    if probe["status"] != "ran":
        return [f"e2e: {probe['status']}: {probe.get('reason') or 'no reason given'}"]
    lines = []
    for f in run.report.get("findings", []):
        if not f["id"].startswith("e2e."):
            continue
        evidence = f.get("evidence") or {}
        p99 = evidence.get("p99_ms")
        lines.append(f"e2e: {f['id']}: samples {evidence.get('samples', 'n/a')}"
                     + (f", P99 {p99:.1f} ms" if isinstance(p99, (int, float)) else ""))
    return lines or ["e2e: ran but reported no findings"]


def median_run(runs: list[Run]) -> Run:
    good = sorted((r for r in runs if r.ok), key=lambda r: r.wall_s)
    return good[len(good) // 2] if good else runs[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="runs per target; the median is shown (default 1)")
    parser.add_argument("--broker", default=AMQP, help="broker for the services run (default: local RabbitMQ)")
    parser.add_argument("--backend", default=REDIS, help="backend for the services run (default: local Redis db 15)")
    parser.add_argument("--no-services", action="store_true", help="only the embedded default")
    parser.add_argument("--updates", type=int, help="pass --updates N to doctor (default: doctor's own)")
    opts = parser.parse_args(argv)

    extra = ["--updates", str(opts.updates)] if opts.updates else []
    targets = [("embedded default", [])]
    if not opts.no_services:
        targets.append((f"{redact_url(opts.broker)} + {redact_url(opts.backend)}",
                        ["--broker", opts.broker, "--backend", opts.backend]))

    base = startup_s(opts.repeat)
    print(f"celerydiag doctor wall time ({opts.repeat} run(s) per target, median shown; {os.cpu_count()} CPUs)")
    print(f"reference: `celerydiag --version` starts in {base:.2f} s (interpreter + CLI, no probes)")
    failures = 0
    for label, args in targets:
        runs = []
        for i in range(opts.repeat):
            print(f"  running doctor on {label} ({i + 1}/{opts.repeat}) ...", file=sys.stderr, flush=True)
            runs.append(run_doctor(label, [*args, *extra]))
        run = median_run(runs)
        print(f"\n== {label}")
        if not run.ok:
            failures += 1
            print(f"no report: {run.error}")
            continue
        in_probes = sum(float(p.get("elapsed_s") or 0.0) for p in run.probes.values())
        walls = ", ".join(f"{r.wall_s:.2f}" for r in runs if r.ok)
        print(f"wall {run.wall_s:.2f} s (runs: {walls}); exit {run.returncode}")
        print(f"probes {in_probes:.2f} s; outside probes {run.wall_s - in_probes:.2f} s "
              f"({run.wall_s - in_probes - base:+.2f} s beyond bare start-up: imports, reachability, rendering)")
        for name, p in run.probes.items():
            reason = f"  ({p['reason']})" if p.get("reason") else ""
            print(f"  {name:<14} {p['status']:<8} {float(p.get('elapsed_s') or 0.0):7.2f} s{reason}")
        for line in e2e_lines(run):
            print(line)
        if label == "embedded default":
            verdict = "within" if run.wall_s < DEMO_PROMISE_S else "OVER"
            print(f"demo promise: under {DEMO_PROMISE_S:.0f} s -> {run.wall_s:.2f} s, {verdict}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
