#!/usr/bin/env python3
"""Render the README's "Supported versions" table from ``make test-matrix``'s last run.

    python3 scripts/matrix-table.py [.matrix/last-run.json]

Prints Markdown on stdout: one row per pair the matrix ran (or skipped, with why), then the
ranges the passing pairs prove. Stdlib only. The README pastes this output as it stands, so the
table always says what the last run measured, not what we hope.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def render(doc: dict) -> str:
    results = doc["results"]
    lines = ["| Python | Celery | kombu | SQLAlchemy | result | tests (passed / failed / skipped) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        if r["status"] == "SKIPPED" and not r["celery_version"]:
            lines.append(f"| {r['python']} | {r['celery']} | - | - | skipped: {r['reason']} | - |")
            continue
        lines.append(f"| {r['python_version']} | {r['celery_version']} | {r['kombu_version']} | "
                     f"{r['sqlalchemy_version']} | {r['status'].lower()} | "
                     f"{r['passed']} / {r['failed']} / {r['skipped']} |")
    passed = [r for r in results if r["status"] == "PASSED"]
    lines.append("")
    if passed:
        pythons = sorted({".".join(r["python_version"].split(".")[:2]) for r in passed}, key=_key)
        celeries = sorted({r["celery_version"] for r in passed}, key=_key)
        lines.append(f"Tested: Python {', '.join(pythons)}; Celery {', '.join(celeries)} "
                     f"(`make test-matrix`, {doc['finished'][:10]}, {doc['wall_s'] / 60:.0f} min). "
                     "Each row ran tests/unit and the probe-level integration tests against real "
                     "RabbitMQ, Redis, PostgreSQL and MariaDB.")
    else:
        lines.append("No pair passed in the last `make test-matrix` run.")
    return "\n".join(lines) + "\n"


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / ".matrix" / "last-run.json"
    if not path.exists():
        print(f"{path}: no matrix run yet (make test-matrix)", file=sys.stderr)
        return 2
    sys.stdout.write(render(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
