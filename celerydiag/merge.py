"""Merging saved reports from several hosts into one ranked report.

A finding id may appear once per host; we keep each, tagged with its host in the evidence, so the
merged ranking shows the worst host first and a reader knows where to look. The same report given
twice (same host, same creation time, same findings) counts once: ``report a.json a.json`` must
not double every finding.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace

from celerydiag.findings import Finding, ProbeResult, Report, latency_block
from celerydiag.rank import order, rank


def merge_reports(reports: Sequence[Report], budget_ms: float | None = None) -> Report:
    """One report of ``reports``, every finding re-rated against ``budget_ms``; with None each
    keeps the rating of the budget its report was saved with (and the merged report states the
    first report's budget)."""
    reports = distinct(reports)
    if len(reports) == 1:
        return reports[0] if budget_ms is None else reports[0].rerated(budget_ms)
    findings: list[Finding] = []
    probes: list[ProbeResult] = []
    hosts = []
    down: dict[str, list[str]] = {}
    for report in reports:
        host = str(report.meta.get("hostname", "?"))
        hosts.append(host)
        for side, why in report.unreachable.items():
            down.setdefault(side, []).append(f"[{host}] {why}")
        findings += [replace(f, evidence={"host": host, **dict(f.evidence)})
                     for f in report.findings]
        probes += [replace(p, reason=f"[{host}] {p.reason}".rstrip()) for p in report.probes]
    first = reports[0]
    if len({tuple(sorted(r.target.items())) for r in reports}) == 1:
        target = dict(first.target)
    else:
        target = {key: "; ".join(sorted({r.target.get(key, "") for r in reports}))
                  for key in ("broker", "backend")}
        sources = {r.target.get("source", "") for r in reports}
        # design.md's sources are app|flags|env|embedded; "merged" only when the hosts disagree
        target["source"] = sources.pop() if len(sources) == 1 else "merged"
    budget = first.budget_ms if budget_ms is None else budget_ms
    ranked = order(findings) if budget_ms is None else rank(findings, budget_ms)
    latency = latency_block([], ranked)
    observed = [r.latency for r in reports if r.latency.get("observed_p99_ms") is not None]
    if observed:  # the worst host's observation is the one that matters
        worst = max(observed, key=lambda lat: lat["observed_p99_ms"])
        latency.update(observed_p50_ms=worst.get("observed_p50_ms"),
                       observed_p99_ms=worst["observed_p99_ms"])
    meta = {**first.meta, "hostname": ", ".join(hosts), "merged_from": len(reports)}
    return Report(target=target, budget_ms=budget, probes=tuple(probes),
                  findings=ranked, meta=meta, latency=latency, version=first.version,
                  unreachable={side: "; ".join(lines) for side, lines in down.items()})


def distinct(reports: Sequence[Report]) -> list[Report]:
    """``reports`` without repeats of one report: same meta hostname and creation time and the
    same findings (two hosts, or two runs on one host, both stay)."""
    seen: set[str] = set()
    out = []
    for report in reports:
        key = json.dumps([report.meta.get("hostname"), report.meta.get("created"),
                          [f.to_dict() for f in report.findings]], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(report)
    return out
