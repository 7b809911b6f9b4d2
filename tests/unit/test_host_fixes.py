"""Every fix the host probe can print assigns only real Celery settings of the installed version
(celery.app.defaults), compiles, and is one summary line with https docs: the rule
tests/unit/test_fixes.py holds the config probe to. The fixes are built from the same functions
the probe calls, fed windows that make each one print."""

from __future__ import annotations

from typing import Any

import pytest
from celery.app.defaults import DEFAULTS, SETTING_KEYS

from celerydiag.findings import Cause, Severity
from celerydiag.host import probe as host
from celerydiag.host.window import Neighbour, Window, WorkerUse
from celerydiag.rank import rated


def window(*, wait_ns: int = 40_000_000, slices: int = 10, neighbours: tuple[Neighbour, ...] = (),
           swap: int = 0, cpus: int = 2, sched: bool = True) -> Window:
    use = WorkerUse(cpu_s=0.3, involuntary_switches=12, run_queue_wait_ns=wait_ns if sched else None,
                    timeslices=slices if sched else None)
    return Window(seconds=3.0, cpus=cpus, busy_ratio=0.97, steal_ratio=0.0, iowait_ratio=0.0, load_1m=3.5,
                  cpu_pressure_ratio=0.6 if sched else None, memory_stall_ms=12.0 if sched else None,
                  swap_in_bytes=swap, swap_out_bytes=swap, workers={100: use}, neighbours=neighbours,
                  notes=() if sched else ("run-queue wait is not measurable here",))


def facts(pool: str = "prefork", concurrency: int = 2) -> list[dict[str, Any]]:
    return [{"pid": "100", "pool": pool, "concurrency_count": concurrency, "cpu_ratio": 0.1,
             "wait_per_timeslice_ms": 4.0}]


def _known_settings() -> set[str]:
    return {k.lower() for k in SETTING_KEYS} | {k.lower() for k in DEFAULTS}


def check_fix(fix: Any) -> None:
    assert fix is not None and fix.summary and "\n" not in fix.summary
    assert fix.docs and all(d.startswith("https://docs.celeryq.dev/") for d in fix.docs), fix.docs
    namespace: dict[str, Any] = {}
    exec(compile(fix.config, "<fix>", "exec"), namespace)  # noqa: S102 (the text we print; run it)
    namespace.pop("__builtins__", None)
    assert namespace, fix.config
    unknown = set(namespace) - _known_settings()
    assert not unknown, f"not Celery settings: {unknown}\n{fix.config}"


NOISY = (Neighbour(4242, "ffmpeg", 5.4),)
CASES = {
    "starved-prefork": lambda: rated(host.cpu_wait_finding(facts(), window()), 1000.0),
    "starved-threads-with-neighbour": lambda: rated(host.cpu_wait_finding(
        facts("threads", 8), window(neighbours=NOISY)), 1000.0),
    "saturated-no-schedstat": lambda: host.saturation_finding(facts("solo", 1), window(sched=False)),
    "swapping": lambda: host.swap_finding(facts(), window(swap=64 * 2**20)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_printed_fix_is_real_celery_settings(case: str) -> None:
    finding = CASES[case]()
    assert finding.cause is Cause.HOST and finding.severity > Severity.OK, finding
    check_fix(finding.fix)


def test_the_starved_worker_gets_fewer_processes_than_cores_and_the_neighbour_named() -> None:
    finding = rated(host.cpu_wait_finding(facts("prefork", 2), window(neighbours=NOISY)), 1000.0)
    assert finding.impact_ms == pytest.approx(4.0)  # 40 ms waited over 10 timeslices
    assert finding.evidence["wait_per_timeslice_ms"] == pytest.approx(4.0)
    assert "worker_concurrency = 1" in finding.fix.config
    assert "ffmpeg (pid 4242" in finding.fix.summary
    assert "-O fair" in finding.fix.config and "worker_prefetch_multiplier = 1" in finding.fix.config


def test_no_schedstat_is_a_note_not_a_number() -> None:
    finding = rated(host.cpu_wait_finding(facts(), window(sched=False)), 1000.0)
    assert finding.severity is Severity.INFO and finding.impact_ms == 0.0 and finding.fix is None
    assert finding.evidence["run_queue_measured"] is False
    assert "not measurable" in finding.detail


def test_a_negligible_wait_is_ok_and_an_idle_worker_says_so() -> None:
    assert rated(host.cpu_wait_finding(facts(), window(wait_ns=100_000)), 1000.0).severity is Severity.OK
    idle = rated(host.cpu_wait_finding(facts(), window(wait_ns=0, slices=0)), 1000.0)
    assert idle.severity is Severity.OK and "idle" in idle.title


def test_a_worker_without_forked_children_reconnects_per_update_on_a_database_backend() -> None:
    solo, prefork = facts("solo", 1), facts("prefork", 2)
    (found,) = host.pool_connection_findings(solo)
    assert found.severity is Severity.INFO and "(solo)" in found.title
    assert found.fix is not None and "-P prefork" in found.fix.config
    assert all(line.startswith("#") for line in found.fix.config.splitlines())  # nothing to paste: a CLI flag
    (fine,) = host.pool_connection_findings(prefork)
    assert fine.severity is Severity.OK
