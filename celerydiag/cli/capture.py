"""`celerydiag capture`: live or offline packet analysis of broker and backend traffic."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import click

from celerydiag.cli import FiniteRange, named_target, output_options, target_options
from celerydiag.emit import (
    DISK_ERRNOS,
    Output,
    check_writable,
    exit_code,
    fail_on_severity,
    open_output,
    severity_counts,
    writing,
)
from celerydiag.errors import ExitCode, InputError
from celerydiag.render import OutputFormat

EPILOG = """\b
Examples:
  celerydiag capture --read broker.pcap                         # offline: a tcpdump/tshark/our own capture
  sudo celerydiag capture --iface eth0 --duration 30            # live on the default ports
  sudo celerydiag capture -A proj.celery:app --iface lo --write cap.pcapng  # your app's ports, keep the file
  sudo celerydiag capture --iface any -B 256 -d 60              # a busy host: a bigger kernel ring
  celerydiag capture --read cap.pcapng --format json | jq '.connections[] | {client, amqp}'
  celerydiag capture --read raw.pcap --write shareable.pcap     # copy with AMQP credentials blanked

Every TCP count follows Wireshark's tcp.analysis definitions; check any number with e.g.
  tshark -r FILE -Y tcp.analysis.zero_window -T fields -e tcp.stream
"""
DEFAULT_PORTS = (5672, 5671, 6379, 5432, 3306)


@click.command("capture", epilog=EPILOG)
@click.option("-r", "--read", "read_", type=click.Path(dir_okay=False), metavar="FILE",
              help="Analyse this pcap or pcapng file (tcpdump -w, tshark -w, dumpcap, --write).")
@click.option("-i", "--iface", metavar="IFACE",
              help="Capture live on this interface, e.g. eth0 or lo (one interface; needs root or CAP_NET_RAW).")
@click.option("-p", "--port", "ports", type=click.IntRange(1, 65535), multiple=True, metavar="PORT",
              help="Another server port to capture and analyse (repeatable). Defaults: 5672, 5671, 6379, 5432, "
                   "3306, plus the ports of --app/--broker/--backend.")
@click.option("-d", "--duration", type=FiniteRange(min=0.1, max=86400), default=10.0, show_default=True,
              help="Live: seconds to capture (Ctrl-C stops earlier and still analyses).")
@click.option("-c", "--count", type=click.IntRange(min=0), default=0, show_default=True,
              help="Live: stop after this many packets (0 = no limit).")
@click.option("-w", "--write", "write", type=click.Path(dir_okay=False, writable=True), metavar="FILE",
              help="Live: keep the capture in this file (pcapng, with the kernel's drop count). With --read: "
                   "write a pcap copy (credentials blanked).")
@click.option("-B", "--buffer-mib", type=FiniteRange(min=0.125, max=4096), default=64.0, show_default=True,
              help="Live: the kernel ring that holds packets until they are analysed, in MiB (like tcpdump -B). "
                   "Packets that find it full are dropped, and the report says so.")
@click.option("-s", "--snaplen", type=click.IntRange(64, 262144), default=262144, show_default=True,
              help="Live: bytes kept of each packet (like tcpdump -s); a cut payload is reported as partial data.")
@click.option("--scrub/--no-scrub", default=True, show_default=True,
              help="Blank AMQP PLAIN credentials (Connection.Start-Ok) in what --write writes. They are never "
                   "printed either way.")
@target_options
@output_options
def command(read_: str | None, iface: str | None, ports: tuple[int, ...], duration: float, count: int,
            write: str | None, buffer_mib: float, snaplen: int, scrub: bool, app: str | None, broker: str | None,
            backend: str | None, fmt: OutputFormat, output: str | None, fail_on: str, budget_ms: float,
            no_color: bool, verbose: bool = False) -> ExitCode:
    """Find network causes of late task states in broker and backend traffic, live or from a file.

    Per TCP connection: zero-window episodes (who stopped reading), retransmissions, duplicate ACKs,
    resets and RTT, counted as Wireshark does; AMQP heartbeats (negotiated value, longest silence per
    side, who missed them), Connection.Close/Blocked with reasons; Redis per-command latency on the
    state path and polls per task id. Findings are ranked by the milliseconds they add.

    Exit codes: 0 nothing at or above --fail-on, 1 findings at or above it, 2 bad usage or unreadable
    file (or no capture privileges, or an unwritable --output), 130 Ctrl-C, 143 SIGTERM, 141 stdout closed
    early (`| head`).
    """
    with open_output(output, fmt, no_color) as out:  # an unwritable --output fails before the capture
        live = LiveOptions(duration, count, buffer_mib, snaplen)
        return _capture(out, read_, iface, ports, live, write, scrub, app, broker, backend, fmt, output, fail_on,
                        budget_ms, verbose)


@dataclass(frozen=True)
class LiveOptions:
    duration: float
    count: int
    buffer_mib: float
    snaplen: int


def _capture(out: Output, read_: str | None, iface: str | None, ports: tuple[int, ...], live: LiveOptions,
             write: str | None, scrub: bool, app: str | None, broker: str | None,
             backend: str | None, fmt: OutputFormat, output: str | None, fail_on: str,
             budget_ms: float, verbose: bool = False) -> ExitCode:
    from celerydiag.network.capture import analyse, ports_for_target

    if bool(read_) == bool(iface):
        raise InputError("give exactly one of --read FILE or --iface IFACE",
                         "celerydiag capture --read FILE.pcap, or sudo celerydiag capture --iface eth0")
    if read_ and not os.path.isfile(read_):
        raise InputError(f"cannot read {read_}: no such file")
    if write:  # like --output: an unwritable --write fails before the capture, not after it
        check_writable(write, "--write")
    for name, other in (("--read", read_), ("--write", write)):
        if output and other and os.path.exists(output) and os.path.samefile(output, other):
            raise InputError(f"--output {output} is the {name} file; the report would replace the capture",
                             "write the report to another file")
    urls = _target_urls(app, broker, backend)
    port_set = ports_for_target(urls, ports)
    if iface:
        report = _live(iface, port_set, live, write, scrub, budget_ms)
        return _emit_capture(out, report, fmt, fail_on, verbose)
    assert read_ is not None  # exactly one of --read/--iface, checked above
    if write:
        from celerydiag.network.capture.live import scrub_file

        if os.path.exists(write) and os.path.samefile(read_, write):
            raise InputError(f"--write {write} is the file being read; it would be destroyed",
                             "write the scrubbed copy to another file")
        with writing("--write", write):
            scrub_file(read_, write) if scrub else _copy(read_, write)
    progress = _progress(fmt, output)
    try:
        report = analyse(read_, ports=port_set, budget_ms=budget_ms, progress=progress)
    except InputError:
        if progress is not None:  # the error line replaces the "N packets read" line, not after it
            click.echo("\r", err=True, nl=False)
        raise
    return _emit_capture(out, report, fmt, fail_on, verbose)


def _target_urls(app: str | None, broker: str | None, backend: str | None) -> list[str]:
    """The named target's URLs, whose ports join the capture filter (none named: default ports)."""
    target = named_target(app, broker, backend)
    return [target.broker_url, target.backend_url] if target else []


def _live(iface: str, ports: Any, opts: LiveOptions, write: str | None, scrub: bool, budget_ms: float) -> Any:
    """Capture and analyse in one pass: frames go from the kernel's ring to the analysis (and, with
    --write, to the file on the way); no temporary file holds the user's traffic."""
    from dataclasses import replace

    from celerydiag.network.capture import analyse_frames, live

    server_ports = sorted(ports.servers())
    with live.LiveCapture(iface, server_ports, duration=opts.duration, count=opts.count, snaplen=opts.snaplen,
                          buffer_bytes=int(opts.buffer_mib * (1 << 20))) as cap:
        click.echo(f"celerydiag: capturing on {iface} ({cap.filter}) for up to {opts.duration:g} s; "
                   "Ctrl-C stops and analyses", err=True)
        if write:
            with writing("--write", write, DISK_ERRNOS), open(write, "wb") as fh:
                report = analyse_frames(write, cap.info, live.written(cap, fh, scrub=scrub), ports=ports,
                                        budget_ms=budget_ms)
        else:
            report = analyse_frames(f"{iface} (live)", cap.info, cap.frames(), ports=ports, budget_ms=budget_ms)
    return replace(report, extra={**report.extra, "live": cap.summary(write)})


def _copy(src: str, dst: str) -> None:
    import shutil

    shutil.copyfile(src, dst)


def _progress(fmt: str, output: str | None) -> Any:
    if not sys.stderr.isatty():
        return None

    def show(count: int) -> None:
        click.echo(f"\rcelerydiag: {count} packets read", err=True, nl=False)

    return show


def _emit_capture(out: Output, report: Any, fmt: OutputFormat, fail_on: str, verbose: bool = False) -> ExitCode:
    """Through the one output path: capture's own document for text and json, the report renderer for
    every other format (html with the connection timeline), the connection count and severities as
    the summary."""
    from celerydiag.findings import Severity
    from celerydiag.network.capture.render import as_report, render_html, render_text

    def write(stream: Any, color: bool) -> None:
        if fmt is OutputFormat.JSON:
            import json

            json.dump(report.to_dict(), stream, indent=2, ensure_ascii=False, allow_nan=False)
            stream.write("\n")
        elif fmt is OutputFormat.TEXT:
            render_text(report, stream, color=color, verbose=verbose)
        elif fmt is OutputFormat.HTML:
            render_html(report, stream, verbose=verbose)
        else:
            from celerydiag.render import render

            render(as_report(report), fmt, stream, fail_on=fail_on_severity(fail_on) or Severity.CRITICAL)

    if sys.stderr.isatty():
        click.echo("\r", err=True, nl=False)
    n = len(report.connections)  # a file cut short never gets here: the reader raised InputError
    summary = (f"celerydiag: {n} connection{'' if n == 1 else 's'}, "
               f"{severity_counts(f.severity for f in report.findings)}")
    return out.emit(write, summary, exit_code(report.worst(), fail_on))
