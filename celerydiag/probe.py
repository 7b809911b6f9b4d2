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
from celerydiag.rank import rated
from celerydiag.target import Side, Target, redact
from celerydiag.ui import NullProgress, Progress

log = logging.getLogger("celerydiag")

# The run order is Cause's member order (findings.py): config first because it needs no network (and
# --static runs only the static probes), cheap first, e2e last, host before it (e2e starts a worker
# of its own, which the host probe must not report).
PROBE_MODULE = "celerydiag.{cause}.probe"


_NAME = re.compile(r"^[a-z][a-z0-9-]*$")


@dataclass(frozen=True)
class Limits:
    """Bounds every active probe respects: operations, wall time, and per-call timeouts."""

    samples: int = 500
    max_seconds: float = 30.0
    timeout_s: float = 5.0
    updates: int = 250  # e2e: update_state calls observed by the client


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

    @property
    def celery_version(self) -> tuple[int, ...]:
        return celery_version()


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
    Cause.POLLING: frozenset({"--poll-interval", "--poll-strategy"}),
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
    interrupt.check()
    reason = probe.applies(ctx)
    if reason:
        return ProbeResult.skipped(probe.name, reason)
    started = time.perf_counter()
    ctx.progress.start(probe.name)
    findings: list[Finding] = []
    ctx.latency = {}
    try:
        with ctx.cleanup:
            findings.extend(probe.run(ctx))
    except DiagError as exc:
        if interrupt.requested.is_set():
            raise KeyboardInterrupt from exc
        return ProbeResult.failed(probe.name, ctx.target.redact(str(exc)),
                                  time.perf_counter() - started)
    except Exception as exc:
        if interrupt.requested.is_set():  # a library turned Ctrl-C into its own error
            raise KeyboardInterrupt from exc
        if lost_connection(exc):  # the target went away mid-probe: its failure, not our bug
            return ProbeResult.failed(
                probe.name, ctx.target.redact(f"lost the connection to the target during the probe: {describe(exc)}"),
                time.perf_counter() - started)
        _on_internal_error(probe, exc)
        return ProbeResult.failed(
            probe.name,
            ctx.target.redact(f"internal error in probe {probe.name}: {one_line(exc)}"
                              " (please report; rerun with --traceback)"),
            time.perf_counter() - started)
    finally:
        ctx.progress.done()
        ctx.cleanup = contextlib.ExitStack()
    secrets = ctx.target.secrets()
    # Rated here too (rank decides), so a ProbeResult never holds a placeholder severity.
    return ProbeResult(probe.name, ProbeStatus.RAN, "", time.perf_counter() - started,
                       tuple(rated(redacted(f, secrets), ctx.budget_ms) for f in findings),
                       dict(ctx.latency))

