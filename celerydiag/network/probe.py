"""The doctor's network probe: the capture analysis (``celerydiag.network.capture``) on the target's ports."""

from __future__ import annotations

import os
from collections.abc import Iterator

from celerydiag.findings import Cause, Finding, Severity
from celerydiag.probe import Probe, ProbeContext


class NetworkProbe(Probe):
    """Zero windows, retransmissions, missed AMQP heartbeats and RTT, from a capture of the target's traffic.

    With ``--pcap FILE`` it analyses that file; with ``--iface IFACE`` it captures live for ``--duration``
    seconds on the broker/backend ports (BPF filter; root or CAP_NET_RAW), writes nothing but a temporary
    pcap that is removed afterwards (also on Ctrl-C), and analyses it. Without either it measures nothing
    and says how to enable it (an ``info`` finding, ``network.not-captured``), because a probe cannot see
    the options in ``applies``. Load: none (passive).
    """

    name = "network"
    cause = Cause.NETWORK

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        from celerydiag.network.capture import analyse, ports_for_target

        opts = ctx.options
        ports = ports_for_target([ctx.target.broker_url, ctx.target.backend_url])
        pcap, iface = opts.get("pcap"), opts.get("iface")
        if not pcap and not iface:
            yield Finding(
                id="network.not-captured", cause=Cause.NETWORK, severity=Severity.INFO,
                title="Network not checked: no capture given",
                detail="Pass --pcap FILE (e.g. from `tcpdump -i any -w FILE port 5672 or port 6379`) or "
                       "--iface IFACE (live, needs root) to look for zero windows, retransmissions and "
                       "missed heartbeats.",
            )
            return
        if iface:
            from celerydiag.network.capture import live

            duration = float(opts.get("duration") or 3.0)
            pcap = live.default_path()
            ctx.cleanup.callback(_unlink, pcap)  # registered before the first packet is written
            ctx.progress.start(self.name, total=duration)
            done = [0.0]

            def tick(_packets: int, elapsed: float) -> None:
                if elapsed - done[0] >= 0.5:
                    ctx.progress.step(elapsed - done[0], f"capturing on {iface}")
                    done[0] = elapsed

            live.capture(iface, sorted(ports.servers()), pcap, duration=duration, scrub=True, progress=tick)
        report = analyse(pcap, ports=ports, budget_ms=ctx.budget_ms)
        if report.file.get("truncated"):
            yield Finding(id="network.capture-truncated", cause=Cause.NETWORK, severity=Severity.INFO,
                          title="The capture file is truncated; analysed what was readable",
                          evidence={"packets_count": report.file["packets"]})
        yield from report.findings
        if not report.connections:
            yield Finding(id="network.no-traffic", cause=Cause.NETWORK, severity=Severity.INFO,
                          title="No broker or backend TCP traffic in the capture",
                          detail=f"Ports looked at: {', '.join(map(str, sorted(ports.servers())))}.",
                          evidence={"packets_count": report.file["packets"]})


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
