"""Every probe option says which probes read it, and one that no selected probe reads is a usage
error (issue 12, point 7): `probe broker --updates 50` used to run and ignore --updates. The
knowledge is one table, celerydiag.probe.READS; these tests hold the help, the refusals and the
acceptances to it, for every probe and every option."""

from __future__ import annotations

import importlib
import socket
from pathlib import Path

import click
import pytest

from celerydiag.cli import main
from celerydiag.errors import ExitCode
from celerydiag.findings import Cause
from celerydiag.probe import READS, probe_classes

PCAP = Path(__file__).resolve().parents[2] / "fixtures" / "pcaps" / "amqp_healthy.pcap"
VALUES = {"--timeout": "2", "--max-seconds": "5", "--samples": "20", "--updates": "50", "--poll-interval": "2",
          "--poll-strategy": "fixed", "--pcap": str(PCAP), "--iface": "lo", "--duration": "1",
          "--rabbitmq-api": "http://127.0.0.1:1"}
OPTIONS = sorted(set().union(*READS.values()))
STATIC = {cls.cause for cls in probe_classes() if cls.static}


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return int(code), out, err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(name: str) -> click.Command:
    return importlib.import_module(f"celerydiag.cli.{name}").command


def test_every_cause_says_what_it_reads():
    assert set(READS) == set(Cause)


def test_the_table_names_exactly_the_probe_options():
    """An option added to doctor/probe without a line in READS (or a stale line) fails here."""
    shared = {"--app", "--broker", "--backend", "--format", "--output", "--fail-on", "--budget-ms", "--no-color",
              "--verbose", "--static", "--list", "--help"}
    for name in ("doctor", "probe"):
        options = {max(p.opts, key=len) for p in _command(name).params if isinstance(p, click.Option)}
        assert options - shared == set(OPTIONS), name
    assert set(VALUES) == set(OPTIONS)


@pytest.mark.parametrize("command", ["doctor", "probe"])
@pytest.mark.parametrize("option", OPTIONS)
def test_help_says_which_probes_read_each_option(capsys, command, option):
    param = next(p for p in _command(command).params if option in p.opts)
    readers = [str(c) for c in Cause if option in READS[c]]
    assert "Read by the " in (param.help or ""), param.help
    for reader in readers:
        assert reader in (param.help or "").split("Read by the ", 1)[1], (option, param.help)
    code, out, _ = run(capsys, command, "--help")
    assert code == ExitCode.OK and option in out


UNREAD = [(cause, option) for cause in Cause for option in OPTIONS if option not in READS[cause]]


@pytest.mark.parametrize(("cause", "option"), UNREAD, ids=[f"{c}-{o}" for c, o in UNREAD])
def test_probe_refuses_an_option_it_does_not_read(capsys, cause, option):
    readers = [str(c) for c in Cause if option in READS[c]]
    code, out, err = run(capsys, "probe", str(cause), option, VALUES[option])
    assert code == ExitCode.USAGE, err
    assert f"{option} is read by the {readers[0]}" in err and "only" in err and f"not by {cause}" in err, err
    assert "Traceback" not in err and out == ""


def test_the_issues_example(capsys):
    code, _, err = run(capsys, "probe", "broker", "--updates", "50")
    assert code == ExitCode.USAGE
    assert "--updates is read by the e2e probe only" in err


READ = [(cause, option) for cause in Cause for option in sorted(READS[cause])]


@pytest.mark.parametrize(("cause", "option"), READ, ids=[f"{c}-{o}" for c, o in READ])
def test_probe_accepts_every_option_it_reads(capsys, cause, option):
    """Accepted, so the run goes on: to the reachability check (a closed port: exit 3) for a probe
    that needs the broker or backend, to its findings (or its skip) for one that needs neither."""
    from celerydiag.probe import probe_of

    port = _closed_port()  # refused at once: no --timeout needed to keep it quick
    code, out, err = run(capsys, "probe", str(cause), option, VALUES[option], "--format", "json",
                         "--broker", f"amqp://guest@127.0.0.1:{port}//", "--backend", f"redis://127.0.0.1:{port}/0")
    needs_target = cause not in STATIC and probe_of(cause).needs
    expected = {ExitCode.UNREACHABLE} if needs_target else {ExitCode.OK, ExitCode.FINDINGS}
    assert code in expected, err


@pytest.mark.parametrize("option", [o for o in OPTIONS if not any(o in READS[c] for c in STATIC)])
def test_doctor_static_refuses_an_option_only_network_probes_read(capsys, option):
    code, out, err = run(capsys, "doctor", "--static", option, VALUES[option])
    assert code == ExitCode.USAGE, err
    assert f"{option} is read by the" in err and "which --static does not run" in err, err


def test_doctor_without_static_accepts_every_option(capsys):
    port = _closed_port()
    args = [arg for option in OPTIONS for arg in (option, VALUES[option]) if option != "--timeout"]
    code, out, err = run(capsys, "doctor", "--broker", f"amqp://guest@127.0.0.1:{port}//", "--timeout", "1", *args)
    assert code == ExitCode.UNREACHABLE, err


@pytest.mark.parametrize("command", ["probe", "report", "doctor"])
def test_help_lists_the_exit_codes(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == ExitCode.OK
    text = " ".join(out.split())
    codes = {"probe": [0, 1, 2, 3, 4, 130, 143, 141], "doctor": [0, 1, 2, 3, 4, 130, 143, 141],
             "report": [0, 1, 2, 4, 130, 143, 141]}[command]
    listed = text.split("Exit codes:", 1)[1]
    for number in codes:
        assert f" {number} " in f" {listed}", (command, number, listed)
