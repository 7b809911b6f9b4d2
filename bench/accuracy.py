#!/usr/bin/env python3
"""Diagnosis accuracy: inject each cause for real, see what the doctor ranks first (issue 8).

Runs the scenarios of ``tests/scenarios`` (real RabbitMQ, Redis, PostgreSQL, MariaDB, real Celery
workers, ``celerydiag doctor --format json`` in a subprocess) with ``CELERYDIAG_ACCURACY_DIR`` set, so
each scenario writes its outcome there, then prints:

- the confusion matrix: injected cause (rows) x top-ranked cause (columns), where the top-ranked cause
  is the cause of the first ranked finding that is not ``ok`` and not ``e2e`` (tests/scenarios/harness.py);
  on the baseline row (nothing injected) only a finding at warning or above counts, else "none";
- the false-positive count: findings at warning or above on the healthy baseline;
- per scenario, the top finding before and the checked finding after the printed fix was applied.

    .venv/bin/python bench/accuracy.py                    # run every scenario (~6 min), then the matrix
    .venv/bin/python bench/accuracy.py --fast             # only the scenarios `make test` runs
    .venv/bin/python bench/accuracy.py --read DIR         # the matrix of results written earlier
    .venv/bin/python bench/accuracy.py --json             # the same as JSON

Exit status: 0 when every scenario ran and was named first with no false positive, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CAUSES = ("broker", "backend", "network", "serialization", "polling")
COLUMNS = (*CAUSES, "config", "none")
ROWS = (*CAUSES, "none")
RUN_TIMEOUT_S = 1800.0


def run_scenarios(out: Path, fast: bool) -> int:
    argv = [sys.executable, "-m", "pytest", "tests/scenarios", "-q", "-p", "no:cacheprovider"]
    if fast:
        argv += ["-m", "not scenario_slow"]
    env = dict(os.environ, CELERYDIAG_ACCURACY_DIR=str(out))
    print(f"running: {' '.join(argv[2:])}", file=sys.stderr)
    done = subprocess.run(argv, cwd=REPO, env=env, timeout=RUN_TIMEOUT_S, capture_output=True, text=True)
    tail = done.stdout.strip().splitlines()[-1:] or ["(no output)"]
    print(f"pytest: {tail[0]}", file=sys.stderr)
    if done.returncode not in (0, 1):
        print(done.stdout[-3000:] + done.stderr[-2000:], file=sys.stderr)
    return done.returncode


def load(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.json"))]


def matrix(results: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    table = {row: dict.fromkeys(COLUMNS, 0) for row in ROWS}
    for r in results:
        column = r["top_cause"] if r["top_cause"] in COLUMNS else "none"
        if r["injected"] == "none" and not r["warnings_count"]:
            column = "none"  # the baseline's row counts false positives: only warning or above is one
        table.setdefault(r["injected"], dict.fromkeys(COLUMNS, 0))[column] += 1
    return table


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    injected = [r for r in results if r["injected"] != "none"]
    baseline = [r for r in results if r["injected"] == "none"]
    return {
        "scenarios_count": len(results),
        "named_first_count": sum(r["top_cause"] == r["injected"] for r in injected),
        "injected_count": len(injected),
        "baseline_false_positives_count": sum(r["warnings_count"] for r in baseline),
        "baseline_runs_count": len(baseline),
        "fix_verified_count": sum(_fixed(r) for r in injected),
        "matrix": matrix(results),
        "scenarios": results,
    }


def _fixed(r: dict[str, Any]) -> bool:
    after, before = r.get("after_fix") or {}, r.get("top_finding") or {}
    checked = after.get("checked")
    if not checked or not before:
        return False
    same = checked["id"] == before["id"]
    return checked["severity"] == "ok" or (checked["impact_ms"] < before["impact_ms"] if same else True)


# Ids outside the config probe whose fix prints a config change (backend/broker/e2e/serialization
# fix builders); the config probe's are found by running its triggers (fix_ids).
OTHER_FIX_IDS = ("backend.lock-timeout", "backend.isolation-level", "backend.lock-wait",
                 "backend.row-contention", "backend.write-latency", "backend.reconnect-per-read",
                 "backend.result-expires", "broker.confirm-publish", "broker.heartbeat",
                 "broker.publish-latency", "serialization.stored-meta", "serialization.standard-meta",
                 "e2e.visibility-poll")


def fix_ids() -> list[str]:
    """Every finding id that prints a config change: the config probe's, by running the trigger
    configs of tests/unit/test_fixes.py through it, plus OTHER_FIX_IDS."""
    sys.path[:0] = [str(REPO), str(REPO / "tests" / "unit")]
    from test_fixes import TRIGGERS, _run  # noqa: PLC0415 (the test suite's own triggers)

    from celerydiag.compat import celery_version
    from celerydiag.config.paste import parse

    ids = set(OTHER_FIX_IDS)
    for settings, versions in TRIGGERS.values():
        if versions.get("celery", celery_version()) != celery_version():
            continue  # a fact of another Celery release: nothing to prove on the installed one
        for f in _run(settings, versions).values():
            if f.fix and f.severity.name != "OK" and parse(f.fix.config).settings:
                ids.add(f.id)
    return sorted(ids)


def fixes_verified(directory: Path) -> tuple[list[str], list[str]]:
    """(verified, not yet) ids: the ``<scenario>.fixes`` files tests/scenarios/test_fixes_proven.py
    writes name the ids whose pasted block it proved on a real worker."""
    done: set[str] = set()
    for path in sorted(directory.glob("*.fixes")):
        done.update(json.loads(path.read_text(encoding="utf-8")).get("verified", ()))
    every = fix_ids()
    return sorted(done & set(every)), [i for i in every if i not in done]


def render(s: dict[str, Any]) -> str:
    width = max(len(c) for c in COLUMNS) + 1
    lines = ["Confusion matrix: injected cause (rows) x top-ranked cause (columns)", ""]
    lines.append("injected \\ top".ljust(16) + "".join(c.rjust(width) for c in COLUMNS))
    for row in ROWS:
        counts = s["matrix"].get(row, {})
        lines.append(row.ljust(16) + "".join(str(counts.get(c, 0)).rjust(width) for c in COLUMNS))
    lines += ["", f"named first: {s['named_first_count']} of {s['injected_count']} injected faults; "
                  f"false positives (warning or above) on the healthy baseline: "
                  f"{s['baseline_false_positives_count']} in {s['baseline_runs_count']} run(s); "
                  f"printed fix applied and verified: {s['fix_verified_count']} of {s['injected_count']}", ""]
    lines.append(f"{'scenario':28}{'top finding before':44}{'after the fix':40}")
    for r in s["scenarios"]:
        top = r.get("top_finding") or {}
        before = f"{top.get('id', '-')} {top.get('severity', '')} {top.get('impact_ms', 0):.0f} ms" if top else "-"
        checked = (r.get("after_fix") or {}).get("checked")
        after = (f"{checked['id']} {checked['severity']} {checked['impact_ms']:.0f} ms" if checked else "-")
        lines.append(f"{r['scenario']:28}{before:44}{after:40}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--read", type=Path, metavar="DIR", help="results written earlier; run nothing")
    parser.add_argument("--fast", action="store_true", help="only the scenarios not marked scenario_slow")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="write the scenarios' results here (kept)")
    args = parser.parse_args()
    status = 0
    if args.read:
        directory = args.read
    else:
        directory = args.keep or Path(tempfile.mkdtemp(prefix="celerydiag-accuracy-"))
        status = run_scenarios(directory, args.fast)
    results = load(directory)
    if not results:
        print(f"no scenario results in {directory}", file=sys.stderr)
        return 1
    s = summary(results)
    verified, missing = fixes_verified(directory)
    s["fixes_verified"], s["fixes_not_verified"] = verified, missing
    print(json.dumps(s, indent=2) if args.json else render(s))
    if not args.json:
        print(f"\nfixes verified {len(verified)} of {len(verified) + len(missing)} "
              f"(paste block applied on a real worker, tests/scenarios/test_fixes_proven.py)")
        print(f"not yet covered: {', '.join(missing) or 'none'}")
    perfect = (s["named_first_count"] == s["injected_count"] and not s["baseline_false_positives_count"])
    return 0 if status == 0 and perfect else 1


if __name__ == "__main__":
    sys.exit(main())
