"""Phrases the text and markdown renderers share, so both say the same thing the same way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celerydiag.findings import Finding, Kind, Report

EMBEDDED_NOTE = ("Measured celerydiag's embedded default (in-memory broker, SQLite results, in-process "
                 "worker), not your deployment: pass --app or --broker/--backend to measure yours.")


def headline(report: Report) -> str:
    t = report.target
    line = (f"Target: broker {t.get('broker', '?')}, backend {t.get('backend', '?')} "
            f"(source: {t.get('source', '?')}). Budget {report.budget_ms:g} ms.")
    if t.get("source") == "embedded":
        line += f"\n{EMBEDDED_NOTE}"
    for side, why in report.unreachable.items():  # the first thing to fix: before any finding
        line += f"\nUNREACHABLE: {why}. The probes that need the {side} did not run."
    return line


def latency_line(report: Report) -> str | None:
    """Observed P99 next to the sum of the causes, and what the difference means."""
    lat = report.latency
    p99 = lat.get("observed_p99_ms")
    if p99 is None:
        return None
    p50 = lat.get("observed_p50_ms")
    explained = sum((lat.get("by_cause_ms") or {}).values())
    median = f"P50 {p50:.1f} ms, " if p50 is not None else ""
    line = (f"Observed state visibility (e2e, a client reading as fast as it can): {median}"
            f"P99 {p99:.1f} ms. Sum of the causes' impact: {explained:.1f} ms")
    if explained > p99:
        return line + (" (more than observed: it includes modelled costs the e2e client avoids, "
                       "such as your clients' poll interval).")
    return line + f" ({p99 - explained:.1f} ms of the observed P99 unexplained)."


def impact_cell(finding: Finding) -> str:
    """The impact column: a measured number as it is, a modelled one marked as such, and a
    hazard's worst case instead of its 0 (a hazard adds nothing to the P99 until it happens)."""
    if finding.kind is Kind.HAZARD:
        return f"hazard: {worst_case_words(finding)}"
    number = f"{finding.impact_ms:.1f}"
    return f"{number} modelled" if finding.kind is Kind.MODELLED else number


def impact_phrase(finding: Finding) -> str:
    """The same in a sentence: "impact 12.0 ms", "impact 495.0 ms (modelled)", "hazard: up to 50 s"."""
    if finding.kind is Kind.HAZARD:
        return f"hazard: {worst_case_words(finding)} (not counted in the P99)"
    modelled = " (modelled)" if finding.kind is Kind.MODELLED else ""
    return f"impact {finding.impact_ms:.1f} ms{modelled}"


def impact_brief(finding: Finding) -> str:
    """For a parenthesis after a title: "12.0 ms", "495.0 ms, modelled", "hazard: up to 50 s"."""
    if finding.kind is Kind.HAZARD:
        return f"hazard: {worst_case_words(finding)}"
    modelled = ", modelled" if finding.kind is Kind.MODELLED else ""
    return f"{finding.impact_ms:.1f} ms{modelled}"


def worst_case_words(finding: Finding) -> str:
    worst = finding.worst_case_ms
    if worst is None:
        return "no bound"
    return f"up to {worst / 1000:g} s" if worst >= 1000 else f"up to {worst:g} ms"


def probe_lines(report: Report) -> list[str]:
    lines = []
    for p in report.probes:
        why = f": {p.reason}" if p.reason else ""
        lines.append(f"{p.name} {p.status} in {p.elapsed_s:.1f} s{why}")
    return lines


def evidence_lines(evidence: Mapping[str, Any]) -> list[str]:
    out = []
    for key, value in evidence.items():
        if isinstance(value, Mapping):
            inner = ", ".join(f"{k} {_num(v)}" for k, v in value.items())
            out.append(f"{key}: {inner}")
        else:
            out.append(f"{key}: {_num(value)}")
    return out


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    return str(value)


def host_of(finding: Any) -> str | None:
    """The host a merged report's finding came from (`report A.json B.json` tags each one)."""
    host = finding.evidence.get("host") if isinstance(finding.evidence, Mapping) else None
    return str(host) if host is not None else None


def has_hosts(report: Report) -> bool:
    return any(host_of(f) for f in report.findings)
