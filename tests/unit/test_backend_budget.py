"""The time budget the backend probe, the stored-meta reads and their driver timeouts share
(celerydiag.measure.Budget, access.backend.statement_timeout_args; issue 12 point 2)."""

from __future__ import annotations

import math
import time

import pytest

from celerydiag.access.backend import connect_timeout_args, statement_timeout_args
from celerydiag.backend.probe import thin_note, trust_evidence
from celerydiag.measure import CLEANUP_GRACE_S, MIN_CALL_TIMEOUT_S, MIN_SAMPLES_FOR_P99, Budget
from celerydiag.probe import Limits, ProbeContext
from celerydiag.target import Target, TargetSource


def test_call_timeouts_shrink_to_what_is_left_and_never_reach_zero() -> None:
    budget = Budget.within(2.0, timeout_s=5.0)
    assert 1.9 < budget.call_timeout() <= 2.0  # --timeout 5 cut to the 2 s left
    assert budget.call_timeout(0.5) == 0.5
    past = Budget(time.monotonic() - 1, timeout_s=5.0)
    assert past.expired() and past.left() == 0.0
    assert past.call_timeout() == MIN_CALL_TIMEOUT_S  # 0 would mean "no timeout" to several drivers
    assert budget.fits(1.0) and not budget.fits(3.0) and not budget.fits(1.5, margin_s=1.0)


def test_a_probe_budget_is_the_guards_deadline_when_it_sets_one() -> None:
    ctx = ProbeContext(Target(broker_url="memory://", backend_url="redis://h/0", source=TargetSource.FLAGS),
                       limits=Limits(max_seconds=7, timeout_s=3))
    own = Budget.of(ctx)  # no guard deadline here: --max-seconds from now
    assert 6.9 < own.left() <= 7.0 and own.timeout_s == 3 and own.grace_s == CLEANUP_GRACE_S
    ctx.deadline = time.monotonic() + 1.5  # what the guard sets (probe.run_probe)
    assert 1.4 < Budget.of(ctx).left() <= 1.5
    ctx.deadline = math.inf
    assert 6.9 < Budget.of(ctx).left() <= 7.0


def test_statement_bounds_per_driver() -> None:
    pg = statement_timeout_args("postgresql+psycopg://h/db", 1.25, {"options": "-c lock_timeout=2000"})
    assert pg["options"] == "-c lock_timeout=2000 -c statement_timeout=1250"
    assert pg["tcp_user_timeout"] == 1250
    my = statement_timeout_args("mysql+pymysql://root@h/test", 0.4)
    assert my == {"read_timeout": 0.4, "write_timeout": 0.4}  # PyMySQL: fractions of a second
    assert statement_timeout_args("sqlite:///x.db", 1.0, {"timeout": 1.0}) == {"timeout": 1.0}
    assert connect_timeout_args("mariadb+pymysql://root@h/test", 0.3)["connect_timeout"] == 0.3
    assert connect_timeout_args("postgresql+psycopg://h/db", 1.2) == {"connect_timeout": 2}  # libpq: whole seconds


@pytest.mark.parametrize("samples", [0, 4, MIN_SAMPLES_FOR_P99 - 1])
def test_a_thin_result_says_it_is_not_a_trustworthy_p99(samples: int) -> None:
    note = thin_note(samples, "writes")
    assert f"only {samples} writes" in note and str(MIN_SAMPLES_FOR_P99) in note
    assert trust_evidence(samples) == {"samples": samples, "samples_floor_count": MIN_SAMPLES_FOR_P99,
                                       "p99_trustworthy": False}


def test_enough_samples_print_no_warning() -> None:
    assert thin_note(MIN_SAMPLES_FOR_P99, "writes") == ""
    assert trust_evidence(MIN_SAMPLES_FOR_P99)["p99_trustworthy"] is True
