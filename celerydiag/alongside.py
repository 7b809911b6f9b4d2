"""One probe in a forked child process while doctor runs others: the broker beside the backend.

Why: the broker probe spends its ~4 s publishing to RabbitMQ (or Redis) on a fixed schedule,
the backend probe its 1-5 s writing to the result backend; they touch different services, so
run one after the other they only add up. Why a process and not a thread: both are latency
samplers in Python, and threads of one process share the GIL, so one's driver code would sit in
the other's latency samples (4 ORM writer threads hold it for milliseconds at a time). Each
process has its own interpreter; what is still shared is the CPU, and on a loaded 2-core host
that was enough to move the percentiles (interleaved pairs, broker + backend probes, medians):
Redis backend write P50 0.55 ms alone, 1.1 ms overlapped; PostgreSQL backend write P50 6.8 ms
alone, 15.8 ms overlapped; broker P50s within noise. So doctor.OVERLAP is off by default.

Only beside probes that touch neither the broker nor the host as a whole (ALONGSIDE): e2e sends
its tasks through the broker, the host probe measures CPU saturation (ours would show), and a
live capture would count our publishes. Doctor joins the child before any other probe.

The child runs the probe under the same guard (``run_probe``: its --max-seconds cut, its cleanup
stack), with no progress display, and sends back the ProbeResult. Ctrl-C and SIGTERM: the parent
forwards the signal, and waits for the child's cleanup within the signal's grace; a child still
running after that is killed (its exclusive scratch queue dies with its connection, and has an
x-expires anyway).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from typing import Any

from celerydiag import interrupt
from celerydiag.findings import ProbeResult
from celerydiag.probe import Probe, ProbeContext, run_probe
from celerydiag.ui import NullProgress

# probe -> the probes it may run beside (in the parent, while it runs in the child)
ALONGSIDE: dict[str, frozenset[str]] = {"broker": frozenset({"backend", "polling", "serialization"})}
KILL_WAIT_S = 0.5  # after a kill, how long to wait for the child to be gone


class Child:
    """A probe running in a forked process; :meth:`result` joins it."""

    def __init__(self, cls: type[Probe], ctx: ProbeContext) -> None:
        self.name = cls.name
        self.bound_s = ctx.limits.probe_bound_s()
        self.started = time.monotonic()
        fork = multiprocessing.get_context("fork")
        self.receiver, sender = fork.Pipe(duplex=False)
        self.process = fork.Process(target=_child_main, args=(cls, ctx, sender), name=f"celerydiag-{cls.name}",
                                    daemon=True)
        self.process.start()
        sender.close()

    def result(self) -> ProbeResult:
        """Wait for the child's result (at most its probe bound, cleanup grace included, plus a
        second); a child that ends without one is a failed probe with the reason."""
        limit = self.started + self.bound_s + 1.0
        try:
            while not self.receiver.poll(0.05):  # short waits: a signal reaches the main thread at once
                if not self.process.is_alive() and not self.receiver.poll(0):
                    break
                if time.monotonic() > limit:
                    break
            got: Any = self.receiver.recv() if self.receiver.poll(0) else None
        except (EOFError, OSError):
            got = None
        finally:
            self.process.join(KILL_WAIT_S)
            self._kill()
        if isinstance(got, ProbeResult):
            return got
        if isinstance(got, BaseException) and isinstance(got, KeyboardInterrupt):
            raise KeyboardInterrupt
        code = self.process.exitcode
        return ProbeResult.failed(self.name, f"internal error in probe {self.name}: its process ended without a"
                                             f" result (exit {code}; please report; rerun with --traceback)",
                                  time.monotonic() - self.started)

    def stop(self) -> None:
        """After Ctrl-C/SIGTERM in the parent: pass the signal on, give the child's cleanup until the
        signal's bound, then kill what is left."""
        if not self.process.is_alive():
            self._kill()
            return
        signum = signal.SIGTERM if interrupt.exit_code() == interrupt.EXIT_SIGTERM else signal.SIGINT
        try:
            os.kill(self.process.pid or 0, signum)
        except ProcessLookupError:
            return
        until = min(interrupt.stop_by(), time.monotonic() + interrupt.GRACE_S)
        while self.process.is_alive() and time.monotonic() < until:
            self.process.join(0.02)
        self._kill()

    def _kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join(KILL_WAIT_S)
        self.receiver.close()


def _child_main(cls: type[Probe], ctx: ProbeContext, sender: Any) -> None:
    """In the child: the probe under its guard, the result (or the interrupt) sent back."""
    interrupt.requested.clear()
    interrupt.received.clear()
    ctx.progress = NullProgress()  # the parent's display is the parent's
    try:
        result: Any = run_probe(cls(), ctx)
    except KeyboardInterrupt:
        result = KeyboardInterrupt()
    except BaseException as exc:  # noqa: B036 - our bug; the parent reports it as a failed probe
        result = ProbeResult.failed(cls.name, f"internal error in probe {cls.name}: {type(exc).__name__}"
                                              " (please report; rerun with --traceback)")
    try:
        sender.send(result)
    except Exception:  # an unpicklable finding: say so rather than hang the parent
        sender.send(ProbeResult.failed(cls.name, f"internal error in probe {cls.name}: its result could not be"
                                                 " sent back (please report)"))
    sender.close()
    # no interpreter teardown (Celery's, SQLAlchemy's objects inherited from the parent)
    os._exit(0)
