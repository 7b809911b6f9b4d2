"""`celerydiag probe NAME`: one probe alone, same output and exit codes as doctor."""

from __future__ import annotations

from typing import Any, TextIO

import click

from celerydiag.cli import output_options, target_options
from celerydiag.cli.doctor import probe_options, run_report
from celerydiag.emit import open_output
from celerydiag.errors import ExitCode
from celerydiag.render import OutputFormat


@click.command("probe")
@click.argument("name", required=False)
@click.option("--list", "list_", is_flag=True, help="List the probes and what each measures.")
@target_options
@output_options
@probe_options
def command(name: str | None, list_: bool, **kw: Any) -> ExitCode:
    """Run one probe (config, e2e, broker, backend, ...) on the target.

    `celerydiag probe --list` shows them all with one line each. Each option below says which
    probes read it; one that NAME does not read is refused (exit 2), not silently ignored.

    Exit codes: 0 nothing at or above --fail-on, 1 findings at or above it, 2 bad usage or input
    (no or an unknown NAME, an option NAME does not read, an unwritable --output, before the
    probe), 3 target unreachable, 4 internal error (a bug of ours; --traceback shows it), 130
    Ctrl-C and 143 SIGTERM (after cleanup), 141 stdout closed early (`| head`).
    """
    from celerydiag.probe import get_probe, probe_classes

    if list_ or not name:
        listing = "".join(f"{cls.name:<14} {cls.summary()}\n" for cls in probe_classes())

        def write(stream: TextIO, _color: bool) -> None:
            stream.write(listing)

        return open_output(None, OutputFormat.TEXT, True).emit(write, None, ExitCode.OK if list_ else ExitCode.USAGE)
    cls = get_probe(name)
    # A static probe (config, polling) declares no `needs`, so diagnose() checks no reachability for
    # it; not --static, so the polling probe may still count the backend's reads (it says when it cannot).
    return run_report(probes=[cls], static=False, **kw)
