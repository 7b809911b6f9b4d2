"""Turning timed reads of a task's state into state durations (celerydiag.polling.observe), no service.

The watch loop is driven by a scripted task timeline and a simulated clock, so the timing rules
(fixed schedule, skipped slots, the stop conditions) are checked exactly; the real backend is
the integration test's job (tests/integration/test_poll_from_backend.py).
"""

from __future__ import annotations

import pytest

from celerydiag.errors import InputError, TargetUnreachable
from celerydiag.polling import observe as watch
from celerydiag.polling.observe import Observation, Span, spans
from celerydiag.target import resolve_target


def obs(t: float, status: str, meta: str = "") -> Observation:
    return Observation(t, status, f"{status}:{meta}")


def test_consecutive_reads_of_one_state_collapse_and_durations_are_first_seen_differences() -> None:
    seen = [obs(0.00, "PENDING"), obs(0.02, "PENDING"), obs(0.04, "PROGRESS", "1"), obs(0.06, "PROGRESS", "1"),
            obs(0.34, "PROGRESS", "2"), obs(0.94, "PROGRESS", "3"), obs(1.84, "SUCCESS")]
    got = spans(seen)
    assert [s.status for s in got] == ["PENDING", "PROGRESS", "PROGRESS", "PROGRESS", "SUCCESS"]
    assert [s.reads for s in got] == [2, 2, 1, 1, 1]
    assert got[0].start_s is None and got[0].duration_s is None  # began before the watch
    assert [s.duration_s for s in got[1:4]] == pytest.approx([0.30, 0.60, 0.90])
    assert got[-1].end_s is None and got[-1].duration_s is None  # final


def test_same_status_with_other_meta_is_a_new_state() -> None:
    got = spans([obs(0, "PROGRESS", "a"), obs(1, "PROGRESS", "b"), obs(3, "PROGRESS", "c")])
    assert len(got) == 3 and got[1].duration_s == pytest.approx(2.0)


def test_a_late_answer_showing_a_replaced_state_is_not_a_new_state() -> None:
    # A read that returns the old state after a newer one was seen (overtaken by a write) must
    # neither end the current state nor count the old one twice.
    got = spans([obs(0, "PENDING"), obs(1, "PROGRESS", "1"), obs(1.5, "PENDING"), obs(2, "PROGRESS", "2"),
                 obs(4, "SUCCESS")])
    assert [s.status for s in got] == ["PENDING", "PROGRESS", "PROGRESS", "SUCCESS"]
    assert got[1].duration_s == pytest.approx(1.0) and got[1].reads == 2
    assert got[2].duration_s == pytest.approx(2.0)


def test_order_of_input_does_not_matter() -> None:
    seen = [obs(0, "PENDING"), obs(0.5, "STARTED"), obs(1.0, "PROGRESS", "1"), obs(2.0, "SUCCESS")]
    assert spans(reversed(seen)) == spans(seen)
    assert spans([]) == []


def _result(states: list[Span], elapsed: float = 2.0) -> watch.WatchResult:
    result = watch.WatchResult("t-1", "redis://127.0.0.1:6379/0", 0.02, 60.0, elapsed_s=elapsed)
    result.states = states
    result.read_ms = [0.5, 0.7, 1.0]
    return result


def test_durations_come_only_from_transient_states_that_began_and_ended_while_watched() -> None:
    result = _result(spans([obs(0, "PENDING"), obs(1, "STARTED"), obs(1.2, "PROGRESS", "1"),
                            obs(1.5, "PROGRESS", "2"), obs(2, "SUCCESS")]))
    assert result.durations_s == pytest.approx([0.2, 0.3, 0.5])
    assert result.progress_states == 3 and result.transitions == 4 and result.finished
    assert result.note() is None
    doc = result.to_dict()
    assert doc["final_status"] == "SUCCESS" and doc["reads_count"] == 3
    assert doc["read_ms"]["p50_ms"] == pytest.approx(0.7)
    assert [s["status"] for s in doc["states"]] == ["PENDING", "STARTED", "PROGRESS", "PROGRESS", "SUCCESS"]


def test_watch_begun_mid_task_does_not_count_the_first_state() -> None:
    result = _result(spans([obs(0, "PROGRESS", "4"), obs(0.7, "PROGRESS", "5"), obs(1.0, "SUCCESS")]))
    assert result.durations_s == pytest.approx([0.3])  # PROGRESS 4 began before the watch


@pytest.mark.parametrize(("seen", "expected"), [
    ([obs(0, "PENDING"), obs(60, "PENDING")], "stayed PENDING"),
    ([obs(0, "SUCCESS")], "already SUCCESS"),
    ([obs(0, "PENDING"), obs(1, "PROGRESS", "1")], "1 state change(s) seen"),
    ([obs(0, "PENDING"), obs(1, "SUCCESS")], "PENDING -> SUCCESS"),
])
def test_fewer_than_two_changes_give_no_durations_and_say_why(seen: list[Observation], expected: str) -> None:
    result = _result(spans(seen))
    assert result.durations_s == []
    note = result.note()
    assert note is not None and expected in note
    assert result.to_dict()["note"] == note


class Timeline:
    """A task that is PENDING until 0.1 s, then PROGRESS states of 0.3/0.6/0.9 s, then SUCCESS,
    read through a simulated clock; each read costs ``read_s``."""

    def __init__(self, read_s: float = 0.001, changes: tuple[float, ...] = (0.1, 0.4, 1.0, 1.9)) -> None:
        self.now = 0.0
        self.read_s = read_s
        self.changes = changes
        self.reads: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds

    def read(self) -> tuple[str, str]:
        self.reads.append(self.now)
        index = sum(1 for c in self.changes if c <= self.now)
        self.now += self.read_s
        if index == 0:
            return "PENDING", "PENDING:"
        if index == len(self.changes):
            return "SUCCESS", "SUCCESS:"
        return "PROGRESS", f"PROGRESS:{index}"


def test_watch_reads_on_a_fixed_schedule_and_stops_at_ready() -> None:
    task = Timeline()
    result = watch.watch(task, "t-1", "redis://x", interval_s=0.02, limit_s=60, clock=task.clock, sleep=task.sleep)
    assert result.finished and result.states[-1].status == "SUCCESS"
    assert result.durations_s == pytest.approx([0.3, 0.6, 0.9], abs=0.021)
    gaps = [b - a for a, b in zip(task.reads, task.reads[1:])]
    assert all(g == pytest.approx(0.02) for g in gaps)  # schedule, not read time + sleep
    assert len(task.reads) == pytest.approx(1.9 / 0.02 + 1, abs=1)
    assert len(result.read_ms) == len(task.reads) and result.read.p50_ms == pytest.approx(1.0)


def test_watch_ends_at_the_limit_and_skips_slots_a_slow_read_overran() -> None:
    task = Timeline(read_s=0.05, changes=(100.0,))  # stays PENDING; each read takes 2.5 intervals
    ticks: list[tuple[float, str, int]] = []
    result = watch.watch(task, "t-1", "redis://x", interval_s=0.02, limit_s=1.0, clock=task.clock,
                         sleep=task.sleep, on_read=lambda *a: ticks.append(a))
    assert not result.finished and result.note() is not None and "stayed PENDING" in (result.note() or "")
    assert 1.0 <= result.elapsed_s <= 1.0 + 0.05 + 1e-9
    gaps = [b - a for a, b in zip(task.reads, task.reads[1:])]
    assert all(g == pytest.approx(0.06) for g in gaps[:-1])  # the next free slot, no burst to catch up
    assert len(ticks) == len(task.reads) and ticks[-1][1:] == ("PENDING", 0)


def test_a_failing_read_is_one_line_target_unreachable() -> None:
    class Broken:
        def read(self) -> tuple[str, str]:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    with pytest.raises(TargetUnreachable, match="cannot read task t-1 from the result backend: .*refused"):
        watch.watch(Broken(), "t-1", "redis://x", limit_s=1)


@pytest.mark.parametrize(("backend", "expected"), [("rpc://", "rpc://"), ("disabled://", "stores nothing")])
def test_backends_that_cannot_be_watched_are_bad_input(backend: str, expected: str) -> None:
    from contextlib import ExitStack

    target = resolve_target(broker="memory://", backend=backend)
    with ExitStack() as cleanup, pytest.raises(InputError, match=expected):
        watch.open_reader(target, "t-1", cleanup)
