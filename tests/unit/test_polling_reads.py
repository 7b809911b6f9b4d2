"""The arithmetic of the measured poll interval (polling/reads.py), without a server."""

from __future__ import annotations

import pytest

from celerydiag.compat import celery_version
from celerydiag.polling.reads import ClientReads, _counted, lookups_per_write

# Celery 5.7 re-reads the row FOR UPDATE before each UPDATE: one lookup more per update than 5.3-5.6
FOR_UPDATE = celery_version() >= (5, 7)


def test_writers_lookups_are_subtracted_and_reads_spread_over_the_tasks_in_flight() -> None:
    # 46 lookups in 4 s: 2 INSERTs (1 lookup each) and 4 UPDATEs (3 each on Celery 5.7, 2 before)
    # are the workers' own, leaving 32 client reads (36 before 5.7)
    per_update = 3 if FOR_UPDATE else 2
    assert lookups_per_write("pg_stat_user_tables") == (1, per_update)
    seen = _counted("pg_stat_user_tables", "table", 4.0, (100, 10, 20), (146, 12, 24))
    reads = 46 - 2 - 4 * per_update
    assert (seen.raw_reads, seen.writes, seen.reads) == (46, 6, reads)
    seen.in_flight = 2
    assert seen.interval_s == pytest.approx(4.0 * 2 / reads)  # each of 2 tasks read every 250 ms (5.7)
    assert seen.attributable and seen.evidence()["poll_interval_ms"] == pytest.approx(4000.0 * 2 / reads)


def test_no_interval_without_reads_or_without_a_task_in_flight() -> None:
    assert ClientReads("commandstats", "server", 3.0, 0, 5, 5, in_flight=1).interval_s is None
    assert ClientReads("commandstats", "server", 3.0, 9, 0, 9, in_flight=0).interval_s is None
    unknown = ClientReads("commandstats", "server", 3.0, 9, 0, 9, in_flight=None)
    assert unknown.interval_s == pytest.approx(3.0 / 9)  # counted for one task: a lower bound


def test_server_wide_selects_are_not_taken_for_polls() -> None:
    assert not ClientReads("global_status", "server", 3.0, 9, 0, 9, in_flight=1).attributable
    assert ClientReads("commandstats", "server", 3.0, 9, 0, 9, in_flight=1).attributable


def test_statement_and_redis_counts_subtract_what_a_write_sends() -> None:
    # SELECT, SELECT ... FOR UPDATE (5.7); the UPDATE is no SELECT
    assert lookups_per_write("global_status") == (1, 2 if FOR_UPDATE else 1)
    assert lookups_per_write("commandstats") == (1, 1)  # GET before each SET/SETEX


def test_a_read_or_two_is_within_the_edge_error_not_an_interval() -> None:
    assert ClientReads("commandstats", "server", 4.0, 2, 40, 42, in_flight=1).interval_s is None
    assert ClientReads("commandstats", "server", 4.0, 3, 40, 43, in_flight=1).interval_s == pytest.approx(4 / 3)
