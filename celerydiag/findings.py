"""The values every probe produces and every renderer reads, and the one JSON shape they share.

A Finding's ``impact_ms`` is the milliseconds it adds to the P99 time between ``update_state()``
returning in the worker and a client seeing the new state; that single unit is what lets causes
be ranked against each other and against the budget.

Severity and order are not decided here: :mod:`celerydiag.rank` turns impact, kind and budget into
both. A probe says what it saw (:func:`delay`, :func:`hazard`, or a check's verdict as a plain
``Finding`` with its severity).

JSON history (``celerydiag.report/N``): 1 = first release. 2 = every finding says what its number
is (``kind``: measured | modelled | hazard), whether its severity follows the impact
(``by_impact``), its measured floor (``at_least``) and negligible share (``ok_below_ratio``), so
a saved report can be re-rated against another budget; hazards carry ``evidence.worst_case_ms``;
findings are in :func:`rank.rank` order.
A breaking change bumps N and keeps a reader for the old N in :func:`Report.from_dict`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum, IntEnum
from typing import Any

REPORT_SCHEMA = "celerydiag.report/2"
REPORT_SCHEMA_V1 = "celerydiag.report/1"
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
        """``"warning"`` -> WARNING; anything else is a ValueError (not a KeyError: a saved
        report's reader names a missing field by its KeyError)."""
        try:
            return cls[str(value).upper()]
        except KeyError:
            raise ValueError(f"{value!r} is not a severity ({', '.join(str(s) for s in cls)})") from None

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


class Kind(str, Enum):
    """What kind of number a finding's impact is; the ranking trusts them in this order."""

    MEASURED = "measured"  # seen on this system
    MODELLED = "modelled"  # computed from an assumption (e.g. an assumed poll interval)
    HAZARD = "hazard"  # a worst case that may never happen: impact 0, evidence["worst_case_ms"]

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
    kind: Kind = Kind.MEASURED
    # True: the severity follows the impact (a hazard's: its worst case) and the budget, and
    # rank.rate() decides it; until then ``severity`` is a placeholder. False: a check's verdict.
    by_impact: bool = False
    at_least: Severity | None = None  # a measured floor for a rated delay (e.g. writes failed)
    ok_below_ratio: float | None = None  # a rated delay under this share of the budget is ok

    def __post_init__(self) -> None:
        if not FINDING_ID.match(self.id):
            raise ValueError(f"finding id {self.id!r} is not <probe>.<kebab-slug>")

    @property
    def worst_case_ms(self) -> float | None:
        """A hazard's worst case (None when unknown, or for any other kind)."""
        value = self.evidence.get("worst_case_ms") if self.kind is Kind.HAZARD else None
        return float(value) if isinstance(value, (int, float)) else None

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
            "kind": str(self.kind),
            "by_impact": self.by_impact,
            "at_least": str(self.at_least) if self.at_least is not None else None,
            "ok_below_ratio": self.ok_below_ratio,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        """A saved finding; a missing required field is a KeyError of its name, a malformed one a
        :class:`FieldError` naming it (the report reader turns both into one line)."""
        fix = _field(data, "fix", lambda v: Fix.from_dict(_object(v)) if v else None, None)
        return cls(
            id=_field(data, "id", str),
            cause=_field(data, "cause", Cause),
            severity=_field(data, "severity", Severity.parse),
            title=str(data.get("title", "")),
            detail=str(data.get("detail", "")),
            impact_ms=_field(data, "impact_ms", lambda v: float(v or 0.0), 0.0),
            evidence=_field(data, "evidence", lambda v: dict(_object(v or {})), {}),
            fix=fix,
            kind=_field(data, "kind", Kind, Kind.MEASURED.value),
            by_impact=bool(data.get("by_impact", False)),
            at_least=_field(data, "at_least", lambda v: Severity.parse(v) if v else None, None),
            ok_below_ratio=_optional_float(data.get("ok_below_ratio")),
        )

    @classmethod
    def from_v1(cls, data: Mapping[str, Any], budget_ms: float) -> Finding:
        """A ``celerydiag.report/1`` finding, which did not say what its number was: a
        ``worst_case_*`` evidence key marks a hazard (its worst case copied to ``worst_case_ms``),
        anything else was measured; its severity followed the impact when it equals the budget
        rule for a non-zero impact (so re-rating cannot touch a check's verdict)."""
        finding = cls.from_dict(data)
        evidence = dict(finding.evidence)
        if any(str(key).startswith("worst_case_") for key in evidence):
            stall_s = evidence.get("worst_case_stall_s")
            if "worst_case_ms" not in evidence and isinstance(stall_s, (int, float)):
                evidence["worst_case_ms"] = float(stall_s) * 1000.0
            return replace(finding, kind=Kind.HAZARD, evidence=evidence)
        follows = (finding.impact_ms > 0
                   and finding.severity == Severity.from_impact(finding.impact_ms, budget_ms))
        return replace(finding, kind=Kind.MEASURED, by_impact=follows)


def delay(id: str, cause: Cause, impact_ms: float, title: str, *, kind: Kind = Kind.MEASURED,
          at_least: Severity | None = None, ok_below_ratio: float | None = None, detail: str = "",
          evidence: Mapping[str, Any] | None = None, fix: Fix | None = None) -> Finding:
    """A delay on the state path: ``impact_ms`` measured (or modelled) here; rank.rate() turns it
    and the budget into a severity, raised to ``at_least`` when something measured (writes that
    failed) is worse than the milliseconds say, or ``ok`` under ``ok_below_ratio`` of the budget
    when the probe calls so small a cost negligible (a check that passed)."""
    if kind is Kind.HAZARD:
        raise ValueError("a hazard has no impact: use findings.hazard()")
    return Finding(id, cause, Severity.INFO, title, detail, impact_ms, dict(evidence or {}), fix,
                   kind=kind, by_impact=True, at_least=at_least, ok_below_ratio=ok_below_ratio)


def hazard(id: str, cause: Cause, worst_case_ms: float | None, title: str, *,
           severity: Severity | None = None, detail: str = "",
           evidence: Mapping[str, Any] | None = None, fix: Fix | None = None) -> Finding:
    """A worst case that may never happen (a timeout that lets one update stall): ``impact_ms`` 0,
    the worst case in ``evidence["worst_case_ms"]``. Rated by that worst case when it is known,
    else at ``severity`` (default warning); rank caps either at warning and orders it below every
    measured delay."""
    known = worst_case_ms is not None and severity is None
    return Finding(id, cause, Severity.WARNING if severity is None else severity, title, detail, 0.0,
                   dict(evidence or {}, worst_case_ms=worst_case_ms), fix, kind=Kind.HAZARD,
                   by_impact=known)


@dataclass(frozen=True)
class ProbeResult:
    name: str
    status: ProbeStatus
    reason: str = ""
    elapsed_s: float = 0.0
    findings: tuple[Finding, ...] = ()
    latency: Mapping[str, Any] = field(default_factory=dict)
    # Our own bug that the guard caught (a failed probe): kept for `--traceback` and exit 4, never
    # serialised (a saved report has only the reason's one line).
    error: BaseException | None = field(default=None, compare=False, repr=False)

    @classmethod
    def skipped(cls, name: str, reason: str) -> ProbeResult:
        return cls(name, ProbeStatus.SKIPPED, reason)

    @classmethod
    def failed(cls, name: str, reason: str, elapsed_s: float = 0.0) -> ProbeResult:
        return cls(name, ProbeStatus.FAILED, reason, elapsed_s)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": str(self.status), "reason": self.reason,
                "elapsed_s": round(self.elapsed_s, 3)}


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
    # "broker"/"backend" -> the one line saying why it could not be reached (exit 3); the probes
    # that need it failed with that line, the others ran.
    unreachable: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, target: Mapping[str, str], budget_ms: float,
              results: Iterable[ProbeResult], meta: Mapping[str, Any],
              version: str, unreachable: Mapping[str, str] | None = None) -> Report:
        from celerydiag.rank import rank

        results = tuple(results)
        findings = rank((f for r in results for f in r.findings), budget_ms)
        return cls(target=target, budget_ms=budget_ms, probes=results, findings=findings,
                   meta=meta, latency=latency_block(results, findings), version=version,
                   unreachable=dict(unreachable or {}))

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
            "unreachable": dict(self.unreachable),
        }

    def rerated(self, budget_ms: float) -> Report:
        """The same findings judged against another budget (``report --budget-ms``)."""
        from celerydiag.rank import rank

        findings = rank(self.findings, budget_ms)
        by_cause = latency_block([], findings)["by_cause_ms"]
        return replace(self, budget_ms=budget_ms, findings=findings,
                       latency={**self.latency, "by_cause_ms": by_cause})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        """A report/2 document, or a report/1 one read the way :meth:`Finding.from_v1` says.
        Anything else raises :class:`UnreadableReport` with one line naming the schema or the
        field (``findings[3] has no 'id' field``), never a bare KeyError's ``'id'``."""
        from celerydiag.rank import rank

        if not isinstance(data, Mapping):
            raise UnreadableReport(f"its top level is a JSON {_json_type(data)}, not an object")
        schema = data.get("schema")
        if schema not in (REPORT_SCHEMA, REPORT_SCHEMA_V1):
            raise UnreadableReport.of_schema(schema)
        budget_ms = _read("budget_ms", lambda v: float(v or 1000), data.get("budget_ms"), Any)
        if not (math.isfinite(budget_ms) and budget_ms > 0):
            raise UnreadableReport(f"budget_ms is {budget_ms}, not a positive number")
        if schema == REPORT_SCHEMA_V1:
            findings = _read_list(data, "findings", lambda f: Finding.from_v1(f, budget_ms))
        else:
            findings = _read_list(data, "findings", Finding.from_dict)
        probes = _read_list(data, "probes", lambda p: ProbeResult(
            _field(p, "name", str), _field(p, "status", ProbeStatus), str(p.get("reason", "")),
            _field(p, "elapsed_s", lambda v: float(v or 0.0), 0.0)))
        return cls(
            target=_read("target", lambda v: dict(_object(v or {})), data.get("target"), Any),
            budget_ms=budget_ms,
            probes=tuple(probes),
            findings=rank(findings, budget_ms),
            meta=_read("meta", lambda v: dict(_object(v or {})), data.get("meta"), Any),
            latency=_read("latency", _latency, data.get("latency"), Any),
            version=str(data.get("version", "")),
            unreachable=_read("unreachable", lambda v: {str(k): str(w) for k, w in _object(v or {}).items()},
                              data.get("unreachable"), Any),
        )


SCHEMA_FAMILY = "celerydiag.report/"
_REQUIRED = object()


class FieldError(ValueError):
    """A field of a saved document that is there but malformed: ``field`` names it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _field(data: Mapping[str, Any], key: str, parse: Any, default: Any = _REQUIRED) -> Any:
    """``parse(data[key])`` (``default`` as is when the key is absent and one is given); a value
    ``parse`` refuses is a :class:`FieldError` naming ``key``."""
    if key not in data:
        if default is _REQUIRED:
            raise KeyError(key)
        value = default
    else:
        value = data[key]
    try:
        return parse(value)
    except FieldError as exc:
        raise FieldError(f"{key}.{exc.field}", exc.reason) from None
    except (ValueError, TypeError, AttributeError) as exc:
        raise FieldError(key, str(exc)) from None


def _latency(value: Any) -> dict[str, Any]:
    """A saved ``latency`` block: the renderers format its numbers, so each must be one (or null)."""
    block = dict(_object(value or {}))
    for key in ("observed_p50_ms", "observed_p99_ms"):
        _field(block, key, _number_or_none, None)
    by_cause = _field(block, "by_cause_ms", lambda v: _object(v or {}), {})
    for cause in by_cause:
        _field(by_cause, cause, _number_or_none, None)
    return block


def _number_or_none(value: Any) -> float | None:
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    raise TypeError(f"{value!r} is not a number")


def _object(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"a JSON {_json_type(value)}, not an object")
    return value


class UnreadableReport(ValueError):
    """A document :meth:`Report.from_dict` cannot read, said in one line: the wrong schema, or
    the field that is missing or malformed. ``newer`` when it is a later ``celerydiag.report/N``
    (a newer celerydiag wrote it: the fix is to upgrade); ``schema`` is what the document said."""

    def __init__(self, message: str, schema: Any = None, newer: bool = False) -> None:
        super().__init__(message)
        self.schema = schema
        self.newer = newer

    @classmethod
    def of_schema(cls, schema: Any) -> UnreadableReport:
        known = f"{REPORT_SCHEMA} (or {REPORT_SCHEMA_V1})"
        if isinstance(schema, str) and schema.startswith(SCHEMA_FAMILY):
            number = schema[len(SCHEMA_FAMILY):]
            current = int(REPORT_SCHEMA[len(SCHEMA_FAMILY):])
            if number.isdigit() and int(number) > current:
                return cls(f"it is {schema}, made by a newer celerydiag; this one reads {known}",
                           schema, newer=True)
        if schema is None:
            return cls(f"it has no \"schema\" field (a report's is {known})", schema)
        return cls(f"its schema is {schema!r}, not {known}", schema)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _read(where: str, parse: Any, value: Any, expected: Any = Mapping) -> Any:
    """``parse(value)``, with any failure as one line naming ``where`` (a KeyError: the field)."""
    if expected is Mapping and not isinstance(value, Mapping):
        raise UnreadableReport(f"{where} is a JSON {_json_type(value)}, not an object")
    try:
        return parse(value)
    except KeyError as exc:
        raise UnreadableReport(f"{where} has no {exc.args[0]!r} field") from None
    except FieldError as exc:
        raise UnreadableReport(f"{where}.{exc.field}: {exc.reason}") from None
    except (ValueError, TypeError, AttributeError) as exc:
        raise UnreadableReport(f"{where}: {exc}") from None


def _read_list(data: Mapping[str, Any], key: str, parse: Any) -> list[Any]:
    items = data.get(key, ())
    if not isinstance(items, (list, tuple)):
        raise UnreadableReport(f"{key} is a JSON {_json_type(items)}, not an array")
    return [_read(f"{key}[{i}]", parse, item) for i, item in enumerate(items)]



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


def _optional_float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


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
