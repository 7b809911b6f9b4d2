"""Run the probes that apply to a target and build the ranked Report (the `doctor` engine).

The CLI calls :func:`diagnose`; so do `probe NAME` (with one probe) and the tests. It owns the
order of things: reachability first (one clear exit 3 instead of every probe failing), then the
probes under the guard, then ranking.
"""

from __future__ import annotations

import datetime as _dt
import platform
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from celerydiag import __version__, interrupt
from celerydiag.access.reach import check_backend, check_broker
from celerydiag.errors import H_UNREACHABLE, TargetUnreachable
from celerydiag.findings import ProbeResult, Report
from celerydiag.probe import Limits, Probe, ProbeContext, ProbeOptions, run_probe
from celerydiag.target import Target, redact_url
from celerydiag.ui import NullProgress, Progress

REACH_TIMEOUTS = 2  # a reach check is a connect and one request, each within --timeout


def probes_bound_s(count: int, limits: Limits) -> float:
    """The most ``count`` probes take, each cut at --max-seconds plus its cleanup grace."""
    return count * limits.probe_bound_s()


def bound_line(count: int, limits: Limits) -> str:
    """What doctor promises before its probes start (stderr), in the terms of its options."""
    return (f"celerydiag: bounded: at most {probes_bound_s(count, limits):.0f} s for {count} probes "
            f"(each cut at --max-seconds {limits.max_seconds:g} s + {limits.cleanup_grace_s:g} s cleanup "
            "grace; most end far sooner)")


def _reach(check: Callable[[Target, float], None], target: Target, timeout_s: float, what: str,
           url: str) -> None:
    """One reach check, cut if the driver's own timeouts let it run past REACH_TIMEOUTS x --timeout."""
    limit = REACH_TIMEOUTS * timeout_s
    try:
        with interrupt.deadline(time.monotonic() + limit):
            check(target, timeout_s)
    except interrupt.Overrun:
        raise TargetUnreachable(f"{what} {redact_url(url)} unreachable: no answer within {limit:g} s",
                                H_UNREACHABLE) from None


def diagnose(
    target: Target,
    probes: Sequence[type[Probe]],
    *,
    budget_ms: float = 1000.0,
    limits: Limits | None = None,
    progress: Progress | None = None,
    static: bool = False,
    options: ProbeOptions | None = None,
    on_start: Callable[[str], None] | None = None,
) -> Report:
    """``on_start`` gets the line stating the run's bound, once the target is known reachable
    and before the first probe (doctor prints it on stderr)."""
    limits = limits or Limits()
    ctx = ProbeContext(target=target, budget_ms=budget_ms, limits=limits,
                       progress=progress or NullProgress(), options=options or ProbeOptions())
    try:
        # Only probes that talk to the target need it reachable: `probe config` works offline.
        if not static and not all(cls.static for cls in probes):
            _reach(check_broker, target, limits.timeout_s, "broker", target.broker_url)
            _reach(check_backend, target, limits.timeout_s, "result backend", target.backend_url)
        if on_start is not None:
            on_start(bound_line(sum(1 for cls in probes if cls.static or not static), limits))
        results: list[ProbeResult] = []
        for cls in probes:
            if static and not cls.static:
                results.append(ProbeResult.skipped(cls.name, "--static: this probe needs the network"))
                continue
            results.append(run_probe(cls(), ctx))
    finally:
        if target.scratch_dir:
            shutil.rmtree(target.scratch_dir, ignore_errors=True)
    return Report.build(target.to_dict(), budget_ms, results, collect_meta(), __version__)


def collect_meta() -> dict[str, Any]:
    """Where and with what the report was made, so merged reports can say which host said what."""
    import celery
    import kombu

    return {
        "hostname": socket.gethostname(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
    }
