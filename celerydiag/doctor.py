"""Run the probes that apply to a target and build the ranked Report (the `doctor` engine).

The CLI calls :func:`diagnose`; so do `probe NAME` (with one probe) and the tests. It owns the
order of things: reachability of what the selected probes need first (one line per dead side
instead of every probe failing the same way), then the probes under the guard, then ranking. A
probe that needs a dead side fails with that side's line; every other probe still runs, and the
report's ``unreachable`` names the side (exit 3, README "Output, exit codes, CI").
"""

from __future__ import annotations

import datetime as _dt
import platform
import shutil
import socket
from collections.abc import Callable, Sequence
from typing import Any

from celerydiag import __version__
from celerydiag.access.reach import unreachable_sides
from celerydiag.errors import TargetUnreachable, unreachable_lines
from celerydiag.findings import ProbeResult, Report
from celerydiag.probe import Limits, Probe, ProbeContext, ProbeOptions, run_probe
from celerydiag.target import Target
from celerydiag.ui import NullProgress, Progress


def probes_bound_s(count: int, limits: Limits) -> float:
    """The most ``count`` probes take, each cut at --max-seconds plus its cleanup grace."""
    return count * limits.probe_bound_s()


def bound_line(count: int, limits: Limits) -> str:
    """What doctor promises before its probes start (stderr), in the terms of its options."""
    return (f"celerydiag: bounded: at most {probes_bound_s(count, limits):.0f} s for {count} probes "
            f"(each cut at --max-seconds {limits.max_seconds:g} s + {limits.cleanup_grace_s:g} s cleanup "
            "grace; most end far sooner)")


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
                       progress=progress or NullProgress(), options=options or ProbeOptions(), static=static)
    try:
        active = [cls for cls in probes if not (static or cls.static)]
        down = unreachable_sides(target, {side for cls in active for side in cls.needs}, limits.timeout_s)
        if on_start is not None:  # a dead side first (the answer), then what the rest is bound to
            runnable = [cls for cls in probes if (cls.static or not static) and not cls.needs & down.keys()]
            on_start("".join(unreachable_lines(exc.message for exc in down.values()))
                     + bound_line(len(runnable), limits))
        results: list[ProbeResult] = []
        for cls in probes:
            if static and not cls.static:
                results.append(ProbeResult.skipped(cls.name, "--static: this probe needs the network"))
                continue
            dead = [down[side] for side in sorted(cls.needs) if side in down]
            results.append(_unreachable(cls, dead) if dead else run_probe(cls(), ctx))
    finally:
        if target.scratch_dir:
            shutil.rmtree(target.scratch_dir, ignore_errors=True)
    from celerydiag.config.paste import unify

    # every fix becomes a view of one merged block, in the app's setting-name style (issue 17)
    return unify(Report.build(target.to_dict(), budget_ms, results, collect_meta(), __version__,
                              unreachable={str(side): target.redact(exc.message) for side, exc in down.items()}),
                 target.app)


def _unreachable(cls: type[Probe], dead: Sequence[TargetUnreachable]) -> ProbeResult:
    """A probe not run because what it needs is down: failed (the user asked for it), with why."""
    return ProbeResult.failed(cls.name, "; ".join(exc.message for exc in dead))


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
