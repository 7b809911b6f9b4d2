"""One sampling window over the host and its Celery workers: CPU use, run-queue wait, swap.

Two snapshots ``seconds`` apart and their differences; nothing runs in between, so the window adds
no load of its own. psutil gives what it covers on every OS (host CPU times with iowait and steal,
per-process CPU seconds and involuntary context switches, swap in/out counters, load average).
Linux alone gives what psutil lacks, read from /proc:

- ``/proc/<pid>/task/<tid>/schedstat``: field 2 is the nanoseconds the thread waited on a run queue
  (runnable, no CPU), field 3 the timeslices it ran. Over the window, wait / timeslices is how long
  a worker thread waits for a CPU each time it becomes runnable: the delay before an
  ``update_state`` (or the wake-up after its backend round trip) can even run.
- ``/proc/pressure/cpu`` and ``/proc/pressure/memory`` (PSI): microseconds in which some task
  waited for a CPU, or stalled on memory (reclaim, swap-in).

Where they are missing (not Linux, PSI off) the window says so in ``notes`` instead of failing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from celerydiag import interrupt

TOP_NEIGHBOURS = 3
SLEEP_SLICE_S = 0.1  # how often the wait looks at Ctrl-C


@dataclass(frozen=True)
class Snapshot:
    at: float
    cpu: Any  # psutil's scputimes
    swap_in_bytes: int
    swap_out_bytes: int
    cpu_pressure_us: int | None
    memory_pressure_us: int | None
    cpu_s: Mapping[int, float]  # every readable process: CPU seconds so far
    names: Mapping[int, str]
    involuntary: Mapping[int, int]  # worker processes: involuntary context switches so far
    sched: Mapping[int, Mapping[int, tuple[int, int]]] | None  # pid -> tid -> (wait ns, timeslices)


@dataclass(frozen=True)
class WorkerUse:
    """One worker (main process and pool processes) over the window."""

    cpu_s: float
    involuntary_switches: int
    run_queue_wait_ns: int | None
    timeslices: int | None

    @property
    def wait_per_slice_ms(self) -> float | None:
        if self.run_queue_wait_ns is None or not self.timeslices:
            return None
        return self.run_queue_wait_ns / self.timeslices / 1e6


@dataclass(frozen=True)
class Neighbour:
    pid: int
    name: str
    cpu_s: float


@dataclass(frozen=True)
class Window:
    seconds: float
    cpus: int
    busy_ratio: float
    steal_ratio: float
    iowait_ratio: float
    load_1m: float | None
    cpu_pressure_ratio: float | None
    memory_stall_ms: float | None
    swap_in_bytes: int
    swap_out_bytes: int
    workers: Mapping[int, WorkerUse]  # by the worker's main pid
    neighbours: tuple[Neighbour, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def run_queue_measured(self) -> bool:
        return any(w.run_queue_wait_ns is not None for w in self.workers.values())


def sample(workers: Mapping[int, Sequence[int]], seconds: float, exclude: Iterable[int] = ()) -> Window:
    """``workers``: main pid -> every pid of that worker. ``exclude``: our own processes, never a
    noisy neighbour of the user's."""
    pids = [pid for tree in workers.values() for pid in tree]
    before = snapshot(pids)
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        interrupt.check()
        time.sleep(min(SLEEP_SLICE_S, left))
    after = snapshot(pids)
    return difference(before, after, workers, set(exclude))


def snapshot(worker_pids: Sequence[int]) -> Snapshot:
    swap = psutil.swap_memory()
    cpu_s: dict[int, float] = {}
    names: dict[int, str] = {}
    for proc in psutil.process_iter(["pid", "name", "cpu_times"]):
        times = proc.info.get("cpu_times")
        if times is not None:
            cpu_s[proc.info["pid"]] = float(times.user + times.system)
            names[proc.info["pid"]] = str(proc.info.get("name") or "?")
    involuntary: dict[int, int] = {}
    for pid in worker_pids:
        try:
            involuntary[pid] = int(psutil.Process(pid).num_ctx_switches().involuntary)
        except psutil.Error:
            continue
    return Snapshot(time.monotonic(), psutil.cpu_times(), int(swap.sin), int(swap.sout),
                    pressure_total_us("cpu"), pressure_total_us("memory"), cpu_s, names, involuntary,
                    run_queue_waits(worker_pids))


def run_queue_waits(pids: Sequence[int]) -> dict[int, dict[int, tuple[int, int]]] | None:
    """Per process, per thread: (ns waited on a run queue, timeslices), or None off Linux."""
    if not sys.platform.startswith("linux") or not os.path.exists("/proc/self/task"):
        return None
    found: dict[int, dict[int, tuple[int, int]]] = {}
    for pid in pids:
        threads: dict[int, tuple[int, int]] = {}
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
                    fields = f.read().split()
                threads[int(tid)] = (int(fields[1]), int(fields[2]))
            except (OSError, ValueError, IndexError):  # the thread ended between listdir and open
                continue
        found[pid] = threads
    return found


def pressure_total_us(resource: str) -> int | None:
    """The ``some`` line's ``total=`` of /proc/pressure/<resource> (PSI, Linux 4.20+), or None."""
    try:
        with open(f"/proc/pressure/{resource}", encoding="ascii") as f:
            for line in f:
                if line.startswith("some "):
                    return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def difference(before: Snapshot, after: Snapshot, workers: Mapping[int, Sequence[int]],
               exclude: set[int]) -> Window:
    seconds = max(after.at - before.at, 1e-6)
    cpus = psutil.cpu_count() or 1
    deltas = {f: max(getattr(after.cpu, f) - getattr(before.cpu, f), 0.0) for f in after.cpu._fields}
    # psutil's own cpu_percent rule: guest time is already counted in user time.
    total = sum(v for f, v in deltas.items() if f not in ("guest", "guest_nice")) or 1e-9
    idle = deltas.get("idle", 0.0) + deltas.get("iowait", 0.0)
    notes: list[str] = []
    if after.sched is None:
        notes.append("run-queue wait is not measurable here: /proc/<pid>/task/*/schedstat is Linux-only")
    cpu_pressure = _pressure_ratio(before.cpu_pressure_us, after.cpu_pressure_us, seconds)
    memory_stall = _pressure_delta_ms(before.memory_pressure_us, after.memory_pressure_us)
    if cpu_pressure is None:
        notes.append("CPU pressure (PSI, /proc/pressure/cpu) is not available on this kernel")
    uses = {main: _use(tree, before, after) for main, tree in workers.items()}
    mine = {pid for tree in workers.values() for pid in tree} | exclude
    neighbours = sorted(
        (Neighbour(pid, after.names.get(pid, "?"), cpu - before.cpu_s[pid])
         for pid, cpu in after.cpu_s.items() if pid in before.cpu_s and pid not in mine and pid > 0),
        key=lambda n: -n.cpu_s)
    try:
        load_1m: float | None = psutil.getloadavg()[0]
    except (OSError, AttributeError):
        load_1m = None
    return Window(
        seconds=seconds, cpus=cpus, busy_ratio=min(1.0, (total - idle) / total),
        steal_ratio=deltas.get("steal", 0.0) / total, iowait_ratio=deltas.get("iowait", 0.0) / total,
        load_1m=load_1m, cpu_pressure_ratio=cpu_pressure, memory_stall_ms=memory_stall,
        swap_in_bytes=max(after.swap_in_bytes - before.swap_in_bytes, 0),
        swap_out_bytes=max(after.swap_out_bytes - before.swap_out_bytes, 0),
        workers=uses, neighbours=tuple(n for n in neighbours[:TOP_NEIGHBOURS] if n.cpu_s > 0),
        notes=tuple(notes))


def _use(tree: Sequence[int], before: Snapshot, after: Snapshot) -> WorkerUse:
    """Sums over the processes (and, for the run queue, the threads) present at both ends."""
    both = [pid for pid in tree if pid in before.cpu_s and pid in after.cpu_s]
    cpu = sum(max(after.cpu_s[p] - before.cpu_s[p], 0.0) for p in both)
    switches = sum(max(after.involuntary[p] - before.involuntary[p], 0) for p in tree
                   if p in before.involuntary and p in after.involuntary)
    if before.sched is None or after.sched is None:
        return WorkerUse(cpu, switches, None, None)
    wait = slices = 0
    for pid in tree:
        old, new = before.sched.get(pid, {}), after.sched.get(pid, {})
        for tid in old.keys() & new.keys():
            wait += max(new[tid][0] - old[tid][0], 0)
            slices += max(new[tid][1] - old[tid][1], 0)
    return WorkerUse(cpu, switches, wait, slices)


def _pressure_ratio(before: int | None, after: int | None, seconds: float) -> float | None:
    if before is None or after is None:
        return None
    return min(max(after - before, 0) / 1e6 / seconds, 1.0)


def _pressure_delta_ms(before: int | None, after: int | None) -> float | None:
    if before is None or after is None:
        return None
    return max(after - before, 0) / 1000
