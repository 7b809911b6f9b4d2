"""``--format junit``: one testsuite per probe, one testcase per finding, passing checks included
so CI counts what was verified. Failures are findings at or above ``--fail-on``."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any, TextIO

from celerydiag.findings import ProbeStatus, Report, Severity
from celerydiag.render.words import impact_brief

# Characters XML 1.0 forbids even escaped (driver errors can carry ANSI colour codes or NULs);
# ElementTree writes them as they are, which CI's JUnit parsers reject.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def render(report: Report, stream: TextIO, *, fail_on: Severity = Severity.CRITICAL,
           **_: Any) -> None:
    suites = ET.Element("testsuites", name="celerydiag")
    by_probe: dict[str, list[Any]] = {}
    for f in report.findings:
        by_probe.setdefault(f.id.split(".", 1)[0], []).append(f)
    for probe in report.probes:
        findings = by_probe.pop(probe.name, [])
        _suite(suites, probe.name, probe.status, probe.reason, probe.elapsed_s, findings, fail_on)
    for name, findings in by_probe.items():  # merged reports may hold findings of unlisted probes
        _suite(suites, name, ProbeStatus.RAN, "", 0.0, findings, fail_on)
    ET.indent(suites)
    stream.write(_NOT_XML.sub("", ET.tostring(suites, encoding="unicode", xml_declaration=True)))
    stream.write("\n")


def _suite(parent: ET.Element, name: str, status: ProbeStatus, reason: str, elapsed: float,
           findings: list[Any], fail_on: Severity) -> None:
    suite = ET.SubElement(parent, "testsuite", name=f"celerydiag.{name}", time=f"{elapsed:.3f}")
    failures = errors = skipped = 0
    if status == ProbeStatus.SKIPPED:
        case = ET.SubElement(suite, "testcase", classname=f"celerydiag.{name}", name=name)
        ET.SubElement(case, "skipped", message=reason)
        skipped = 1
    elif status == ProbeStatus.FAILED:
        case = ET.SubElement(suite, "testcase", classname=f"celerydiag.{name}", name=name)
        ET.SubElement(case, "error", message=reason)
        errors = 1
    for f in findings:
        case = ET.SubElement(suite, "testcase", classname=f"celerydiag.{name}", name=f.id)
        if f.severity >= fail_on and f.severity > Severity.OK:
            failure = ET.SubElement(case, "failure", type=str(f.severity),
                                    message=f"{f.title} ({impact_brief(f)})")
            failure.text = "\n".join(x for x in (f.detail, f.fix.summary if f.fix else "",
                                                 f.fix.config if f.fix else "") if x)
            failures += 1
        else:
            out = ET.SubElement(case, "system-out")
            out.text = f"{f.severity}: {f.title} ({impact_brief(f)})"
    tests = len(findings) + (1 if status != ProbeStatus.RAN else 0)
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", str(skipped))
