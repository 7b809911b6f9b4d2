"""Partial data is a finding: what share of the traffic the capture saw, and "lower bound" on every ok.

A capture that missed packets (the kernel dropped them: PACKET_STATISTICS live, a pcapng
Interface Statistics Block offline) or cut their payloads (the snap length) can still count what
it saw, but it cannot say "no retransmissions" or "no missed heartbeats": the missing part may
hold them (issue 13: a capture that saw 4.8 % of the packets said "ok: no retransmissions"). So
such a capture gets a warning finding saying what fraction was seen, and every ok verdict of it
says it is a lower bound, in every format (the title carries it, the evidence the ratio).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from celerydiag.findings import Cause, Finding, Fix, Severity
from celerydiag.rank import order

FINDING_ID = "network.partial-capture"
DOCS_TCPDUMP = "https://www.tcpdump.org/manpages/tcpdump.1.html"


@dataclass(frozen=True)
class Coverage:
    """What the capture holds against what went by."""

    packets: int  # frames captured
    drops: int  # frames the capture system dropped (kernel ring full, ISB isb_ifdrop)
    cut_packets: int  # TCP segments whose payload the snap length cut
    payload_bytes: int  # TCP payload bytes on the wire (from the IP lengths)
    cut_bytes: int  # of those, bytes not captured

    @property
    def seen_ratio(self) -> float:
        total = self.packets + self.drops
        return self.packets / total if total else 1.0

    @property
    def payload_seen_ratio(self) -> float:
        return 1.0 - self.cut_bytes / self.payload_bytes if self.payload_bytes else 1.0

    @property
    def partial(self) -> bool:
        return bool(self.drops or self.cut_packets)

    def phrase(self) -> str:
        """One clause for the ok verdicts: what was missing."""
        return _phrase(self.seen_ratio if self.drops else None,
                       self.payload_seen_ratio if self.cut_packets else None)


def _phrase(seen_ratio: float | None, payload_seen_ratio: float | None) -> str:
    parts = []
    if seen_ratio is not None:
        parts.append(f"the capture saw {_pct(seen_ratio)} of the packets")
    if payload_seen_ratio is not None:
        parts.append(f"{_pct(payload_seen_ratio)} of the payload bytes")
    return " and ".join(parts)


def lower_bound(findings: Iterable[Finding]) -> str | None:
    """``(a lower bound: ...)`` when ``findings`` hold the partial-capture warning, else None: for a
    renderer's own summary lines (a verdict, the folded ok checks) to carry it too."""
    for f in findings:
        if f.id == FINDING_ID:
            e = f.evidence
            seen = e["seen_ratio"] if e["kernel_drops_count"] else None
            payload = e["payload_seen_ratio"] if e["cut_packets_count"] else None
            return f"(a lower bound: {_phrase(seen, payload)})"
    return None


def _pct(ratio: float) -> str:
    """A share that never rounds to 100 % while something is missing."""
    text = f"{ratio:.1%}"
    return "99.9%" if text == "100.0%" and ratio < 1.0 else text


def finding(cov: Coverage) -> Finding:
    """The warning itself (a verdict: its severity is not a delay's)."""
    said = []
    if cov.drops:
        said.append(f"the kernel dropped {cov.drops:,} of {cov.packets + cov.drops:,} packets")
    if cov.cut_packets:
        said.append(f"the snap length cut the payload of {cov.cut_packets:,} packets")
    title = f"Partial capture: {cov.phrase()} ({'; '.join(said)}); every ok below is a lower bound"
    fixes = []
    if cov.drops:
        fixes.append("give the kernel ring more room (capture --buffer-mib 256, tcpdump -B 262144) or capture "
                     "fewer ports")
    if cov.cut_packets:
        fixes.append("capture whole packets (capture --snaplen 262144, tcpdump -s 0)")
    return Finding(
        id=FINDING_ID, cause=Cause.NETWORK, severity=Severity.WARNING, title=title,
        detail=("Counts (retransmissions, zero windows, heartbeats, Redis latencies) are of the packets captured; "
                "the missing ones may hold more. Missed AMQP frames or Redis replies also make the protocol "
                "parsers resynchronise. Capture again with room for the whole load before trusting an ok."),
        evidence={"packets_count": cov.packets, "kernel_drops_count": cov.drops,
                  "seen_ratio": round(cov.seen_ratio, 6), "cut_packets_count": cov.cut_packets,
                  "payload_seen_ratio": round(cov.payload_seen_ratio, 6)},
        fix=Fix("; ".join(fixes).capitalize() + ".", "", (DOCS_TCPDUMP,)),
    )


def qualified(findings: Iterable[Finding], cov: Coverage) -> tuple[Finding, ...]:
    """``findings`` (ranked) with the partial-capture warning added and every ok one marked as a
    lower bound; unchanged when the capture is complete."""
    findings = tuple(findings)
    if not cov.partial:
        return findings
    clause = cov.phrase()
    marked = [replace(f, title=f"{f.title} (a lower bound: {clause})",
                      evidence={**f.evidence, "lower_bound_seen_ratio": round(min(cov.seen_ratio,
                                                                                  cov.payload_seen_ratio), 6)})
              if f.severity is Severity.OK else f for f in findings]
    return order([*marked, finding(cov)])
