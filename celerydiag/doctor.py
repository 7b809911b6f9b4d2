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
from collections.abc import Sequence
from typing import Any

from celerydiag import __version__
from celerydiag.access.reach import check_backend, check_broker
from celerydiag.findings import ProbeResult, Report
from celerydiag.probe import Limits, Probe, ProbeContext, ProbeOptions, run_probe
from celerydiag.target import Target
from celerydiag.ui import NullProgress, Progress


def diagnose(
    target: Target,
    probes: Sequence[type[Probe]],
    *,
    budget_ms: float = 1000.0,
    limits: Limits | None = None,
    progress: Progress | None = None,
    static: bool = False,
    options: ProbeOptions | None = None,
) -> Report:
    limits = limits or Limits()
    ctx = ProbeContext(target=target, budget_ms=budget_ms, limits=limits,
                       progress=progress or NullProgress(), options=options or ProbeOptions())
    try:
        # Only probes that talk to the target need it reachable: `probe config` works offline.
        if not static and not all(cls.static for cls in probes):
            check_broker(target, limits.timeout_s)
            check_backend(target, limits.timeout_s)
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
