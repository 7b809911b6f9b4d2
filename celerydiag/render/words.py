"""Phrases the text and markdown renderers share, so both say the same thing the same way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celerydiag.findings import Finding, Kind, Report, Severity

EMBEDDED_NOTE = ("Measured celerydiag's embedded default (in-memory broker, SQLite results, in-process "
                 "worker), not your deployment: pass --app or --broker/--backend to measure yours.")


def headline(report: Report) -> str:
    t = report.target
    if not t.get("broker") and not t.get("backend") and t.get("source"):  # a capture's findings
        line = f"Source: {t['source']}. Budget {report.budget_ms:g} ms."
    else:
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


SERIES = "series"  # evidence key of a finding's bounded data series: for charts, never printed as text
UNITS = (("_per_s", "/s"), ("_ms", "ms"), ("_s", "s"), ("_bytes", "bytes"), ("_count", ""), ("_ratio", "%"))


def evidence_lines(evidence: Mapping[str, Any]) -> list[str]:
    """Evidence as named values with units ("p99: 495 ms"), one line per key; a nested mapping
    on one line when it holds only values, else its own indented lines; a list of records one line
    each. The unit comes from the key's suffix (design.md: _ms, _s, _bytes, _count, _ratio) and
    passes to the values under it. The chart series (``series``) is the HTML report's, not text."""
    return _lines(evidence, "", "")


def _lines(mapping: Mapping[str, Any], unit: str, indent: str) -> list[str]:
    out: list[str] = []
    for key, value in mapping.items():
        if key == SERIES:
            continue
        name, own = _name_unit(str(key))
        u = own if own is not None else unit
        if isinstance(value, Mapping):
            if all(_scalar(v) for v in value.values()):
                inner = ", ".join(f"{_name_unit(str(k))[0]} {value_words(v, _unit_of(str(k), u))}"
                                  for k, v in value.items())
                out.append(f"{indent}{name}: {inner or 'none'}")
            else:
                out.append(f"{indent}{name}:")
                out += _lines(value, u, indent + "  ")
        elif isinstance(value, (list, tuple)):
            if not value:
                out.append(f"{indent}{name}: none")
            elif all(_scalar(v) for v in value):
                out.append(f"{indent}{name}: {', '.join(value_words(v, u) for v in value)}")
            else:
                for i, item in enumerate(value, 1):
                    if isinstance(item, Mapping):
                        inner = "; ".join(line.strip() for line in _lines(item, u, ""))
                        out.append(f"{indent}{name} {i}: {inner}")
                    else:
                        out.append(f"{indent}{name} {i}: {value_words(item, u)}")
        else:
            out.append(f"{indent}{name}: {value_words(value, u)}")
    return out


def _scalar(value: Any) -> bool:
    return not isinstance(value, (Mapping, list, tuple))


def _name_unit(key: str) -> tuple[str, str | None]:
    """"p99_ms" -> ("p99", "ms"); "rows_count" -> ("rows", ""); "table" -> ("table", None)."""
    for suffix, unit in UNITS:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)].replace("_", " "), unit
    return key.replace("_", " "), None


def _unit_of(key: str, inherited: str) -> str:
    own = _name_unit(key)[1]
    return own if own is not None else inherited


def value_words(value: Any, unit: str = "") -> str:
    """One value with its unit: 495.0 ms, 0.202 s, 12 %, True -> yes, None -> unknown."""
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and unit == "%":
        return f"{_num(float(value) * 100)} %"
    if isinstance(value, (int, float)) and unit == "bytes":
        return _bytes(float(value))
    text = _num(value)
    if unit == "/s" and isinstance(value, (int, float)):
        return f"{text}/s"
    return f"{text} {unit}" if unit and isinstance(value, (int, float)) else text


def _bytes(value: float) -> str:
    for size, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if abs(value) >= size:
            return f"{value / size:.1f} {name}"
    return f"{value:.0f} bytes"


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    return str(value)


# ---- the verdict: the first thing every report says -------------------------------------------

def delays(report: Report) -> list[Finding]:
    """The findings that add milliseconds to the state path, worst first (rank order): what the
    verdict and the impact chart are about. e2e is the observed total, not a cause."""
    return [f for f in report.findings
            if f.kind is not Kind.HAZARD and f.impact_ms > 0 and str(f.cause) != "e2e"]


def verdict(report: Report) -> list[str]:
    """One or two sentences: which cause makes states late and by how much against the budget (or
    that nothing does), and the one thing to do next."""
    budget = report.budget_ms
    if report.unreachable:
        sides = " and the ".join(report.unreachable)
        first = next(iter(report.unreachable.values()))
        return [f"Verdict: the {sides} could not be reached ({first}), so nothing that needs it was measured.",
                "Next: fix the URL or the network named above, then rerun."]
    late = [f for f in delays(report) if f.severity >= Severity.WARNING]
    observed = report.latency.get("observed_p99_ms")
    seen = f" End to end, states show up P99 {observed:.1f} ms after update_state()." if observed is not None else ""
    if late:
        top = late[0]
        modelled = " (modelled)" if top.kind is Kind.MODELLED else ""
        over = ", over it" if top.impact_ms >= budget else ""
        where = f" on {host_of(top)}" if host_of(top) else ""  # a merged report: which host
        first = (f"Verdict: {CAUSE_WORDS.get(str(top.cause), str(top.cause))}{where} makes states late by "
                 f"{top.impact_ms:.1f} ms at P99{modelled}, {top.impact_ms / budget * 100:.0f} % of the "
                 f"{budget:g} ms budget{over} ({top.id}).{seen}")
        return [first, f"Next: {_next_step(report, top)}"]
    costs = delays(report)
    if costs:
        top = costs[0]
        first = (f"Verdict: nothing makes states late against the {budget:g} ms budget; the largest single cost is "
                 f"{CAUSE_WORDS.get(str(top.cause), str(top.cause))} at {impact_brief(top)} "
                 f"({top.impact_ms / budget * 100:.0f} % of it).{seen}")
    else:
        first = f"Verdict: nothing makes states late against the {budget:g} ms budget.{seen}"
    return [first, f"Next: {_next_step(report, None)}"]


CAUSE_WORDS = {"config": "the Celery config", "broker": "the broker", "backend": "the result backend",
               "polling": "the clients' polling", "serialization": "serialization", "network": "the network",
               "host": "the worker host", "e2e": "the state path"}
BRIEF = 150  # a fix summary longer than this is cut at its first clause in the verdict


def _brief(f: Finding) -> str:
    """A fix's summary for the verdict's "Next:", its first clause when it is long; the whole fix
    is in the finding's details."""
    text = f.fix.summary if f.fix else ""
    if len(text) > BRIEF:
        cut = min((i for i in (text.find("; "), text.find(". ")) if i > 0), default=-1)
        if cut > 0:
            text = text[:cut]
    return f"{text.rstrip('.:;')} (fix for {f.id} below)."


def _next_step(report: Report, top: Finding | None) -> str:
    if top is not None:
        fixed = top if top.fix else next((f for f in report.findings if f.cause == top.cause and f.fix
                                          and f.severity >= Severity.WARNING), None)
        if fixed is not None:
            return _brief(fixed)
        return f"`celerydiag probe {top.cause}` shows what makes it slow."
    hazard = next((f for f in report.findings if f.kind is Kind.HAZARD and f.severity >= Severity.WARNING
                   and f.fix), None)
    failed = [p.name for p in report.probes if str(p.status) == "failed"]
    if report.target.get("source") == "embedded":
        return "measure your own deployment: `celerydiag doctor -A proj.celery:app` (or --broker/--backend)."
    if failed:
        return f"rerun what failed: `celerydiag probe {failed[0]}` (see Probes below)."
    if hazard is not None:
        return f"bound the worst case: {_brief(hazard)}"
    return "nothing to change."


def ok_line(report: Report) -> str | None:
    """The checks that passed, folded into one line (``--verbose`` lists them as rows)."""
    ok = [f.id for f in report.findings if f.severity == Severity.OK]
    if not ok:
        return None
    return f"{len(ok)} check{'s' if len(ok) != 1 else ''} ok: {', '.join(ok)} (--verbose lists them)."


def paste_block(report: Report) -> str:
    """The config a user pastes into their celeryconfig, the one place every renderer takes it from:
    every fix of the findings that are not ok merged into one configuration in the user's naming
    style (issue 17: :func:`celerydiag.config.paste.paste_block`)."""
    from celerydiag.config.paste import paste_block as merged_block

    return merged_block(report).rstrip("\n")


def host_of(finding: Any) -> str | None:
    """The host a merged report's finding came from (`report A.json B.json` tags each one)."""
    host = finding.evidence.get("host") if isinstance(finding.evidence, Mapping) else None
    return str(host) if host is not None else None


def has_hosts(report: Report) -> bool:
    return any(host_of(f) for f in report.findings)
