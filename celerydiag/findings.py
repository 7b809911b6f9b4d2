"""The values every probe produces and every renderer reads, and the one JSON shape they share.

A Finding's ``impact_ms`` is the milliseconds it adds to the P99 time between ``update_state()``
returning in the worker and a client seeing the new state; that single unit is what lets causes
be ranked against each other and against the budget.

JSON history (``celerydiag.report/N``): 1 = first release. A breaking change bumps N and keeps a
reader for the old N in :func:`Report.from_dict`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any

REPORT_SCHEMA = "celerydiag.report/1"
FINDING_ID = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9][a-z0-9-]*$")
WARNING_SHARE = 0.2  # design.md: warning at >= 20 % of the budget


class Severity(IntEnum):
    OK = 0
    INFO = 1
    WARNING = 2
    CRITICAL = 3

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str) -> Severity:
        return cls[value.upper()]

    @classmethod
    def from_impact(cls, impact_ms: float, budget_ms: float) -> Severity:
        """design.md's rule: critical at or over the budget, warning from 20 % of it."""
        if impact_ms >= budget_ms:
            return cls.CRITICAL
        if impact_ms >= WARNING_SHARE * budget_ms:
            return cls.WARNING
        return cls.INFO


class Cause(str, Enum):
    """What a finding is about; also the probe registry (celerydiag/probe.py): each member's probe
    lives in ``celerydiag/<value>/probe.py`` and the member order is the order the probes run."""

    CONFIG = "config"
    BROKER = "broker"
    BACKEND = "backend"
    POLLING = "polling"
    SERIALIZATION = "serialization"
    NETWORK = "network"
    HOST = "host"
    E2E = "e2e"

    def __str__(self) -> str:
        return self.value


class ProbeStatus(str, Enum):
    RAN = "ran"
    SKIPPED = "skipped"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Fix:
    """What to change: a one-line summary and Python a user can paste into their Celery config."""

    summary: str
    config: str = ""
    docs: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "config": self.config, "docs": list(self.docs)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fix:
        return cls(data.get("summary", ""), data.get("config", ""), tuple(data.get("docs", ())))


@dataclass(frozen=True)
class Finding:
    id: str
    cause: Cause
    severity: Severity
    title: str
    detail: str = ""
    impact_ms: float = 0.0
    evidence: Mapping[str, Any] = field(default_factory=dict)
    fix: Fix | None = None

    def __post_init__(self) -> None:
        if not FINDING_ID.match(self.id):
            raise ValueError(f"finding id {self.id!r} is not <probe>.<kebab-slug>")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "cause": str(self.cause),
            "severity": str(self.severity),
            "title": self.title,
            "detail": self.detail,
            "impact_ms": _finite(round(float(self.impact_ms), 3)),
            "evidence": _jsonable(dict(self.evidence)),
            "fix": self.fix.to_dict() if self.fix else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        fix = data.get("fix")
        return cls(
            id=data["id"],
            cause=Cause(data["cause"]),
            severity=Severity.parse(data["severity"]),
            title=data.get("title", ""),
            detail=data.get("detail", ""),
            impact_ms=float(data.get("impact_ms") or 0.0),
            evidence=dict(data.get("evidence") or {}),
            fix=Fix.from_dict(fix) if fix else None,
        )


def rated(
    id: str, cause: Cause, impact_ms: float, budget_ms: float, title: str, **kw: Any
) -> Finding:
    """A finding whose severity follows from its impact and the budget (the common case)."""
    return Finding(id=id, cause=cause, severity=Severity.from_impact(impact_ms, budget_ms),
                   title=title, impact_ms=impact_ms, **kw)


@dataclass(frozen=True)
class ProbeResult:
    name: str
    status: ProbeStatus
    reason: str = ""
    elapsed_s: float = 0.0
    findings: tuple[Finding, ...] = ()
    latency: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def skipped(cls, name: str, reason: str) -> ProbeResult:
        return cls(name, ProbeStatus.SKIPPED, reason)

    @classmethod
    def failed(cls, name: str, reason: str, elapsed_s: float = 0.0) -> ProbeResult:
        return cls(name, ProbeStatus.FAILED, reason, elapsed_s)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": str(self.status), "reason": self.reason,
                "elapsed_s": round(self.elapsed_s, 3)}


def rank(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    """Severity, then impact, both descending; the id breaks ties so the order is stable."""
    return tuple(sorted(findings, key=lambda f: (-f.severity, -f.impact_ms, f.id)))


@dataclass(frozen=True)
class Report:
    target: Mapping[str, str]
    budget_ms: float
    probes: tuple[ProbeResult, ...]
    findings: tuple[Finding, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)
    latency: Mapping[str, Any] = field(default_factory=dict)
    version: str = ""
    schema: str = REPORT_SCHEMA

    @classmethod
    def build(cls, target: Mapping[str, str], budget_ms: float,
              results: Iterable[ProbeResult], meta: Mapping[str, Any],
              version: str) -> Report:
        results = tuple(results)
        findings = rank(f for r in results for f in r.findings)
        return cls(target=target, budget_ms=budget_ms, probes=results, findings=findings,
                   meta=meta, latency=latency_block(results, findings), version=version)

    def worst(self) -> Severity:
        return max((f.severity for f in self.findings), default=Severity.OK)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "version": self.version,
            "meta": _jsonable(dict(self.meta)),
            "target": dict(self.target),
            "budget_ms": self.budget_ms,
            "probes": [p.to_dict() for p in self.probes],
            "findings": [f.to_dict() for f in self.findings],
            "latency": _jsonable(dict(self.latency)),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        schema = data.get("schema")
        if schema != REPORT_SCHEMA:
            raise ValueError(f"not a {REPORT_SCHEMA} document (schema={schema!r})")
        probes = tuple(
            ProbeResult(p["name"], ProbeStatus(p["status"]), p.get("reason", ""),
                        float(p.get("elapsed_s") or 0.0))
            for p in data.get("probes", ())
        )
        return cls(
            target=dict(data.get("target") or {}),
            budget_ms=float(data.get("budget_ms") or 1000),
            probes=probes,
            findings=rank(Finding.from_dict(f) for f in data.get("findings", ())),
            meta=dict(data.get("meta") or {}),
            latency=dict(data.get("latency") or {}),
            version=data.get("version", ""),
        )



def latency_block(results: Iterable[ProbeResult], findings: Iterable[Finding]) -> dict[str, Any]:
    """Observed P50/P99 (from the e2e probe, when it ran) next to the sum of impact per cause,
    so a reader sees how much of the observed delay the causes explain."""
    observed: dict[str, Any] = {}
    for result in results:
        observed.update(result.latency)
    by_cause: dict[str, float] = {}
    for f in findings:
        if f.cause in (Cause.E2E, Cause.CONFIG) or f.severity == Severity.OK:
            continue
        by_cause[str(f.cause)] = round(by_cause.get(str(f.cause), 0.0) + f.impact_ms, 3)
    block: dict[str, Any] = {
        "observed_p50_ms": observed.get("observed_p50_ms"),
        "observed_p99_ms": observed.get("observed_p99_ms"),
        "by_cause_ms": by_cause,
    }
    extra = {k: v for k, v in observed.items() if k not in block}
    block.update(extra)
    return block


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _jsonable(value: Any) -> Any:
    """Make evidence safe for strict JSON: no NaN/inf, tuples as lists, odd types as strings."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return _finite(round(value, 6))
    try:
        return _finite(float(value))
    except (TypeError, ValueError):
        return str(value)
