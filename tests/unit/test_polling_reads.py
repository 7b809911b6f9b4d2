"""The arithmetic of the measured poll interval (polling/reads.py), without a server."""

from __future__ import annotations

import pytest

from celerydiag.polling.reads import ClientReads, _counted


def test_writers_lookups_are_subtracted_and_reads_spread_over_the_tasks_in_flight() -> None:
    # 40 lookups in 4 s, 8 of them the lookups before the workers' 8 writes: 32 client reads
    seen = _counted("pg_stat_user_tables", "table", 4.0, (100, 10), (140, 18))
    assert (seen.raw_reads, seen.writes, seen.reads) == (40, 8, 32)
    seen.in_flight = 2
    assert seen.interval_s == pytest.approx(4.0 * 2 / 32)  # each of 2 tasks read every 250 ms
    assert seen.attributable and seen.evidence()["poll_interval_ms"] == pytest.approx(250.0)


def test_no_interval_without_reads_or_without_a_task_in_flight() -> None:
    assert ClientReads("commandstats", "server", 3.0, 0, 5, 5, in_flight=1).interval_s is None
    assert ClientReads("commandstats", "server", 3.0, 9, 0, 9, in_flight=0).interval_s is None
    unknown = ClientReads("commandstats", "server", 3.0, 9, 0, 9, in_flight=None)
    assert unknown.interval_s == pytest.approx(3.0 / 9)  # counted for one task: a lower bound


def test_server_wide_selects_are_not_taken_for_polls() -> None:
    assert not ClientReads("global_status", "server", 3.0, 9, 0, 9, in_flight=1).attributable
    assert ClientReads("commandstats", "server", 3.0, 9, 0, 9, in_flight=1).attributable
