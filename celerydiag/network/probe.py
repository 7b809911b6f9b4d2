"""The doctor's network probe: the capture analysis (``celerydiag.network.capture``) on the target's ports."""

from __future__ import annotations

import os
from collections.abc import Iterator

from celerydiag.findings import Cause, Finding, Severity
from celerydiag.probe import Probe, ProbeContext

# The skip reason says how to enable the probe: it is all a user without a capture needs to know.
NOT_CAPTURED = ("no capture given: pass --pcap FILE (e.g. from `tcpdump -i any -w FILE port 5672 or port 6379`) "
                "or --iface IFACE (live, needs root) to look for zero windows, retransmissions and missed "
                "heartbeats")


class NetworkProbe(Probe):
    """Zero windows, retransmissions, missed AMQP heartbeats and RTT, from a capture of the target's traffic.

    With ``--pcap FILE`` it analyses that file; with ``--iface IFACE`` it captures live for ``--duration``
    seconds on the broker/backend ports (BPF filter; root or CAP_NET_RAW), writes nothing but a temporary
    pcap that is removed afterwards (also on Ctrl-C), and analyses it. Without either it is ``skipped``
    with the reason and how to give it one (:data:`NOT_CAPTURED`). Load: none (passive).
    """

    name = "network"
    cause = Cause.NETWORK

    def applies(self, ctx: ProbeContext) -> str | None:
        return None if ctx.options.pcap or ctx.options.iface else NOT_CAPTURED

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        from celerydiag.network.capture import analyse, ports_for_target

        ports = ports_for_target([ctx.target.broker_url, ctx.target.backend_url])
        pcap, iface = ctx.options.pcap, ctx.options.iface
        if iface:
            from celerydiag.network.capture import live

            duration = ctx.options.duration
            pcap = live.default_path()
            ctx.cleanup.callback(_unlink, pcap)  # registered before the first packet is written
            ctx.progress.start(self.name, total=duration)
            done = [0.0]

            def tick(_packets: int, elapsed: float) -> None:
                if elapsed - done[0] >= 0.5:
                    ctx.progress.step(elapsed - done[0], f"capturing on {iface}")
                    done[0] = elapsed

            live.capture(iface, sorted(ports.servers()), pcap, duration=duration, scrub=True, progress=tick)
        assert pcap is not None  # applies() ran: a file was given or captured above
        # A file cut short or corrupt raises InputError (the guard: a failed probe, never a verdict on
        # part of it); `doctor --pcap` has already refused such a file as usage, exit 2 (check_pcap).
        report = analyse(pcap, ports=ports, budget_ms=ctx.budget_ms)
        yield from report.findings
        if not report.connections:
            yield Finding(id="network.no-traffic", cause=Cause.NETWORK, severity=Severity.INFO,
                          title="No broker or backend TCP traffic in the capture",
                          detail=f"Ports looked at: {', '.join(map(str, sorted(ports.servers())))}.",
                          evidence={"packets_count": report.file["packets"]})


def check_pcap(path: str | None) -> str | None:
    """``--pcap`` checked when the command line is read: a file that is not a complete capture is bad
    input (InputError: exit 2, one line) before any probe runs, the same refusal ``capture --read``
    gives, rather than a network probe that fails late under a report the other probes call ok."""
    if path is not None:
        from celerydiag.network.capture import check_capture

        check_capture(path)
    return path


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
