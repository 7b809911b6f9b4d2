"""The sampling window's arithmetic: deltas of threads present at both ends only (a thread that
ended or started mid-window never makes a wait negative or inflated), PSI as a share of the
window, and a plain note instead of a number where /proc has no schedstat. Also one real window
over this very process, which must read its own threads' run-queue counters on Linux."""

from __future__ import annotations

import os
import sys
from collections import namedtuple

import pytest

from celerydiag.host.window import Snapshot, difference, run_queue_waits, sample

Times = namedtuple("Times", "user nice system idle iowait irq softirq steal guest guest_nice")


def snap(at: float, idle: float, sched: dict[int, dict[int, tuple[int, int]]] | None,
         cpu_s: float, pressure: int | None = None) -> Snapshot:
    return Snapshot(at=at, cpu=Times(10 + at, 0, 1, idle, 0, 0, 0, 0, 0, 0), swap_in_bytes=0, swap_out_bytes=0,
                    cpu_pressure_us=pressure, memory_pressure_us=None, cpu_s={100: cpu_s, 7: at * 2},
                    names={100: "celery", 7: "burner"}, involuntary={100: int(at)}, sched=sched)


def test_only_threads_seen_at_both_ends_count() -> None:
    before = snap(0.0, 5.0, {100: {100: (1_000_000, 10), 101: (5_000_000, 3)}}, 1.0, pressure=0)
    # thread 101 ended, 102 started: neither may count; 100 waited 3 ms over 6 timeslices
    after = snap(2.0, 5.0, {100: {100: (4_000_000, 16), 102: (9_000_000, 9)}}, 1.5, pressure=1_000_000)
    window = difference(before, after, {100: [100]}, set())
    use = window.workers[100]
    assert (use.run_queue_wait_ns, use.timeslices) == (3_000_000, 6)
    assert use.wait_per_slice_ms == pytest.approx(0.5)
    assert use.cpu_s == pytest.approx(0.5) and use.involuntary_switches == 2
    assert window.cpu_pressure_ratio == pytest.approx(0.5)  # 1 s of "some" stall in a 2 s window
    assert window.busy_ratio == pytest.approx(1.0)  # idle did not move
    assert [(n.pid, n.name) for n in window.neighbours] == [(7, "burner")]
    assert window.run_queue_measured and not window.notes


def test_without_schedstat_and_psi_the_window_says_so() -> None:
    window = difference(snap(0.0, 5.0, None, 1.0), snap(1.0, 6.0, None, 1.0), {100: [100]}, set())
    assert not window.run_queue_measured and window.workers[100].wait_per_slice_ms is None
    assert any("Linux-only" in n for n in window.notes) and any("PSI" in n for n in window.notes)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="schedstat is Linux-only")
def test_a_real_window_over_this_process_reads_its_threads() -> None:
    me = os.getpid()
    waits = run_queue_waits([me])
    assert waits is not None and me in waits[me]  # the main thread is one of the process's tasks
    window = sample({me: [me]}, 0.2)
    assert window.run_queue_measured and window.workers[me].timeslices is not None
    assert 0.0 <= window.busy_ratio <= 1.0 and window.seconds >= 0.2
