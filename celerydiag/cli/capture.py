"""`celerydiag capture`: live or offline packet analysis of broker and backend traffic."""

from __future__ import annotations

import os
import sys
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
  sudo celerydiag capture -A proj.celery:app --iface lo --write cap.pcap    # your app's ports, keep the file
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
@click.option("-w", "--write", "write", type=click.Path(dir_okay=False, writable=True), metavar="FILE.pcap",
              help="Live: keep the capture in this pcap. With --read: write a copy (credentials blanked).")
@click.option("--scrub/--no-scrub", default=True, show_default=True,
              help="Blank AMQP PLAIN credentials (Connection.Start-Ok) in what --write writes. They are never "
                   "printed either way.")
@target_options
@output_options
def command(read_: str | None, iface: str | None, ports: tuple[int, ...], duration: float, count: int,
            write: str | None, scrub: bool, app: str | None, broker: str | None, backend: str | None,
            fmt: OutputFormat, output: str | None, fail_on: str, budget_ms: float, no_color: bool,
            verbose: bool = False) -> ExitCode:
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
        return _capture(out, read_, iface, ports, duration, count, write, scrub, app, broker, backend, fmt,
                        output, fail_on, budget_ms, verbose)


def _capture(out: Output, read_: str | None, iface: str | None, ports: tuple[int, ...], duration: float,
             count: int, write: str | None, scrub: bool, app: str | None, broker: str | None,
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
    extra: dict[str, Any] = {}
    if iface:
        path, extra = _live(iface, port_set, duration, count, write, scrub)
    else:
        assert read_ is not None  # exactly one of --read/--iface, checked above
        path = read_
    if not iface and write:
        from celerydiag.network.capture.live import scrub_file

        if os.path.exists(write) and os.path.samefile(path, write):
            raise InputError(f"--write {write} is the file being read; it would be destroyed",
                             "write the scrubbed copy to another file")
        with writing("--write", write):
            scrub_file(path, write) if scrub else _copy(path, write)
    progress = _progress(fmt, output)
    try:
        report = analyse(path, ports=port_set, budget_ms=budget_ms, progress=progress, extra=extra)
    except InputError:
        if progress is not None:  # the error line replaces the "N packets read" line, not after it
            click.echo("\r", err=True, nl=False)
        raise
    finally:
        if iface and not write:  # raw broker/backend traffic must not outlive us, error or Ctrl-C
            os.unlink(path)
    return _emit_capture(out, report, fmt, fail_on, verbose)


def _target_urls(app: str | None, broker: str | None, backend: str | None) -> list[str]:
    """The named target's URLs, whose ports join the capture filter (none named: default ports)."""
    target = named_target(app, broker, backend)
    return [target.broker_url, target.backend_url] if target else []


def _live(iface: str, ports: Any, duration: float, count: int, write: str | None,
          scrub: bool) -> tuple[str, dict[str, Any]]:
    from celerydiag.network.capture import live

    path = write or live.default_path()
    server_ports = sorted(ports.servers())
    click.echo(f"celerydiag: capturing on {iface} ({live.bpf_for(server_ports)}) for up to {duration:g} s; "
               "Ctrl-C stops and analyses", err=True)
    try:
        with writing("--write" if write else "the capture's temporary file", path, DISK_ERRNOS):
            result = live.capture(iface, server_ports, path, duration=duration, count=count, scrub=scrub)
    except BaseException:
        if not write and os.path.exists(path):
            os.unlink(path)
        raise
    return path, {"live": {"iface": iface, "filter": live.bpf_for(server_ports), "packets": result.packets,
                           "kernel_drops": result.kernel_drops, "interrupted": result.interrupted,
                           "seconds": round(result.seconds, 3), "written": write}}


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
