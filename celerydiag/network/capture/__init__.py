"""Packet analysis of broker and backend traffic: ``analyse(path)`` -> :class:`CaptureReport`.

Layers, each in its own module: ``reader`` (pcap/pcapng records, streamed), ``decode`` (link/IP/TCP
headers), ``tcp`` (Wireshark's tcp.analysis rules per connection and direction), ``stream``
(in-order reassembly), ``amqp`` and ``resp`` (protocol parsers), ``analysis`` (the one-pass loop),
``report`` (``celerydiag.capture/1``), ``assess`` (findings with impact_ms and fixes), ``coverage``
(drops and cut payloads as a finding), ``ring`` (the kernel's packet ring and BPF filter), ``live``
(frames from the ring into the same analysis) and ``render`` (text for people).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from celerydiag.network.capture.analysis import Ports
from celerydiag.network.capture.reader import CaptureInfo, check_capture
from celerydiag.network.capture.report import CAPTURE_SCHEMA, CaptureReport

__all__ = ["CAPTURE_SCHEMA", "CaptureInfo", "CaptureReport", "Ports", "analyse", "analyse_frames", "check_capture",
           "ports_for_target"]


def analyse(path: str, *, ports: Ports | None = None, budget_ms: float = 1000.0,
            progress: Callable[[int], None] | None = None, extra: dict[str, Any] | None = None) -> CaptureReport:
    """Read ``path`` (pcap or pcapng) once and build the report. Raises InputError for a file that
    is not a complete, valid capture (not one, cut short, corrupt): never a report on part of it."""
    from celerydiag.network.capture.reader import open_capture

    info, frames = open_capture(path)
    return analyse_frames(path, info, frames, ports=ports, budget_ms=budget_ms, progress=progress, extra=extra)


def analyse_frames(path: str, info: CaptureInfo, frames: Iterable[tuple[float, int, bytes]], *,
                   ports: Ports | None = None, budget_ms: float = 1000.0,
                   progress: Callable[[int], None] | None = None,
                   extra: dict[str, Any] | None = None) -> CaptureReport:
    """The report on frames from the reader (:func:`~celerydiag.network.capture.reader.open_stream`
    for a capture already in memory: the fuzzers feed it mutated files this way)."""
    from celerydiag.network.capture import analysis, assess, coverage, report
    from celerydiag.rank import rank

    result = analysis.run(info, frames, ports or Ports(), progress=progress)
    conns, timeline = report.summarise(result)
    # after run(): a live capture's drop count is known once its frames are exhausted
    seen = coverage.Coverage(info.packets, info.interface_drops or 0, result.cut_packets,
                             sum(c.tcp["payload_bytes"]["client"] + c.tcp["payload_bytes"]["server"] for c in conns),
                             result.cut_bytes)
    findings = coverage.qualified(rank(assess.assess(conns), budget_ms), seen)
    file_block: dict[str, Any] = {
        "path": path, "packets": info.packets, "link_type": info.link_type, "format": info.format,
        # celerydiag.capture/1 keeps the key; a file cut short raises InputError in the reader instead
        "truncated": False, "tcp_packets": info.packets - result.non_tcp,
        "duration_s": round((result.last_ts or 0.0) - (result.first_ts or 0.0), 6),
    }
    if info.interface_drops is not None:
        file_block["interface_drops"] = info.interface_drops
    return CaptureReport(file=file_block, connections=tuple(conns), findings=findings, timeline=tuple(timeline),
                         budget_ms=budget_ms, extra=dict(extra or {}))


def ports_for_target(urls: Iterable[str], extra: Iterable[int] = ()) -> Ports:
    """Default ports plus the broker/backend ports named in the target's URLs and ``--port``."""
    from urllib.parse import urlsplit

    from celerydiag.target import Family, family_of, scheme_of

    ports = Ports()
    for url in urls:
        if not url or "://" not in url:
            continue
        scheme = scheme_of(url)
        family = family_of(scheme)
        for part in url.split(";"):
            try:
                port = urlsplit(part).port
            except ValueError:
                port = None
            if family is Family.AMQP:
                ports.amqp.add(port or (5671 if scheme == "amqps" else 5672))
            elif family is Family.REDIS:
                ports.redis.add(port or 6379)
            elif family is Family.DATABASE and port:
                ports.other.add(port)
    ports.other.update(p for p in extra if p not in ports.amqp and p not in ports.redis)
    return ports
