"""No password, ever: every awkward password x every command x every format x {flag, env, app}.

Each password (tests/fixtures/apps/tapp_passwords.py) holds one character URL parsers treat
specially (# ? / @ : % + space, non-ASCII, all of them), typed as is or percent-encoded, so 22
cases. It is given as --broker/--backend, as CELERY_BROKER_URL/CELERY_RESULT_BACKEND, or by an
--app whose settings hold it, in the broker URL (amqp), a Redis backend or a database backend.
Every command runs with every format it has; stdout, stderr and the --output file must not hold
the password in any spelling: as typed, decoded, re-encoded, or either of its FRAGMENTS (each
password holds both), which is what kombu's "Port could not be cast to integer value as
'Sup3rSecret'" printed.

What each case must do: a password Celery would misread (# ? / unencoded anywhere; @ unencoded in
a database URL, where SQLAlchemy ends the password at the first @) is refused at once with exit
2, one error line and the percent-encoding hint; any other is accepted, and then the command
measures (exit 0/1) or finds the closed port (exit 3), never exit 4.

Speed: every URL points at a closed loopback port, so nothing waits on a timeout. The bulk runs
in-process through ``celerydiag.cli.main`` (what the console script calls), a few thousand runs
in about a minute; ``test_a_subprocess_sample`` runs real subprocesses for a sample of them.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from celerydiag.cli import main
from celerydiag.errors import ExitCode
from celerydiag.findings import Cause
from celerydiag.probe import READS

APPS = Path(__file__).resolve().parents[1] / "fixtures" / "apps"
PCAP = Path(__file__).resolve().parents[2] / "fixtures" / "pcaps" / "amqp_healthy.pcap"
sys.path.insert(0, str(APPS))
tp: Any = importlib.import_module("tapp_passwords")
sys.path.remove(str(APPS))

ALL_FORMATS = ("text", "json", "markdown", "junit")
DOCUMENT_FORMATS = ("text", "json")  # poll-model, bench-serialize
TASK_ID = str(uuid.UUID(int=0x0F0E0D0C))
BOUNDS = ("--timeout", "1", "--max-seconds", "1", "--samples", "10", "--updates", "20", "--duration", "0.1")


def bounds_read_by(name: str) -> tuple[str, ...]:
    """BOUNDS less the options probe ``name`` does not read (those are a usage error: probe.READS)."""
    reads = READS[Cause(name)]
    return tuple(arg for option, value in zip(BOUNDS[::2], BOUNDS[1::2]) if option in reads
                 for arg in (option, value))


# command name -> (argv, formats); each runs with the case's target added.
COMMANDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "doctor": (("doctor", *BOUNDS), ALL_FORMATS),
    **{f"probe {name}": (("probe", name, *bounds_read_by(name)), ALL_FORMATS)
       for name in ("config", "broker", "backend", "e2e", "serialization", "polling", "network", "host")},
    "poll-model": (("poll-model", "--from-backend", TASK_ID, "--watch-seconds", "1"), DOCUMENT_FORMATS),
    "bench-serialize": (("bench-serialize", "--quick", "-k", "progress-meta", "-s", "json",
                         "--from-backend", TASK_ID, "--timeout", "1"), DOCUMENT_FORMATS),
    "capture --read": (("capture", "--read", str(PCAP)), ALL_FORMATS),
}
MODES = ("flag", "env", "app")
# The commands that read the backend (or print its URL whole: config), where a password in a
# backend URL travels its own paths.
BACKEND_COMMANDS = ("doctor", "probe config", "probe backend", "probe serialization", "poll-model",
                    "bench-serialize")


def forbidden(case: str) -> set[str]:
    """Every spelling of the case's password that must never be printed."""
    typed = tp.CASES[case]
    password = next(pw for name, pw in tp.PASSWORDS.items() if case.rsplit("_", 1)[0] == name)
    return {typed, password, quote(password, safe=""), quote(password), quote_plus(password), *tp.FRAGMENTS}


def misread(case: str, placement: str) -> bool:
    """Would Celery misread this password? Then celerydiag must refuse it (exit 2)."""
    if case.endswith("_enc"):
        return False
    typed = tp.CASES[case]
    return any(c in typed for c in "#?/") or (placement == "db" and "@" in typed)


@dataclass
class Run:
    code: int
    out: str
    err: str
    output: str | None  # the --output file, if one was asked for and written


@pytest.fixture
def run_in_process(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                   tmp_path: Path) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(APPS))
    logger = logging.getLogger("celerydiag")

    def run(args: list[str], env: dict[str, str], to_file: bool) -> Run:
        for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        # cli() binds its log handler to sys.stderr once; bind it to this capture instead
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        out_file = tmp_path / "report.out"
        out_file.unlink(missing_ok=True)
        code = main([*args, "--output", str(out_file)] if to_file else args)
        out, err = capfd.readouterr()
        written = out_file.read_text(encoding="utf-8") if out_file.exists() else None
        return Run(code, out, err, written)

    yield run


def target_args(case: str, placement: str, mode: str) -> tuple[list[str], dict[str, str]]:
    broker, backend = tp.urls(case, placement, tp.PORT)
    if mode == "flag":
        return ["--broker", broker, "--backend", backend], {}
    if mode == "env":
        return [], {"CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": backend}
    return ["--app", f"tapp_passwords:app_{case}_{placement}"], {}


def check(run: Run, case: str, placement: str, what: str) -> None:
    for stream, text in (("stdout", run.out), ("stderr", run.err), ("--output", run.output or "")):
        leaked = sorted(s for s in forbidden(case) if s in text)
        assert not leaked, f"{what}: {leaked} in {stream}:\n{text[:2000]}"
    assert "Traceback" not in run.err, f"{what}:\n{run.err}"
    if misread(case, placement):
        assert run.code == ExitCode.USAGE, f"{what}: exit {run.code}, expected 2\n{run.err}"
        errors = [line for line in run.err.splitlines() if line.startswith("celerydiag: error:")]
        assert len(errors) == 1 and "unencoded" in errors[0], f"{what}:\n{run.err}"
        assert "percent-encode the password (# -> %23, / -> %2F" in run.err, f"{what}:\n{run.err}"
        assert run.out == "" and run.output is None, what
    else:
        assert run.code in (ExitCode.OK, ExitCode.FINDINGS, ExitCode.UNREACHABLE), \
            f"{what}: exit {run.code}\n{run.err}"


CASES = tuple(tp.CASES)


@pytest.mark.parametrize("command", tuple(COMMANDS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES)
def test_password_in_the_broker_url(run_in_process, case, mode, command):
    """Every case x mode x command x format, the password in the broker URL, to stdout (emit
    writes the same bytes to --output: test_password_in_the_backend_url checks that path)."""
    argv, formats = COMMANDS[command]
    extra, env = target_args(case, "broker", mode)
    for fmt in formats:
        run = run_in_process([*argv, *extra, "--format", fmt], env, False)
        check(run, case, "broker", f"{command} --format {fmt} ({mode})")


# The backend placements: every case x command that reads the backend x format, to --output; the
# mode turns with the case (every mode meets every placement and command), which keeps the matrix
# in make test's time.
BACKEND_CASES = [(case, placement, MODES[(i + j) % len(MODES)])
                 for i, case in enumerate(CASES) for j, placement in enumerate(("redis", "db"))]


@pytest.mark.parametrize("command", BACKEND_COMMANDS)
@pytest.mark.parametrize(("case", "placement", "mode"), BACKEND_CASES)
def test_password_in_the_backend_url(run_in_process, case, placement, mode, command):
    """The password in a Redis or a database backend URL (the broker's is password-free), every
    format written to --output."""
    argv, formats = COMMANDS[command]
    extra, env = target_args(case, placement, mode)
    for fmt in formats:
        run = run_in_process([*argv, *extra, "--format", fmt], env, True)
        check(run, case, placement, f"{command} --format {fmt} ({mode}, {placement}, --output)")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES)
def test_report_of_a_saved_report(run_in_process, tmp_path, case, mode):
    """`report` re-renders a saved JSON report: the saved file and every format of it are clean."""
    extra, env = target_args(case, "broker", mode)
    saved = tmp_path / "saved.json"
    made = run_in_process(["probe", "config", *extra, "--format", "json", "--output", str(saved)], env, False)
    made.output = saved.read_text(encoding="utf-8") if saved.exists() else None
    check(made, case, "broker", f"probe config --format json ({mode})")
    if made.code == ExitCode.USAGE:
        return  # refused, nothing saved
    for fmt in ALL_FORMATS:
        check(run_in_process(["report", str(saved), "--format", fmt], {}, True), case, "broker",
              f"report --format {fmt}")


# A subprocess is a second or more each (Celery's imports): a sample of the refusing and the
# accepting path, each mode and placement, through the real console script.
SAMPLE = [
    ("issue_raw", "flag", "broker", "probe broker"),  # the issue's own example
    ("hash_raw", "env", "broker", "doctor"),
    ("slash_raw", "app", "redis", "probe backend"),
    ("question_raw", "flag", "broker", "capture --read"),
    ("at_raw", "env", "db", "bench-serialize"),
    ("all_enc", "app", "broker", "doctor"),
    ("space_raw", "flag", "db", "poll-model"),
    ("nonascii_enc", "env", "redis", "probe config"),
]


@pytest.mark.parametrize(("case", "mode", "placement", "command"), SAMPLE)
def test_a_subprocess_sample(run_cli, tmp_path, case, mode, placement, command):
    argv, formats = COMMANDS[command]
    extra, env = target_args(case, placement, mode)
    fmt = formats[SAMPLE.index((case, mode, placement, command)) % len(formats)]
    out_file = tmp_path / "report.out"
    to_file = SAMPLE.index((case, mode, placement, command)) % 2 == 1
    proc = run_cli(*argv, *extra, "--format", fmt, *(("--output", str(out_file)) if to_file else ()),
                   cwd=APPS, env=env, timeout=60)
    written = out_file.read_text(encoding="utf-8") if out_file.exists() else None
    check(Run(proc.returncode, proc.stdout, proc.stderr, written), case, placement,
          f"subprocess {command} --format {fmt} ({mode}, {placement}{', --output' if to_file else ''})")


def test_the_matrix_covers_what_the_issue_lists():
    """The cases are what issue 12 point 4 asks for; a case removed by mistake fails here."""
    chars = set("#?/@:%+ ") | {"\u00e4"}
    for char in chars:
        assert any(char in pw for pw in tp.PASSWORDS.values()), char
    assert {c.rsplit("_", 1)[1] for c in CASES} == {"raw", "enc"}
    assert {"doctor", "poll-model", "bench-serialize", "capture --read"} <= set(COMMANDS)
    assert {c.split()[1] for c in COMMANDS if c.startswith("probe ")} == {
        "config", "broker", "backend", "e2e", "serialization", "polling", "network", "host"}
    assert os.path.exists(PCAP)
