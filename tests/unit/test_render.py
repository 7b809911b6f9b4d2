"""Every format renders the canonical reports the same way every time (golden files), and each
format's own promises: JSON is report/2, JUnit fails only at --fail-on and lists what passed,
markdown has the summary table, text shows user strings literally."""

from __future__ import annotations

import importlib
import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from celerydiag.cli import COMMAND_MODULES
from celerydiag.findings import Cause, Finding, Fix, ProbeResult, ProbeStatus, Report, Severity
from celerydiag.render import OutputFormat, render, renderer

REPORTS = Path(__file__).resolve().parents[1] / "fixtures" / "reports"
CANONICAL = ("full-v1", "host-b-v1", "empty-v1", "full-v2")
SUFFIX = {"text": "txt", "json": "json", "markdown": "md", "junit": "xml", "html": "html"}
# html embeds matplotlib's SVG, which changes with its version: tests/unit/test_html.py checks it instead
GOLDEN = sorted(set(SUFFIX) - {"html"})


def load(name: str) -> Report:
    return Report.from_dict(json.loads((REPORTS / f"{name}.json").read_text(encoding="utf-8")))


def rendered(report: Report, fmt: str, **kw) -> str:
    stream = io.StringIO()
    render(report, fmt, stream, **kw)
    return stream.getvalue()


FORMATS = [f.value for f in OutputFormat]


def report_format_choices() -> set[str]:
    """The --format choices of every command that writes a Report (all but the document ones)."""
    found: set[str] = set()
    for module in COMMAND_MODULES:
        [fmt] = [p for p in importlib.import_module(module).command.params if p.name == "fmt"]
        if len(fmt.type.choices) > 2:  # poll-model and bench-serialize write text|json documents
            found |= set(fmt.type.choices)
    return found


def test_cli_formats_are_exactly_the_renderers():
    assert report_format_choices() == set(FORMATS) == set(SUFFIX)


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_to_format_is_exhaustive(fmt):
    """Every member has a renderer that writes something (pip-audit's test of the same name): a new
    format without its branch fails here as well as in mypy."""
    assert callable(renderer(fmt))
    assert rendered(load("empty-v1"), fmt).strip()


@pytest.mark.parametrize("fmt", GOLDEN)
@pytest.mark.parametrize("name", CANONICAL)
def test_canonical_reports_match_golden_files(name, fmt, golden):
    golden(f"{name}.{SUFFIX[fmt]}", rendered(load(name), fmt))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_skipped_and_failed_probes_reach_every_format(fmt):
    out = rendered(load("full-v1"), fmt)
    assert "no --pcap or --iface given: nothing to analyse" in out
    assert "internal error in probe serialization" in out


@pytest.mark.parametrize("fmt", sorted(set(FORMATS) - {"junit"}))  # junit groups by probe
def test_findings_appear_in_ranked_order(fmt):
    report = load("full-v1")
    out = rendered(report, fmt)
    # the verdict names the worst finding first; the order is that of the findings table after it
    table = {"text": "Findings, worst first", "html": "Findings, worst first", "markdown": "| severity"}
    if fmt in table:
        out = out[out.index(table[fmt]):]
    positions = [out.index(f.id) for f in report.findings]
    assert positions == sorted(positions)


def test_json_is_the_report_itself_and_report1_shaped(check_report):
    report = load("full-v1")
    data = json.loads(rendered(report, "json"))
    check_report(data)
    assert isinstance(data.pop("paste_block"), str)  # issue 17: the one block, beside the report
    assert data == report.to_dict()


def test_json_is_strict_even_with_nan_evidence():
    f = Finding("broker.x", Cause.BROKER, Severity.INFO, "t", evidence={"p99_ms": float("nan")})
    report = Report.build({"broker": "", "backend": "", "source": "flags"}, 1000.0,
                          [ProbeResult("broker", ProbeStatus.RAN, "", 0.1, (f,))], {}, "0")
    assert json.loads(rendered(report, "json"))["findings"][0]["evidence"]["p99_ms"] is None


def _cases(xml: str) -> dict[str, ET.Element]:
    root = ET.fromstring(xml)
    return {case.get("name"): case for case in root.iter("testcase")}


@pytest.mark.parametrize(
    ("fail_on", "failing"),
    [
        (Severity.CRITICAL, {"e2e.visibility-poll", "backend.lock-wait"}),
        (Severity.WARNING, {"e2e.visibility-poll", "backend.lock-wait", "broker.publish-confirms"}),
        (Severity.INFO, {"e2e.visibility-poll", "backend.lock-wait", "broker.publish-confirms",
                         "polling.interval"}),
    ],
)
def test_junit_fails_only_at_or_above_fail_on(fail_on, failing):
    xml = rendered(load("full-v1"), "junit", fail_on=fail_on)
    cases = _cases(xml)
    assert {name for name, case in cases.items() if case.find("failure") is not None} == failing
    # a passing check is a plain testcase, so CI counts what was verified
    assert cases["config.pickle-accepted"].find("failure") is None
    root = ET.fromstring(xml)
    assert sum(int(s.get("failures")) for s in root.iter("testsuite")) == len(failing)


def test_junit_skipped_and_failed_probes():
    xml = rendered(load("full-v1"), "junit")
    cases = _cases(xml)
    assert cases["network"].find("skipped").get("message") == "no --pcap or --iface given: nothing to analyse"
    assert "internal error" in cases["serialization"].find("error").get("message")
    suites = {s.get("name"): s for s in ET.fromstring(xml).iter("testsuite")}
    assert suites["celerydiag.network"].get("skipped") == "1"
    assert suites["celerydiag.serialization"].get("errors") == "1"
    assert suites["celerydiag.backend"].get("tests") == "1"


def test_junit_failure_carries_the_fix():
    failure = _cases(rendered(load("full-v1"), "junit"))["backend.lock-wait"].find("failure")
    assert failure.get("type") == "critical"
    assert "database_engine_options = {'isolation_level': 'READ COMMITTED'}" in failure.text


def test_junit_stays_well_formed_with_control_characters_and_markup():
    """Driver errors can carry ANSI colour codes or NULs; XML 1.0 forbids them."""
    f = Finding("backend.x", Cause.BACKEND, Severity.CRITICAL, "bad <tag> & \x1b[31mred\x1b[0m",
                detail="nul \x00 here", impact_ms=2000.0)
    report = Report.build({"broker": "", "backend": "", "source": "flags"}, 1000.0,
                          [ProbeResult("backend", ProbeStatus.RAN, "", 0.1, (f,)),
                           ProbeResult.failed("broker", "refused \x1b[1mbold\x07 \x00")], {}, "0")
    root = ET.fromstring(rendered(report, "junit"))  # raises on malformed XML
    assert "bad <tag> & " in root.find(".//failure").get("message")


def test_markdown_has_the_summary_table_in_rank_order():
    report = load("full-v1")
    lines = rendered(report, "markdown").splitlines()
    start = lines.index("| severity | id | impact ms | title |")
    rows = lines[start + 2:start + 2 + len(report.findings)]
    assert [row.split("|")[2].strip(" `") for row in rows] == [f.id for f in report.findings]
    assert rows[0].startswith("| critical | `e2e.visibility-poll` | 2105.0 |")


def test_markdown_fix_is_a_fenced_python_block():
    out = rendered(load("full-v1"), "markdown")
    assert "```python\ndatabase_engine_options = {'isolation_level': 'READ COMMITTED'}\n```" in out


def test_markdown_table_escapes_pipes():
    f = Finding("backend.x", Cause.BACKEND, Severity.INFO, "a | b\nc")
    report = Report.build({"broker": "", "backend": "", "source": "flags"}, 1000.0,
                          [ProbeResult("backend", ProbeStatus.RAN, "", 0.1, (f,))], {}, "0")
    assert "| info | `backend.x` | 0.0 | a \\| b c |" in rendered(report, "markdown")


def test_text_shows_user_strings_literally_not_as_rich_markup():
    """Titles, details, reasons and URLs are data: `celery[redis]` or a stray `[/]` must print."""
    f = Finding("backend.x", Cause.BACKEND, Severity.WARNING, "pip install celery[redis]",
                detail="closing [/] and [bold]not bold[/bold]", impact_ms=300.0,
                fix=Fix("set broker_transport_options['x']", docs=("https://h/[a]",)))
    report = Report.build({"broker": "amqp://u:**@[::1]:5672//", "backend": "redis://h/0", "source": "flags"},
                          1000.0, [ProbeResult("backend", ProbeStatus.RAN, "", 0.1, (f,)),
                                   ProbeResult.skipped("network", "no [pcap] given")], {}, "0")
    out = rendered(report, "text")
    for literal in ("celery[redis]", "closing [/] and [bold]not bold[/bold]", "no [pcap] given",
                    "[::1]", "https://h/[a]"):
        assert literal in out


def test_text_colour_only_when_asked():
    report = load("full-v1")
    assert "\x1b[" not in rendered(report, "text", color=False)
    assert "\x1b[" in rendered(report, "text", color=True)


def test_text_shows_observed_latency_and_how_much_causes_explain():
    out = rendered(load("full-v1"), "text")
    assert "P50 14.2 ms, P99 2105.0 ms" in out
    assert "Sum of the causes' impact: 2175.8 ms" in " ".join(out.split())  # 1840.5 + 240 + 95.25


def test_text_latency_line_with_p99_but_no_p50():
    report = load("full-v1")
    from dataclasses import replace

    partial = replace(report, latency={**report.latency, "observed_p50_ms": None})
    assert "P99 2105.0 ms" in rendered(partial, "text")


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_empty_report_renders(fmt):
    out = rendered(load("empty-v1"), fmt)
    assert "--static: this probe needs the network" in out


def test_text_never_wraps_or_crops_pasteable_config_or_doc_links():
    config = ("broker_transport_options = {'confirm_publish': True, 'max_retries': 3, 'interval_start': 0,"
              " 'interval_step': 0.2, 'interval_max': 0.5}\nresult_expires = 3600\n"
              f"task_default_queue = '{'q' * 140}'\n")  # one line longer than the console
    doc = "https://docs.celeryq.dev/en/stable/userguide/configuration.html#" + "a" * 80
    f = Finding("broker.x", Cause.BROKER, Severity.WARNING, "t", impact_ms=300.0, fix=Fix("s", config, (doc,)))
    report = Report.build({"broker": "", "backend": "", "source": "flags"}, 1000.0,
                          [ProbeResult("broker", ProbeStatus.RAN, "", 0.1, (f,))], {}, "0")
    for color in (False, True):
        out = rendered(report, "text", color=color)
        plain = re.sub("\x1b\\[[0-9;]*m", "", out)
        # the config arrives merged (issue 17: one block, dicts one key a line); no line of it is cut
        from celerydiag.render.words import paste_block

        block = paste_block(report)
        assert "'interval_step': 0.2," in block
        for line in block.splitlines():
            assert line in plain.splitlines(), line
        assert f"  docs: {doc}" in plain.splitlines()
