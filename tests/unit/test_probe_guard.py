"""The probe guard scrubs every finding of every probe: a probe that forgets to redact cannot
leak the target's password into any output."""

from __future__ import annotations

from collections.abc import Iterator

from celerydiag.findings import Cause, Finding, Fix, Severity
from celerydiag.probe import Probe, ProbeContext, run_probe
from celerydiag.target import resolve_target

SECRET = "Sup3r-Secret-pw"


class CarelessProbe(Probe):
    """Puts the broker URL, password and all, everywhere a finding has text."""

    name = "careless"
    cause = Cause.BROKER

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        url = ctx.target.broker_url
        yield Finding("careless.leak", Cause.BROKER, Severity.WARNING, f"title {SECRET}", f"detail {url}",
                      1.0, {"url": url, "nested": {"deep": [f"pw={SECRET}"]}, "count": 3},
                      Fix(f"summary {SECRET}", f"broker_url = '{url}'\n", ("https://docs",)))


def test_every_string_of_every_finding_is_scrubbed() -> None:
    target = resolve_target(broker=f"amqp://user:{SECRET}@127.0.0.1:5672//", backend="disabled://")
    result = run_probe(CarelessProbe(), ProbeContext(target=target))
    (finding,) = result.findings
    assert SECRET not in repr(finding.to_dict())
    assert finding.evidence["count"] == 3 and finding.evidence["url"] == "amqp://user:**@127.0.0.1:5672//"
    compile(finding.fix.config, "<fix>", "exec")
