"""The Probe interface, the context a probe may touch, the ordered registry, and the guard.

A probe knows nothing of the terminal. It gets a :class:`ProbeContext` and yields Findings. The
guard (:func:`run_probe`) times it, turns expected trouble (``DiagError``) and our own bugs into a
``failed`` result with one line, and always unwinds the probe's cleanup stack, Ctrl-C included, so
scratch queues, keys and tables never outlive a run.

The registry is the :class:`~celerydiag.findings.Cause` enum: each cause ``x`` has its probe in
``celerydiag/<x>/probe.py`` (the one ``Probe`` subclass there whose ``cause`` is ``x``), and the enum's
member order is the run order. Adding a probe is one ``Cause`` member, ``celerydiag/<x>/__init__.py``
and ``celerydiag/<x>/probe.py`` (README "Adding a probe").
Heavy imports (scapy, SQLAlchemy drivers) stay inside ``run()`` so ``--help`` stays fast.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, ClassVar

from celerydiag import interrupt
from celerydiag.compat import celery_version
from celerydiag.errors import DiagError, describe, one_line
from celerydiag.findings import Cause, Finding, Fix, ProbeResult, ProbeStatus
from celerydiag.measure import CLEANUP_GRACE_S, Budget
from celerydiag.rank import rated
from celerydiag.target import Side, Target, redact
from celerydiag.ui import NullProgress, Progress

log = logging.getLogger("celerydiag")

# The run order is Cause's member order (findings.py): config first because it needs no network (and
# --static runs only the static probes), cheap first, e2e last, host before it (e2e starts a worker
# of its own, which the host probe must not report).
PROBE_MODULE = "celerydiag.{cause}.probe"


_NAME = re.compile(r"^[a-z][a-z0-9-]*$")


CUT_REPEAT_S = 0.25  # once the grace is spent, each further stuck cleanup step gets this long


@dataclass(frozen=True)
class Limits:
    """Bounds every active probe respects: operations, wall time, and per-call timeouts.

    ``max_seconds`` is a hard bound on each probe's ``run()`` (the guard cuts it: see
    :func:`run_probe`), and ``cleanup_grace_s`` on its cleanup after that: a probe's wall time,
    setup and cleanup included, is at most their sum."""

    samples: int = 500
    max_seconds: float = 30.0
    timeout_s: float = 5.0
    updates: int = 250  # e2e: update_state calls observed by the client
    cleanup_grace_s: float = CLEANUP_GRACE_S

    def probe_bound_s(self) -> float:
        """The most one probe may take, cleanup included."""
        return self.max_seconds + self.cleanup_grace_s


@dataclass(frozen=True)
class ProbeOptions:
    """What the user told the probes beyond the bounds in :class:`Limits`, typed, built once by the
    command (``cli/doctor.py`` ``run_report``). ``None`` means "not given": each probe says what it
    assumes instead, so the report can tell a measured input from an assumed one."""

    poll_interval: float | None = None  # seconds between a client's polls (polling probe)
    poll_strategy: str | None = None  # fixed|jitter|backoff|smart|push spec, as in poll-model
    pcap: str | None = None  # a capture file to analyse (network probe)
    iface: str | None = None  # an interface to capture on live (network probe)
    duration: float = 3.0  # seconds of lock-wait sampling (backend), live capture (network), CPU window (host)
    rabbitmq_api: str | None = None  # management API URL (broker probe); may hold a password
    bandwidth_bytes_per_s: float | None = None  # network speed the serialization model assumes


@dataclass
class ProbeContext:
    """Everything a probe may touch. ``scratch`` prefixes every queue, key, task id and table
    it creates; ``cleanup`` holds the undo for each, registered before first use."""

    target: Target
    budget_ms: float = 1000.0
    limits: Limits = field(default_factory=Limits)
    progress: Progress = field(default_factory=NullProgress)
    scratch: str = field(default_factory=lambda: f"celerydiag-{uuid.uuid4().hex[:8]}")
    cleanup: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    options: ProbeOptions = field(default_factory=ProbeOptions)
    latency: dict[str, Any] = field(default_factory=dict)  # e2e fills observed_p50/p99_ms
    # time.monotonic() by which run() must have returned; the guard sets it to start + max_seconds
    # and cuts the probe there (left(), call_timeout(), expired(): its Budget).
    deadline: float = math.inf
    activity: str = ""  # what the probe is doing now, for the line that says where it was cut
    static: bool = False  # doctor --static: a static probe must not touch the network either

    @property
    def celery_version(self) -> tuple[int, ...]:
        return celery_version()

    def budget(self) -> Budget:
        """The guard's deadline as a Budget (inf outside the guard: then nothing is cut short)."""
        return Budget(self.deadline, self.limits.timeout_s, self.limits.cleanup_grace_s)

    def left(self) -> float:
        """Seconds until the deadline, never negative (inf outside the guard)."""
        return self.budget().left()

    def expired(self) -> bool:
        return self.budget().expired()

    def call_timeout(self, timeout_s: float | None = None) -> float:
        """The timeout to give one driver call: ``timeout_s`` (default ``--timeout``), shortened
        to what is left before the deadline, never below MIN_CALL_TIMEOUT_S. Past the deadline
        the guard's cut ends the call anyway."""
        return self.budget().call_timeout(timeout_s)

    def doing(self, activity: str) -> None:
        """Say what comes next ("publishing the warm-up task"): a cut names it."""
        self.activity = activity


class Skip(Exception):
    """Raised by ``run()`` when what it found makes the measurement meaningless (e2e on a broker
    that blocks publishers): the guard cleans up and records the probe as skipped with this
    message as the reason."""


class Probe:
    """Base class. Subclasses set ``name``, ``cause``, a docstring (first line is the summary
    `probe --list` prints), implement ``run`` and, if it may not apply, ``applies``."""

    name: ClassVar[str]
    cause: ClassVar[Cause]
    static: ClassVar[bool] = False  # True when it needs no network (doctor --static)
    # What must be reachable for it to run: checked once before any probe (access/reach.py); a probe
    # whose side is down fails with that side's one line and the others still run.
    needs: ClassVar[frozenset[Side]] = frozenset()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if not _NAME.match(getattr(cls, "name", "")):
            raise TypeError(f"{cls.__name__}.name must match {_NAME.pattern}")
        if not (cls.__doc__ or "").strip():
            raise TypeError(f"{cls.__name__} needs a docstring: its first line is its help")
        if not isinstance(getattr(cls, "cause", None), Cause):
            raise TypeError(f"{cls.__name__}.cause must be a Cause")

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0]

    def applies(self, ctx: ProbeContext) -> str | None:
        """None to run, or the reason this probe does not apply (to the target, or to what the
        user gave it: the network probe with no capture). The guard records it as ``skipped``."""
        return None

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        raise NotImplementedError


# The options each probe reads (its ProbeContext.limits / .options fields), by their command-line
# names. One table, beside the registry: each option's --help names its readers from it, and
# doctor/probe refuse an option that no selected probe reads (celerydiag/cli/reads.py). A probe
# that starts reading another option adds it here; a new Cause adds its line (a test checks each
# Cause has one).
READS: Mapping[Cause, frozenset[str]] = MappingProxyType({
    Cause.CONFIG: frozenset(),
    Cause.BROKER: frozenset({"--timeout", "--max-seconds", "--samples", "--rabbitmq-api"}),
    Cause.BACKEND: frozenset({"--timeout", "--max-seconds", "--samples", "--duration"}),
    Cause.POLLING: frozenset({"--poll-interval", "--poll-strategy", "--duration", "--timeout"}),
    Cause.SERIALIZATION: frozenset({"--timeout", "--max-seconds"}),
    Cause.NETWORK: frozenset({"--pcap", "--iface", "--duration"}),
    Cause.HOST: frozenset({"--max-seconds", "--duration"}),
    Cause.E2E: frozenset({"--timeout", "--max-seconds", "--updates"}),
})


def probe_classes() -> tuple[type[Probe], ...]:
    """Every cause's probe, in the Cause enum's order (the registry: see the module docstring)."""
    return tuple(probe_of(cause) for cause in Cause)


def probe_of(cause: Cause) -> type[Probe]:
    """The one Probe subclass defined in ``celerydiag/<cause>/probe.py`` whose ``cause`` is ``cause``;
    a missing or ambiguous one is our bug, said plainly at import time rather than as a skipped probe."""
    module = importlib.import_module(PROBE_MODULE.format(cause=cause.value))
    found = [obj for obj in vars(module).values()
             if isinstance(obj, type) and issubclass(obj, Probe) and obj.__module__ == module.__name__
             and obj.cause is cause]
    if len(found) != 1:
        raise TypeError(f"{module.__name__} must define exactly one Probe subclass with cause "
                        f"Cause.{cause.name}; found {[cls.__name__ for cls in found]}")
    return found[0]


def probe_names() -> tuple[str, ...]:
    return tuple(cls.name for cls in probe_classes())


def get_probe(name: str) -> type[Probe]:
    for cls in probe_classes():
        if cls.name == name:
            return cls
    raise DiagError(f"no probe named {name!r}", f"choose one of: {', '.join(probe_names())}")


# Connection failures of the libraries Celery talks through, named so none has to be imported.
CONNECTION_ERRORS = frozenset({
    "redis.exceptions.ConnectionError", "redis.exceptions.TimeoutError",
    "sqlalchemy.exc.OperationalError", "sqlalchemy.exc.InterfaceError",
    "amqp.exceptions.ConnectionError", "amqp.exceptions.RecoverableConnectionError",
    "kombu.exceptions.OperationalError",
})


def lost_connection(exc: BaseException) -> bool:
    """An OSError (refused, reset, timed out) or a driver's connection error."""
    return isinstance(exc, OSError) or any(
        f"{cls.__module__}.{cls.__qualname__}" in CONNECTION_ERRORS for cls in type(exc).__mro__)


def redacted(finding: Finding, secrets: Sequence[str]) -> Finding:
    """The finding with every string it carries (title, detail, evidence at any depth, fix)
    scrubbed of the target's passwords: the guard applies it to every probe's findings."""
    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            return redact(value, secrets)
        if isinstance(value, Mapping):
            return {k: scrub(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(scrub(v) for v in value)
        return value

    fix = finding.fix and Fix(scrub(finding.fix.summary), scrub(finding.fix.config), finding.fix.docs)
    return replace(finding, title=scrub(finding.title), detail=scrub(finding.detail),
                   evidence=scrub(dict(finding.evidence)), fix=fix)


def _on_internal_error(probe: Probe, exc: Exception) -> None:
    """Tests replace this to re-raise; users get a failed probe with one line."""
    log.debug("internal error in probe %s", probe.name, exc_info=exc)


def run_probe(probe: Probe, ctx: ProbeContext) -> ProbeResult:
    """Run one probe under its bounds: ``run()`` is cut at ``ctx.deadline`` (start +
    ``--max-seconds``) wherever it blocks, then its cleanup stack unwinds within the cleanup grace
    (each step still stuck after that is cut too), Ctrl-C and SIGTERM included. Findings made
    before a cut are kept; the result's reason says what was cut. Ctrl-C re-raises after cleanup."""
    interrupt.check()
    reason = probe.applies(ctx)
    if reason:
        return ProbeResult.skipped(probe.name, reason)
    started = time.perf_counter()
    ctx.deadline = time.monotonic() + ctx.limits.max_seconds
    ctx.activity = ""
    ctx.progress.start(probe.name)
    findings: list[Finding] = []
    ctx.latency = {}
    stopped: BaseException | None = None
    try:
        # repeat: the probe's own finally blocks (a worker's join) are cut too, each after CUT_REPEAT_S
        with interrupt.deadline(ctx.deadline, repeat_s=CUT_REPEAT_S):
            findings.extend(probe.run(ctx))
    except BaseException as exc:  # noqa: B036 - every outcome is judged below, after cleanup
        stopped = exc
    try:
        left_behind = _unwind(ctx, interrupted=interrupt.requested.is_set()
                              or isinstance(stopped, KeyboardInterrupt))
    finally:
        ctx.progress.done()
        ctx.cleanup = contextlib.ExitStack()
    elapsed = time.perf_counter() - started
    if interrupt.requested.is_set() or isinstance(stopped, KeyboardInterrupt):
        raise KeyboardInterrupt from stopped  # a library may have turned Ctrl-C into its own error
    result = _judged(probe, ctx, stopped, findings, elapsed)
    if left_behind:
        result = replace(result, reason="; ".join(r for r in (result.reason, left_behind) if r))
    return result


def _unwind(ctx: ProbeContext, interrupted: bool) -> str:
    """Run the cleanup stack within the grace (shorter after Ctrl-C/SIGTERM), cutting each step
    still stuck after it. Returns "" or one line saying the cleanup was cut."""
    now = time.monotonic()
    # Cut or not, the probe ends by deadline + grace; after a signal, by the signal's own bound.
    until = max(min(now, ctx.deadline) + ctx.limits.cleanup_grace_s, now + CUT_REPEAT_S)
    if interrupted:
        until = min(until, interrupt.stop_by())
    stated = interrupt.GRACE_S if interrupted else ctx.limits.cleanup_grace_s
    cut = False
    stack = ctx.cleanup
    with interrupt.deadline(until, repeat_s=CUT_REPEAT_S) as bound:
        try:
            stack.close()
        except (Exception, interrupt.Overrun):  # a callback that did not use quietly(); or the cut
            cut = bound.fired
        except KeyboardInterrupt:  # a second Ctrl-C during cleanup: the rest of the stack has run
            if not interrupted:
                raise
        cut = cut or bound.fired
    log.debug("cleanup %s after %.2f s", "cut" if cut else "done", time.monotonic() - now)
    if cut:
        return (f"its cleanup was cut after the {stated:g} s grace (a call to the target did not return); "
                "what it made expires by itself (x-expires, result_expires)")
    return ""


def _judged(probe: Probe, ctx: ProbeContext, stopped: BaseException | None, findings: list[Finding],
            elapsed: float) -> ProbeResult:
    """The result for how ``run()`` ended: normally, cut, skipped, failed, or our bug."""
    secrets = ctx.target.secrets()
    kept = tuple(rated(redacted(f, secrets), ctx.budget_ms) for f in findings)
    if stopped is None:
        # Rated here too (rank decides), so a ProbeResult never holds a placeholder severity.
        return ProbeResult(probe.name, ProbeStatus.RAN, "", elapsed, kept, dict(ctx.latency))
    if isinstance(stopped, interrupt.Overrun) or (isinstance(stopped, Exception) and ctx.expired()):
        where = f" while {ctx.activity}" if ctx.activity else ""
        kept_words = f"; the {len(kept)} findings it made before are kept" if kept else ""
        return ProbeResult(probe.name, ProbeStatus.FAILED,
                           ctx.target.redact(f"cut at its --max-seconds bound ({ctx.limits.max_seconds:g} s)"
                                             f"{where}{kept_words}"), elapsed, kept, dict(ctx.latency))
    if isinstance(stopped, Skip):
        return ProbeResult.skipped(probe.name, ctx.target.redact(str(stopped)))
    if isinstance(stopped, DiagError):
        return ProbeResult.failed(probe.name, ctx.target.redact(str(stopped)), elapsed)
    if not isinstance(stopped, Exception):  # SystemExit, GeneratorExit: not ours to turn into a result
        raise stopped
    if lost_connection(stopped):  # the target went away mid-probe: its failure, not our bug
        return ProbeResult.failed(
            probe.name, ctx.target.redact(f"lost the connection to the target during the probe: {describe(stopped)}"),
            elapsed)
    _on_internal_error(probe, stopped)
    # The exception rides along: the command prints its traceback under --traceback and exits 4
    # once the report is out (cli.ProbesCrashed), so a bug never passes for findings.
    return replace(ProbeResult.failed(
        probe.name,
        ctx.target.redact(f"internal error in probe {probe.name}: {one_line(stopped)}"
                          " (please report; rerun with --traceback)"),
        elapsed), error=stopped)
