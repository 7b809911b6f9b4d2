"""The ranking stage: the one place that turns a finding's impact, kind and the budget into its
severity, and a set of findings into the order a reader sees them in.

Probes only say what they saw (``findings.delay`` / ``findings.hazard`` / a check's verdict), so a
saved report can be re-rated against another ``--budget-ms`` and the rules below hold for every
cause, the capture report included (design.md, "one number that joins them"):

- a delay (``by_impact``) is critical at or over the budget, a warning from 20 % of it, info
  below (``Severity.from_impact``), ok under ``ok_below_ratio`` of the budget when its probe
  calls so small a cost negligible, and never below its measured floor ``at_least``;
- a modelled delay (computed from an assumption, not seen here) is at most info, unless its
  inputs were given by the user (``evidence["input"] == "given"``: ``--poll-interval 5``), so an
  assumed number can never fail a CI gate nor outrank a measured cause;
- a hazard is rated by its worst case (or keeps the level its probe gave it) but never above
  warning: how often a worst case happens is unknown, so it cannot be critical;
- order: severity, then kind (measured, modelled, hazard), then impact, both descending, then
  the id so the order never depends on the input's; a hazard orders as if it were at most info,
  so it never ranks above a measured delay while it still shows its own severity.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from celerydiag.findings import Finding, Kind, Severity

HAZARD_CEILING = Severity.WARNING  # a worst case that may never happen is never critical
HAZARD_ORDER_CEILING = Severity.INFO  # ...and ranks below every measured delay
MODELLED_CEILING = Severity.INFO  # an assumed number informs; only a measured (or given) one warns
GIVEN = "given"  # evidence["input"] of a modelled finding whose inputs the user gave
KIND_ORDER = {Kind.MEASURED: 0, Kind.MODELLED: 1, Kind.HAZARD: 2}


def rate(finding: Finding, budget_ms: float) -> Severity:
    """The severity of ``finding`` against ``budget_ms``."""
    if finding.kind is Kind.HAZARD:
        worst = finding.worst_case_ms
        if finding.by_impact and worst is not None:
            return min(Severity.from_impact(worst, budget_ms), HAZARD_CEILING)
        return min(finding.severity, HAZARD_CEILING)
    if not finding.by_impact:
        return finding.severity
    severity = Severity.from_impact(finding.impact_ms, budget_ms)
    if finding.ok_below_ratio is not None and finding.impact_ms < finding.ok_below_ratio * budget_ms:
        severity = Severity.OK
    if finding.at_least is not None:
        severity = max(severity, finding.at_least)
    if finding.kind is Kind.MODELLED and finding.evidence.get("input") != GIVEN:
        severity = min(severity, MODELLED_CEILING)
    return severity


def rated(finding: Finding, budget_ms: float) -> Finding:
    """``finding`` with the severity :func:`rate` gives it (the same object when unchanged)."""
    severity = rate(finding, budget_ms)
    return finding if severity is finding.severity else replace(finding, severity=severity)


def order_key(finding: Finding) -> tuple[int, int, float, str]:
    """Sort key of a rated finding: see the module docstring."""
    severity = finding.severity
    if finding.kind is Kind.HAZARD:
        severity = min(severity, HAZARD_ORDER_CEILING)
    return (-severity, KIND_ORDER[finding.kind], -finding.impact_ms, finding.id)


def order(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    """Already rated findings (e.g. several reports', each against its own budget) in report order."""
    return tuple(sorted(findings, key=order_key))


def rank(findings: Iterable[Finding], budget_ms: float) -> tuple[Finding, ...]:
    """Every finding rated against ``budget_ms``, in report order."""
    return order(rated(f, budget_ms) for f in findings)
