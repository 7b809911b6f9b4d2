#!/usr/bin/env python3
"""How long `celerydiag doctor` takes, where the time goes, and how many e2e samples it gets.

Runs `python -m celerydiag doctor --format json` of this checkout in a subprocess, as a user
would, on the embedded default and against the local RabbitMQ with each local result backend
(Redis, PostgreSQL, MariaDB), and prints for each: wall time against its goal, time per probe
(`probes[].elapsed_s`), the overhead outside the probes (interpreter start, imports,
reachability check, rendering), and the e2e findings' `evidence.samples`.

References measured in the same run, so the figures mean something on any machine:
- `celerydiag --version`: the cost of starting the interpreter and the CLI at all;
- the goals: the demo (`doctor` on the embedded default) under 30 s, and `doctor` with default
  options under 10 s on RabbitMQ + Redis, + PostgreSQL and + MariaDB (issue 13 point 5);
- with `--baseline DIR` (another checkout, e.g. `git archive main | tar -x -C DIR`), the same
  targets run from DIR, interleaved with this checkout's runs, so before and after share the load;
- the load average before and after, since the machine may be shared.

    .venv/bin/python bench/doctor_wall.py                    # every target, once each
    .venv/bin/python bench/doctor_wall.py --repeat 3         # median of 3
    .venv/bin/python bench/doctor_wall.py --no-services      # embedded default only
    .venv/bin/python bench/doctor_wall.py --targets redis,mariadb --repeat 3 --baseline /tmp/base
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
GOAL_S = 10.0  # issue 13 point 5: doctor with default options on each service target
RUN_TIMEOUT_S = 600.0
ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "celerydiag"]
AMQP = os.environ.get("CELERYDIAG_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
REDIS = os.environ.get("CELERYDIAG_TEST_REDIS", "redis://127.0.0.1:6379/15")
POSTGRES = os.environ.get("CELERYDIAG_TEST_POSTGRES", "db+postgresql+psycopg://postgres@127.0.0.1/test")
MARIADB = os.environ.get("CELERYDIAG_TEST_MARIADB", "db+mysql+pymysql://root@127.0.0.1/test")
BACKENDS = {"redis": REDIS, "postgres": POSTGRES, "mariadb": MARIADB}


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


def clean_env(checkout: Path = ROOT) -> dict[str, str]:
    """The environment without the target variables, importing celerydiag from ``checkout``."""
    env = {k: v for k, v in os.environ.items() if k not in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")}
    env["PYTHONPATH"] = str(checkout)
    return env


def run_doctor(label: str, args: list[str], checkout: Path = ROOT) -> Run:
    started = time.perf_counter()
    try:
        # cwd too: `python -m` puts the working directory ahead of PYTHONPATH on sys.path
        proc = subprocess.run([*CLI, "doctor", "--format", "json", *args], capture_output=True, text=True,
                              env=clean_env(checkout), cwd=checkout, timeout=RUN_TIMEOUT_S)
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
        subprocess.run([*CLI, "--version"], capture_output=True, env=clean_env(), cwd=ROOT, timeout=60, check=True)
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


# The percentiles behind the findings whose sampling changed (issue 13 point 5), for before/after:
# finding id -> (label, evidence path to a {p50, p99}-like mapping or to a scalar)
FIGURES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("broker.publish-latency", "broker roundtrip", ("roundtrip_ms",)),
    ("broker.publish-latency", "broker confirm persistent", ("confirm_persistent_ms",)),
    ("backend.write-latency", "backend write", ("write_ms",)),  # Redis: its writes; db: 4 writers, own rows
    ("backend.read-latency", "backend read (Redis)", ("read_ms",)),
    ("e2e.visibility-poll", "e2e poll", ()),
    ("e2e.visibility-push", "e2e push", ()),
)


def figures(run: Run) -> dict[str, tuple[float, float, int]]:
    """label -> (P50 ms, P99 ms, samples) of the findings in FIGURES that this run has."""
    assert run.report is not None
    out: dict[str, tuple[float, float, int]] = {}
    by_id = {f["id"]: f for f in run.report.get("findings", [])}
    for fid, label, path in FIGURES:
        finding = by_id.get(fid)
        if finding is None:
            continue
        node: Any = finding.get("evidence") or {}
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        p50, p99 = node.get("p50", node.get("p50_ms")), node.get("p99", node.get("p99_ms"))
        samples = (finding.get("evidence") or {}).get("samples", node.get("samples", 0))
        if isinstance(p50, (int, float)) and isinstance(p99, (int, float)):
            out[label] = (float(p50), float(p99), int(samples or 0))
    return out


def figure_lines(runs: list[Run]) -> list[str]:
    """Each FIGURES percentile as the median over the runs (and the sample count's median)."""
    per: dict[str, list[tuple[float, float, int]]] = {}
    for run in runs:
        if run.ok:
            for label, value in figures(run).items():
                per.setdefault(label, []).append(value)
    return [f"  {label:<30} P50 {statistics.median(v[0] for v in vals):8.3f} ms  P99 "
            f"{statistics.median(v[1] for v in vals):8.3f} ms  samples {statistics.median(v[2] for v in vals):5.0f}"
            f"  (P99 per run: {', '.join(f'{v[1]:.2f}' for v in vals)})"
            for label, vals in per.items()]


def median_probe_s(runs: list[Run], name: str) -> float:
    """The median of one probe's elapsed_s over the runs that have it (each probe's own median,
    not the median run's figure)."""
    values = [float(r.probes[name].get("elapsed_s") or 0.0) for r in runs if r.ok and name in r.probes]
    return statistics.median(values) if values else 0.0


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def report(label: str, runs: list[Run], base: float, goal_s: float | None) -> bool:
    """Print one target's figures; False when no run produced a report."""
    run = median_run(runs)
    print(f"\n== {label}")
    if not run.ok:
        print(f"no report: {run.error}")
        return False
    in_probes = sum(float(p.get("elapsed_s") or 0.0) for p in run.probes.values())
    walls = ", ".join(f"{r.wall_s:.2f}" for r in runs if r.ok)
    print(f"wall {run.wall_s:.2f} s (median of runs: {walls}); exit {run.returncode}")
    print(f"probes {in_probes:.2f} s; outside probes {run.wall_s - in_probes:.2f} s "
          f"({run.wall_s - in_probes - base:+.2f} s beyond bare start-up: imports, reachability, rendering)")
    print("  per probe, median over the runs:")
    for name, p in run.probes.items():
        reason = f"  ({p['reason']})" if p.get("reason") and p["status"] != "ran" else ""
        print(f"  {name:<14} {p['status']:<8} {median_probe_s(runs, name):7.2f} s{reason}")
    for k, other in enumerate(runs, 1):  # what went differently in the other runs (a failed probe)
        for name, p in other.probes.items() if other.ok else ():
            if p["status"] != run.probes.get(name, {}).get("status"):
                print(f"  run {k}: {name} {p['status']}: {p.get('reason') or 'no reason given'}")
        if not other.ok:
            print(f"  run {k}: no report: {other.error}")
    for line in e2e_lines(run):
        print(line)
    print("  percentiles, median over the runs:")
    for line in figure_lines(runs):
        print(line)
    if goal_s is not None:
        verdict = "within" if run.wall_s < goal_s else "OVER"
        print(f"goal: under {goal_s:.0f} s -> {run.wall_s:.2f} s, {verdict}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="runs per target; the median is shown (default 1)")
    parser.add_argument("--broker", default=AMQP, help="broker for the service targets (default: local RabbitMQ)")
    parser.add_argument("--backend", help="one more service target with this result backend URL")
    parser.add_argument("--targets", default="embedded,redis,postgres,mariadb",
                        help="comma-separated, of: embedded, " + ", ".join(BACKENDS) + " (default: all)")
    parser.add_argument("--no-services", action="store_true", help="only the embedded default")
    parser.add_argument("--updates", type=int, help="pass --updates N to doctor (default: doctor's own)")
    parser.add_argument("--baseline", type=Path, help="another checkout to run the same targets from, "
                        "interleaved with this one (before/after under the same load)")
    opts = parser.parse_args(argv)

    extra = ["--updates", str(opts.updates)] if opts.updates else []
    chosen = [t.strip() for t in opts.targets.split(",") if t.strip()]
    unknown = [t for t in chosen if t != "embedded" and t not in BACKENDS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}")
    targets: list[tuple[str, list[str], float | None]] = []
    if "embedded" in chosen:
        targets.append(("embedded default", [], DEMO_PROMISE_S))
    backends = [] if opts.no_services else [BACKENDS[t] for t in chosen if t in BACKENDS]
    if opts.backend and not opts.no_services:
        backends.append(opts.backend)
    for url in backends:
        targets.append((f"{redact_url(opts.broker)} + {redact_url(url)}",
                        ["--broker", opts.broker, "--backend", url], GOAL_S))
    checkouts = [("this checkout", ROOT)]
    if opts.baseline:
        checkouts.insert(0, (f"baseline {opts.baseline}", opts.baseline.resolve()))

    base = startup_s(opts.repeat)
    print(f"celerydiag doctor wall time ({opts.repeat} run(s) per target, median shown; {os.cpu_count()} CPUs)")
    print(f"reference: `celerydiag --version` starts in {base:.2f} s (interpreter + CLI, no probes)")
    print(f"before: {load()}")
    failures = 0
    for label, args, goal in targets:
        runs: dict[str, list[Run]] = {name: [] for name, _ in checkouts}
        for i in range(opts.repeat):
            for name, checkout in checkouts:  # interleaved: each pair shares the same moment's load
                print(f"  running doctor ({name}) on {label} ({i + 1}/{opts.repeat}) ...", file=sys.stderr, flush=True)
                runs[name].append(run_doctor(label, [*args, *extra], checkout))
        for name, _ in checkouts:
            title = label if len(checkouts) == 1 else f"{label} [{name}]"
            failures += 0 if report(title, runs[name], base, goal) else 1
    print(f"\nafter: {load()}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
