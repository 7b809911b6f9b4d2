"""The doctor's host probe: the target's Celery workers on this machine and whether they get a CPU.

A worker that waits for a CPU delays every ``update_state``: the task thread must be scheduled to
make the call, and again after each backend round trip (Redis: a GET, then MULTI/SETEX/PUBLISH/EXEC;
celery-facts A.1). The run-queue wait per timeslice of the worker's threads, measured over one
window, is that delay in milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from celerydiag.findings import Cause, Finding, Fix, Severity, delay
from celerydiag.probe import Probe, ProbeContext
from celerydiag.target import Target

if TYPE_CHECKING:  # psutil stays out of `--help` and `probe --list`
    from celerydiag.host.window import Window
    from celerydiag.host.workers import Census, Worker

DEFAULT_WINDOW_S = 3.0
NEGLIGIBLE_WAIT_MS = 1.0  # below a millisecond per wake-up a state update does not notice
SATURATED_RATIO = 0.9  # host CPU busy over the window
PRESSURE_RATIO = 0.2  # PSI cpu "some": a fifth of the time something waited for a CPU
MAX_LISTED_CONNECTIONS = 20
DOCS_CONCURRENCY = "https://docs.celeryq.dev/en/stable/userguide/workers.html#concurrency"
DOCS_PREFETCH = "https://docs.celeryq.dev/en/stable/userguide/optimizing.html#prefork-pool-prefetch-settings"
DOCS_ROUTING = "https://docs.celeryq.dev/en/stable/userguide/routing.html#manual-routing"
DOCS_MEMORY = "https://docs.celeryq.dev/en/stable/userguide/workers.html#max-memory-per-child-setting"


class HostProbe(Probe):
    """Host: the target's Celery workers on this machine, their pool, CPU starvation and swap (no network).

    Finds the running `celery worker` processes that use the target (a TCP connection to its broker
    or backend, or -A naming --app), reads their pool and concurrency from the command line and
    their pool processes, then samples one window of --duration seconds (default 3): host and
    worker CPU, the workers' run-queue wait per timeslice (Linux /proc/<pid>/task/*/schedstat),
    CPU and memory pressure (PSI), swap in/out. Sends nothing, creates nothing. Skipped when no
    worker of the target runs on this host.
    """

    name = "host"
    cause = Cause.HOST

    def __init__(self) -> None:
        self._census: Census | None = None

    def applies(self, ctx: ProbeContext) -> str | None:
        from celerydiag.host.workers import census, own_pids

        self._census = found = census(ctx.target, exclude=own_pids())
        if found.matched:
            return None
        return skip_reason(found)

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        from celerydiag.host.window import sample
        from celerydiag.host.workers import census, own_pids

        mine = own_pids()
        found = self._census or census(ctx.target, exclude=mine)
        if not found.matched:
            return
        seconds = min(float(ctx.options.duration or DEFAULT_WINDOW_S), ctx.limits.max_seconds)
        window = sample({w.pid: w.pids for w in found.matched}, seconds, exclude=mine)
        facts = [worker_facts(w, ctx.target, window) for w in found.matched]
        yield workers_finding(found, facts, window)
        yield cpu_wait_finding(facts, window)
        yield saturation_finding(facts, window)
        yield swap_finding(facts, window)
        if ctx.target.backend_scheme == "db" and "sqlite" not in ctx.target.backend_url.split("://", 1)[0]:
            yield from pool_connection_findings(facts)


def skip_reason(found: Census) -> str:
    others = len(found.unmatched) + len(found.uninspectable)
    if not others:
        return "no Celery worker runs on this host (no `celery ... worker` process)"
    text = (f"no Celery worker on this host uses this target: {others} other worker(s) found, none with a "
            "connection to the target's broker or backend, none with -A naming --app")
    if found.uninspectable:
        text += (f"; {len(found.uninspectable)} belong to another user, whose connections only that user "
                 "or root may read")
    return text


def worker_facts(worker: Worker, target: Target, window: Window) -> dict[str, Any]:
    """One worker as evidence: what it runs (command line, settings when -A is the target's app)."""
    import psutil

    from celerydiag.host.workers import resolve_concurrency, resolve_pool, same_app

    conf = None
    if target.app is not None and worker.command.app and target.app_name and same_app(worker.command.app,
                                                                                        target.app_name):
        conf = target.conf
    pool = resolve_pool(worker.command, conf.worker_pool if conf is not None else None)
    concurrency, source = resolve_concurrency(worker.command, pool, psutil.cpu_count() or 1,
                                              conf.worker_concurrency if conf is not None else None)
    use = window.workers.get(worker.pid)
    conns = worker.connections or ()
    facts: dict[str, Any] = {
        "pid": str(worker.pid), "node": worker.command.nodename or "", "app": worker.command.app or "",
        "user": worker.username or "", "pool": pool, "concurrency_count": concurrency,
        "concurrency_from": source, "pool_processes_count": len(worker.children),
        "pool_pids": [str(p) for p in worker.children], "queues": list(worker.command.queues),
        "optimization": worker.command.optimization or "default", "matched_by": list(worker.matched_by),
        "broker_connections_count": worker.connection_count("broker"),
        "backend_connections_count": worker.connection_count("backend"),
        "connections": [f"pid {c.pid} {c.local} -> {c.remote} {c.status} ({'+'.join(c.roles)})"
                        for c in conns if c.roles][:MAX_LISTED_CONNECTIONS],
    }
    if use is not None:
        facts["cpu_ratio"] = round(use.cpu_s / window.seconds, 4)  # cores' worth of CPU it used
        facts["involuntary_switches_count"] = use.involuntary_switches
        if use.run_queue_wait_ns is not None:
            facts["run_queue_wait_ms"] = round(use.run_queue_wait_ns / 1e6, 3)
            facts["timeslices_count"] = use.timeslices
            wait = use.wait_per_slice_ms
            facts["wait_per_timeslice_ms"] = round(wait, 4) if wait is not None else None
    return facts


def workers_finding(found: Census, facts: Sequence[dict[str, Any]], window: Window) -> Finding:
    names = ", ".join(f"{f['pool']} x{f['concurrency_count']} (pid {f['pid']})" for f in facts)
    lines = []
    for f in facts:
        processes = f", {f['pool_processes_count']} pool process(es)" if f["pool"] == "prefork" else ""
        line = (f"pid {f['pid']}{' ' + f['node'] if f['node'] else ''}: pool {f['pool']}, concurrency "
                f"{f['concurrency_count']} ({f['concurrency_from']}){processes}; "
                f"{f['broker_connections_count']} TCP connection(s) to the broker, "
                f"{f['backend_connections_count']} to the backend; matched by {', '.join(f['matched_by'])}.")
        if found.endpoints and not f["broker_connections_count"] and not f["backend_connections_count"]:
            line += (" It holds no connection to the target's broker or backend: it may run with other settings"
                     " (environment, config module) than the target measured here.")
        if f["pool"] == "prefork" and f["pool_processes_count"] and f["pool_processes_count"] != f["concurrency_count"]:
            line += (f" It runs {f['pool_processes_count']} pool processes, not {f['concurrency_count']}: the"
                     " app's worker_concurrency or --autoscale decides.")
        lines.append(line)
    evidence: dict[str, Any] = {"workers": list(facts), "window_s": round(window.seconds, 3),
                                "other_workers_count": len(found.unmatched),
                                "uninspectable_workers_count": len(found.uninspectable),
                                "endpoints": [f"{e.role} {e.label()}" for e in found.endpoints]}
    return Finding("host.workers", Cause.HOST, Severity.INFO,
                   f"{len(facts)} Celery worker(s) of this target on this host: {names}",
                   detail=" ".join(lines), evidence=evidence)


def cpu_wait_finding(facts: Sequence[dict[str, Any]], window: Window) -> Finding:
    """The measured milliseconds: run-queue wait per timeslice over every worker thread."""
    if not window.run_queue_measured:
        return Finding("host.cpu-wait", Cause.HOST, Severity.INFO,
                       "how long the workers wait for a CPU is not measurable on this system",
                       detail="; ".join(window.notes) + ". host.cpu-saturation has what psutil measures.",
                       evidence={"run_queue_measured": False, "window_s": round(window.seconds, 3)})
    wait_ns = sum(u.run_queue_wait_ns or 0 for u in window.workers.values())
    slices = sum(u.timeslices or 0 for u in window.workers.values())
    evidence: dict[str, Any] = {
        "run_queue_measured": True, "window_s": round(window.seconds, 3),
        "run_queue_wait_ms": round(wait_ns / 1e6, 3), "timeslices_count": slices,
        "involuntary_switches_count": sum(u.involuntary_switches for u in window.workers.values()),
        "host_busy_ratio": round(window.busy_ratio, 4), "cpu_pressure_ratio": _r(window.cpu_pressure_ratio),
        "worst_worker_wait_per_timeslice_ms": max(
            (f["wait_per_timeslice_ms"] for f in facts if f.get("wait_per_timeslice_ms") is not None), default=0.0),
    }
    if not slices:
        evidence["wait_per_timeslice_ms"] = 0.0
        return Finding("host.cpu-wait", Cause.HOST, Severity.OK,
                       f"the workers did not run during the {window.seconds:.1f} s window (idle): no CPU wait to see",
                       detail="Rerun while the workers run tasks to measure how long they wait for a CPU.",
                       evidence=evidence)
    per_slice_ms = wait_ns / slices / 1e6
    evidence["wait_per_timeslice_ms"] = round(per_slice_ms, 4)
    detail = (f"Over {window.seconds:.1f} s the workers' threads ran {slices} timeslices and waited "
              f"{wait_ns / 1e6:.1f} ms on the run queue in all: {per_slice_ms:.2f} ms each time they became "
              "runnable (Linux schedstat). Every update_state waits that long before it runs, and again after "
              f"each backend round trip. Host CPU {window.busy_ratio:.0%} busy on {window.cpus} core(s)"
              + (f", PSI cpu some {window.cpu_pressure_ratio:.0%}" if window.cpu_pressure_ratio is not None else "")
              + ".")
    if per_slice_ms < NEGLIGIBLE_WAIT_MS:
        return Finding("host.cpu-wait", Cause.HOST, Severity.OK,
                       f"the workers get a CPU within {per_slice_ms:.2f} ms of becoming runnable",
                       detail=detail, impact_ms=per_slice_ms, evidence=evidence)
    return delay("host.cpu-wait", Cause.HOST, per_slice_ms,
                 f"the workers wait {per_slice_ms:.1f} ms for a CPU each time they wake: every update_state "
                 "waits too", detail=detail, evidence=evidence, fix=starved_fix(facts, window))


def saturation_finding(facts: Sequence[dict[str, Any]], window: Window) -> Finding:
    worker_cores = sum(float(f.get("cpu_ratio") or 0.0) for f in facts)
    evidence: dict[str, Any] = {
        "window_s": round(window.seconds, 3), "cpus_count": window.cpus,
        "host_busy_ratio": round(window.busy_ratio, 4), "steal_ratio": round(window.steal_ratio, 4),
        "iowait_ratio": round(window.iowait_ratio, 4),
        "load_1m_per_cpu_ratio": _r(window.load_1m / window.cpus if window.load_1m is not None else None),
        "cpu_pressure_ratio": _r(window.cpu_pressure_ratio), "workers_cpu_ratio": round(worker_cores, 4),
        "neighbours": [{"pid": str(n.pid), "name": n.name, "cpu_ratio": round(n.cpu_s / window.seconds, 4)}
                       for n in window.neighbours],
        "notes": list(window.notes),
    }
    busy = (window.busy_ratio >= SATURATED_RATIO or (window.cpu_pressure_ratio or 0.0) >= PRESSURE_RATIO
            or window.steal_ratio >= 0.1)
    neighbours = ", ".join(f"{n.name} (pid {n.pid}) {n.cpu_s / window.seconds:.2f} cores"
                           for n in window.neighbours) or "none"
    detail = (f"Over {window.seconds:.1f} s: host CPU {window.busy_ratio:.0%} busy on {window.cpus} core(s) "
              f"(steal {window.steal_ratio:.0%}, iowait {window.iowait_ratio:.0%}); the workers used "
              f"{worker_cores:.2f} cores; the busiest other processes: {neighbours}. Its cost in milliseconds is "
              "host.cpu-wait.")
    if not busy:
        return Finding("host.cpu-saturation", Cause.HOST, Severity.OK,
                       f"the host's CPUs are not saturated ({window.busy_ratio:.0%} busy)", detail=detail,
                       evidence=evidence)
    fix = None if window.run_queue_measured else starved_fix(facts, window)
    return Finding("host.cpu-saturation", Cause.HOST, Severity.INFO,
                   f"the host's CPUs are saturated ({window.busy_ratio:.0%} busy"
                   + (f", CPU pressure {window.cpu_pressure_ratio:.0%}" if window.cpu_pressure_ratio else "") + ")",
                   detail=detail, evidence=evidence, fix=fix)


def swap_finding(facts: Sequence[dict[str, Any]], window: Window) -> Finding:
    evidence: dict[str, Any] = {"window_s": round(window.seconds, 3), "swap_in_bytes": window.swap_in_bytes,
                                "swap_out_bytes": window.swap_out_bytes,
                                "memory_stall_ms": _r(window.memory_stall_ms)}
    if not window.swap_in_bytes and not window.swap_out_bytes:
        return Finding("host.swap", Cause.HOST, Severity.OK,
                       f"no swapping during the {window.seconds:.1f} s window", evidence=evidence)
    stall = (f"; tasks stalled on memory for {window.memory_stall_ms:.0f} ms in all (PSI memory some)"
             if window.memory_stall_ms is not None else "")
    return Finding(
        "host.swap", Cause.HOST, Severity.INFO,
        f"the host swapped during the window: {window.swap_in_bytes / 2**20:.1f} MiB in, "
        f"{window.swap_out_bytes / 2**20:.1f} MiB out",
        detail=(f"Over {window.seconds:.1f} s{stall}. A worker whose pages were swapped out waits for the disk "
                "before its next update_state; how much of that falls on a state update is not measured here."),
        evidence=evidence,
        fix=Fix("Keep the workers in RAM: fewer pool processes, and recycle a pool process that grows "
                "(limit in KiB):",
                config=("worker_max_memory_per_child = 512_000  # KiB; the process is replaced after its task\n"
                        f"worker_concurrency = {_fewer(facts, window.cpus)}  # fewer processes, less memory\n"),
                docs=(DOCS_MEMORY, DOCS_CONCURRENCY)))


def pool_connection_findings(facts: Sequence[dict[str, Any]]) -> Iterator[Finding]:
    """celery-facts A.2: Celery's SessionManager pools database connections only in forked prefork
    children; in a solo, threads, gevent or eventlet worker every store_result() (each update_state)
    builds a NullPool engine and opens a new connection (celery#2661, #3032)."""
    unpooled = [f for f in facts if f["pool"] != "prefork"]
    if not unpooled:
        yield Finding("host.db-connection-per-update", Cause.HOST, Severity.OK,
                      "the workers run the prefork pool: each pool process reuses its database connections",
                      evidence={"pools": [f["pool"] for f in facts]})
        return
    names = ", ".join(f"pid {f['pid']} ({f['pool']})" for f in unpooled)
    yield Finding(
        "host.db-connection-per-update", Cause.HOST, Severity.INFO,
        f"{names}: every update_state opens a new database connection",
        detail=("On the database result backend Celery's SessionManager caches an engine only in forked prefork "
                "children; a solo, threads, gevent or eventlet worker builds a NullPool engine per operation, "
                "so each store_result() (every update_state) pays a TCP connect, authentication and dialect "
                "initialisation before its write. `celerydiag probe backend` measures the connect cost."),
        evidence={"pools": [f["pool"] for f in unpooled], "workers": [f["pid"] for f in unpooled]},
        fix=Fix("Run the workers whose tasks report progress with the prefork pool (-P prefork), where each pool "
                "process keeps its connections; -P on the command line wins over worker_pool.",
                config="# start the worker with: celery -A proj worker -P prefork\n",
                docs=(DOCS_CONCURRENCY,)))


def starved_fix(facts: Sequence[dict[str, Any]], window: Window) -> Fix:
    """What to do for a worker that waits for a CPU: free a core, move the neighbour, separate the
    progress-heavy tasks. Every name assigned is a Celery setting (tests/unit/test_host_fixes.py)."""
    neighbour = next((n for n in window.neighbours
                      if n.cpu_s / window.seconds > sum(float(f.get("cpu_ratio") or 0) for f in facts)), None)
    summary = ("Give the workers a CPU when a state is due: "
               + (f"move {neighbour.name} (pid {neighbour.pid}, {neighbour.cpu_s / window.seconds:.2f} cores) "
                  "off this host or lower its priority (nice), and " if neighbour else "")
               + "run fewer pool processes than cores for CPU-bound tasks; give progress-heavy tasks a queue "
               "and a worker of their own.")
    prefork = any(f["pool"] == "prefork" for f in facts)
    lines = [f"# CPU-bound tasks: fewer pool processes than the {window.cpus} core(s) leaves a core for the worker's",
             "# main process and for the wake-ups of update_state (or start the worker with -c N)",
             f"worker_concurrency = {_fewer(facts, window.cpus)}"]
    if prefork:
        lines += ["# prefork: reserve one task per process and start the worker with `-O fair`, so a task",
                  "# is not held behind a long one in a busy process",
                  "worker_prefetch_multiplier = 1"]
    lines += ["# progress-heavy tasks on a queue of their own, served by their own worker:",
              "#   celery -A proj worker -Q progress -c 1",
              'task_routes = {"proj.tasks.report_progress": {"queue": "progress"}}  # your task\'s name']
    return Fix(summary, "\n".join(lines) + "\n", (DOCS_CONCURRENCY, DOCS_PREFETCH, DOCS_ROUTING))


def _fewer(facts: Sequence[dict[str, Any]], cpus: int) -> int:
    """One process fewer than the cores (at least 1), or fewer than today if that is already below."""
    today = max((int(f["concurrency_count"]) for f in facts), default=cpus)
    return max(1, min(cpus - 1, today - 1) if today > 1 else 1)


def _r(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None
