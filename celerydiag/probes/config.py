"""Static checks of the target's Celery configuration against known latency pitfalls."""

from __future__ import annotations

from collections.abc import Iterator

from celerydiag.findings import Cause, Finding, Fix, Severity
from celerydiag.probes import Probe, ProbeContext


class ConfigProbe(Probe):
    """Static config check: settings that delay or lose state updates (no network).

    Reads the app's settings only; creates nothing, so there is nothing to clean up.
    """

    name = "config"
    cause = Cause.CONFIG
    static = True

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        conf = ctx.target.conf
        accepted = set(conf.accept_content or ()) | set(conf.result_accept_content or ())
        if any("pickle" in str(c) or "python-serialize" in str(c) for c in accepted):
            yield Finding(
                "config.pickle-accepted", Cause.CONFIG, Severity.WARNING,
                "pickle is accepted: anyone who can publish to the broker can run code",
                fix=Fix("accept json only", "accept_content = ['json']\n"
                        "result_accept_content = ['json']\n"))
        else:
            yield Finding("config.pickle-accepted", Cause.CONFIG, Severity.OK,
                          "pickle is not accepted")
