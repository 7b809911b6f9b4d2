"""One interval's measurements: the contract between the loop and its sinks (metrics, view, JSON).

Times are in milliseconds here, as everywhere in celerydiag's JSON; the Prometheus sink converts
to seconds (the Prometheus base unit). Error reasons are a closed set so a metric label built
from them stays bounded.
"""

from __future__ import annotations

import socket
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA = "celerydiag.watch/1"

# signal names and error reasons: closed sets (they become Prometheus label values)
SIGNALS = ("canary", "broker", "backlog", "rabbitmq_api", "backend", "backend_counters", "events")
REASONS = ("timeout", "unreachable", "blocked", "refused", "failed")


@dataclass(frozen=True)
class Problem:
    """A read that failed this interval: which signal, why (one of REASONS), one safe line."""

    signal: str
    reason: str
    message: str


@dataclass
class Sample:
    """What one interval measured. Lists hold every value of the interval (a histogram sink
    observes each); a signal that does not apply, or could not be read, is empty or None."""

    round: int
    time: float  # unix seconds at the start of the interval
    up: dict[str, bool] = field(default_factory=dict)  # "broker" / "backend" -> reached
    visibility_ms: dict[str, list[float]] = field(default_factory=dict)  # "poll" / "push"
    missed: dict[str, int] = field(default_factory=dict)
    dispatch_ms: list[float] = field(default_factory=list)
    backend_write_ms: list[float] = field(default_factory=list)  # update_state() blocking time
    queue_wait_ms: list[float] = field(default_factory=list)  # real tasks, from task events
    backlog: dict[str, int] = field(default_factory=dict)  # queue -> ready messages
    broker_blocked: bool | None = None
    blocked_reason: str = ""
    rtt_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # peer -> method -> ms
    backend_writes_per_s: float | None = None
    backend_counter: str = ""  # which server counter the rate comes from
    canary: str = ""  # "ok", "failed", "skipped"
    problems: list[Problem] = field(default_factory=list)
    elapsed_s: float = 0.0

    def fail(self, signal: str, exc: BaseException | str, reason: str | None = None) -> None:
        """Record a failed read; the reason is classified from the exception unless given."""
        from celerydiag.errors import one_line

        message = exc if isinstance(exc, str) else one_line(exc)
        self.problems.append(Problem(signal, reason or reason_of(exc), message))

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out = {"schema": SCHEMA, **out}
        out["problems"] = [asdict(p) for p in self.problems]
        return out


def reason_of(exc: BaseException | str) -> str:
    """timeout | unreachable | refused | failed, from the exception's type and words: every
    driver (py-amqp, kombu, redis-py, psycopg, PyMySQL, SQLAlchemy) names these its own way."""
    if isinstance(exc, str):
        return "failed"
    from celerydiag import interrupt

    names = {c.__name__ for c in type(exc).__mro__}
    text = str(exc).lower()
    if isinstance(exc, (TimeoutError, socket.timeout, interrupt.Overrun)) or \
            any("Timeout" in n for n in names) or "timed out" in text or "timeout" in text:
        return "timeout"
    if "access denied" in text or "permission denied" in text or "authentication" in text \
            or "ACCESS_REFUSED" in str(exc) or "AccessRefused" in names:
        return "refused"
    if isinstance(exc, (ConnectionError, OSError)) or names & {
            "OperationalError", "ConnectionError", "RecoverableConnectionError", "TargetUnreachable",
            "InterfaceError"} or "connection" in text or "refused" in text:
        return "unreachable"
    return "failed"
