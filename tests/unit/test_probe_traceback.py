"""A probe's own bug (issue 16, point 5): the guard catches it so the report is still written, but
the command exits 4, and ``--traceback`` prints the probe's traceback on stderr, scrubbed.

The probe runs through the real path (cli.main -> run_report -> diagnose -> run_probe's guard);
only its ``run`` is replaced by one that raises, and the tests' re-raise hook is put back to the
user's (log and carry on)."""

from __future__ import annotations

import json

import pytest

import celerydiag.probe as probes
from celerydiag.cli import main
from celerydiag.config.probe import ConfigProbe
from celerydiag.errors import ExitCode

PASSWORD = "Sup3rSecretPw"
URL = f"redis://:{PASSWORD}@127.0.0.1:6379/0"
ARGS = ["probe", "config", "--broker", URL, "--backend", URL, "--format", "json"]


@pytest.fixture
def crashing_probe(monkeypatch):
    """The config probe (static: no service needed) raises from inside its run(), as the e2e
    probe did on Celery 5.5 (a TypeError deep in Celery), naming the target's URL."""
    monkeypatch.setattr(probes, "_on_internal_error", _user_hook)

    def run(self, ctx):
        yield from ()
        probe_step_that_breaks(ctx.target.broker_url)

    monkeypatch.setattr(ConfigProbe, "run", run)


def _user_hook(probe, exc):  # what users get: a debug log line, no re-raise
    probes.log.debug("internal error in probe %s", probe.name, exc_info=exc)


def probe_step_that_breaks(url: str) -> None:
    raise TypeError(f"argument of type 'type' is not iterable (backend {url})")


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return int(code), out, err


def test_a_probes_internal_error_is_exit_4_with_one_line_and_the_report(capsys, crashing_probe):
    code, out, err = run(capsys, *ARGS)
    assert code == ExitCode.INTERNAL, err
    assert "Traceback" not in err, err
    assert "internal error in probe config: TypeError" in err and "rerun with --traceback" in err, err
    report = json.loads(out)  # the report still went out, the probe failed in it
    assert [(p["name"], p["status"]) for p in report["probes"]] == [("config", "failed")]


@pytest.mark.parametrize("how", ["before", "after", "env"])
def test_traceback_prints_the_probes_traceback_and_keeps_exit_4(capsys, monkeypatch, crashing_probe, how):
    args = list(ARGS)
    if how == "env":
        monkeypatch.setenv("CELERYDIAG_TRACEBACK", "1")
    else:
        args = ["--traceback", *args] if how == "before" else [*args, "--traceback"]
    code, out, err = run(capsys, *args)
    assert code == ExitCode.INTERNAL, err
    assert "Traceback (most recent call last)" in err, err
    # the probe's own frames, down to the line that raised, not the command's
    assert "in probe_step_that_breaks" in err and "TypeError: argument of type 'type' is not iterable" in err
    assert PASSWORD not in err and PASSWORD not in out, err
    assert json.loads(out)["probes"][0]["status"] == "failed"


def test_a_probe_that_works_is_not_exit_4(capsys, monkeypatch):
    monkeypatch.setattr(probes, "_on_internal_error", _user_hook)
    code, _, err = run(capsys, "--traceback", *ARGS)
    assert code in (ExitCode.OK, ExitCode.FINDINGS), err
    assert "Traceback" not in err and "internal error" not in err, err
