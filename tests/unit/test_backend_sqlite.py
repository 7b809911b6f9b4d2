"""The backend probe on SQLite (the embedded default's backend): a real database file, no server.

SQLite has no lock tables, so the probe must say so instead of sampling, run its experiment with
one writer (SQLite serialises writers anyway), leave no scratch table, and raise no warning.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from celerydiag.backend.probe import BackendProbe
from celerydiag.findings import Severity
from celerydiag.probe import Limits, ProbeContext, run_probe
from celerydiag.target import resolve_target


def test_sqlite_is_probed_without_warnings_and_leaves_no_table(tmp_path: Path) -> None:
    db = tmp_path / "results.sqlite"
    target = resolve_target(broker="memory://", backend=f"db+sqlite:///{db}")
    result = run_probe(BackendProbe(), ProbeContext(target, limits=Limits(samples=60, max_seconds=4)))
    assert result.status.value == "ran", result.reason
    findings = {f.id: f for f in result.findings}
    assert not [f.id for f in result.findings if f.severity >= Severity.WARNING]
    server = findings["backend.server"]
    assert server.evidence["dialect"] == "sqlite"
    assert any("no lock tables" in note for note in server.evidence["notes"])
    assert "backend.lock-wait" not in findings  # nothing to sample, and the note says why
    write = findings["backend.write-latency"]
    assert write.evidence["writers_count"] == 1 and write.evidence["writes_count"] >= 20
    assert "backend.row-contention" not in findings
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert not [t for t in tables if t.startswith("celerydiag_")], tables
