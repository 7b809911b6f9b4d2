"""The one output path (celerydiag/emit.py) as every command meets it: an unwritable --output fails
before any work, an existing file survives a failed run, and a reader that goes away gives every
command the same exit code (141) with the summary still on stderr."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from celerydiag.cli import main
from celerydiag.errors import ExitCode
from celerydiag.findings import REPORT_SCHEMA

TESTS = Path(__file__).resolve().parents[1]
APPS = TESTS / "fixtures" / "apps"
REPORT = TESTS / "fixtures" / "reports" / "full-v1.json"
PCAP = TESTS.parent / "fixtures" / "pcaps" / "amqp_healthy.pcap"
TARGET_ENV = ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CELERYDIAG_TRACEBACK", "NO_COLOR")


@pytest.fixture(autouse=True)
def in_apps_dir(monkeypatch):
    monkeypatch.chdir(APPS)
    monkeypatch.syspath_prepend(str(APPS))
    for var in TARGET_ENV:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def silent_port() -> Iterator[socket.socket]:
    """A loopback port that completes TCP handshakes (the kernel's backlog) but never answers: a
    command that talks to it waits its whole --timeout. After the command, a non-blocking accept()
    says whether it connected at all, so "before any work" is checked without timing anything."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        yield listener


def connected(listener: socket.socket) -> bool:
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def busy_commands(port: int) -> dict[str, tuple[str, ...]]:
    """Per command, a run that would do real work (talk to the silent port, read an input) first."""
    amqp, redis = f"amqp://guest:guest@127.0.0.1:{port}//", f"redis://127.0.0.1:{port}/0"
    return {
        "doctor": ("doctor", "--broker", amqp, "--backend", redis, "--timeout", "20"),
        "probe": ("probe", "broker", "--broker", amqp, "--backend", redis, "--timeout", "20"),
        "poll-model": ("poll-model", "--from-backend", "6f1c0b3e", "--backend", redis),
        "bench-serialize": ("bench-serialize", "--from-backend", "6f1c0b3e", "--backend", redis, "--timeout", "20"),
        "report": ("report", "/nonexistent/celerydiag-input.json"),
        "capture": ("capture", "--read", "/nonexistent/celerydiag-input.pcap"),
    }


@pytest.mark.parametrize("where", ["missing-dir", "directory"])
@pytest.mark.parametrize("name", ["doctor", "probe", "poll-model", "bench-serialize", "report", "capture"])
def test_an_unwritable_output_fails_before_any_work(capsys, silent_port, tmp_path, name, where):
    path = str(tmp_path / "no-such-dir" / "x.json") if where == "missing-dir" else str(tmp_path)
    args = busy_commands(silent_port.getsockname()[1])[name]
    code = main([*args, "--output", path])
    out, err = capsys.readouterr()
    assert code == ExitCode.USAGE, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("celerydiag: error: "), err  # one line
    assert f"cannot write --output {path}" in err, err
    assert "celerydiag-input" not in err  # the input was never opened
    assert not connected(silent_port), "the command talked to the target before checking --output"
    assert out == ""
    assert os.listdir(tmp_path) == []  # no temporary file left behind


def test_an_existing_output_survives_a_failed_run(capsys, tmp_path):
    """An --app that does not import fails the run after --output was opened (exit 2): the old
    report must still be there, untouched, with no temp file. (An unreachable target is not a
    failed run: its report, naming the dead side, is written; see test_reach.)"""
    target = tmp_path / "report.json"
    target.write_text("the previous report\n", encoding="utf-8")
    code = main(["doctor", "--app", "celerydiag_no_such_module_xyz:app", "--output", str(target)])
    assert code == ExitCode.USAGE, capsys.readouterr().err
    assert target.read_text(encoding="utf-8") == "the previous report\n"
    assert os.listdir(tmp_path) == ["report.json"]


def test_a_finished_run_replaces_the_output_and_keeps_its_mode(capsys, tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old\n", encoding="utf-8")
    target.chmod(0o640)
    code = main(["report", str(REPORT), "--format", "json", "--fail-on", "never", "--output", str(target)])
    assert code == ExitCode.OK, capsys.readouterr().err
    assert json.loads(target.read_text(encoding="utf-8"))["schema"] == REPORT_SCHEMA
    assert target.stat().st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["report.json"]


def test_report_may_replace_its_own_input(capsys, tmp_path):
    """The inputs are read before the output is put in place, so `report a.json -o a.json` is safe."""
    target = tmp_path / "a.json"
    target.write_text(REPORT.read_text(encoding="utf-8"), encoding="utf-8")
    code = main(["report", str(target), "--format", "json", "--fail-on", "never", "-o", str(target)])
    assert code == ExitCode.OK, capsys.readouterr().err
    assert json.loads(target.read_text(encoding="utf-8"))["findings"]


def test_output_to_a_device_is_written_in_place(capsys):
    """-o /dev/null must not try to replace the device node with a file."""
    code = main(["report", str(REPORT), "--fail-on", "never", "-o", os.devnull])
    assert code == ExitCode.OK, capsys.readouterr().err
    assert os.path.exists(os.devnull) and not os.path.isfile(os.devnull)


def test_a_read_only_output_file_is_refused_before_any_work(capsys, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root may write any file")
    target = tmp_path / "report.json"
    target.write_text("keep\n", encoding="utf-8")
    target.chmod(0o444)
    code = main(["report", "/nonexistent/celerydiag-input.json", "-o", str(target)])
    err = capsys.readouterr().err
    assert code == ExitCode.USAGE and "cannot write --output" in err and "Permission denied" in err, err
    assert target.read_text(encoding="utf-8") == "keep\n"


def test_capture_refuses_an_output_that_is_its_input(capsys, tmp_path):
    copy = tmp_path / "cap.pcap"
    copy.write_bytes(PCAP.read_bytes())
    code = main(["capture", "--read", str(copy), "-o", str(copy)])
    assert code == ExitCode.USAGE, capsys.readouterr().err
    assert copy.read_bytes() == PCAP.read_bytes()


CLOSED_STDOUT = {
    "doctor": ("doctor", "--static", "--app", "tapp_clean:app"),
    "probe": ("probe", "config", "--app", "tapp_clean:app", "--format", "markdown"),
    "report": ("report", str(REPORT), "--fail-on", "never"),
    "capture": ("capture", "--read", str(PCAP), "--format", "json"),
    "poll-model": ("poll-model", "--strategy", "fixed", "--tasks", "100"),
    "bench-serialize": ("bench-serialize", "--quick", "-s", "json", "-k", "progress-meta", "--format", "json"),
}


@pytest.mark.parametrize("name", sorted(CLOSED_STDOUT))
def test_a_reader_that_goes_away_exits_141_in_every_command(cli_argv, name):
    """`celerydiag X | head -1`. The reader closes its end before the command writes (a reader that
    closes after one line only breaks the pipe if we write after that, which is timing; closing
    first makes the broken pipe certain). Every command: exit 141, the summary still on stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {k: v for k, v in os.environ.items() if k not in TARGET_ENV}
    try:
        proc = subprocess.run([*cli_argv, *CLOSED_STDOUT[name]], cwd=APPS, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120, env=env)
    finally:
        os.close(write_end)
    assert proc.returncode == ExitCode.STDOUT_CLOSED == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("celerydiag: ") and "stdout closed before the output was complete" in last, proc.stderr


def test_probe_list_into_a_closed_pipe_exits_141(cli_argv):
    """Output that does not go through emit (probe --list) ends the same way."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([*cli_argv, "probe", "--list"], stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=60)
    finally:
        os.close(write_end)
    assert proc.returncode == ExitCode.STDOUT_CLOSED, proc.stderr
    assert "Traceback" not in proc.stderr


def test_141_is_in_the_readme_and_every_help_that_lists_exit_codes(capsys):
    readme = (TESTS.parent / "README.md").read_text(encoding="utf-8")
    assert f"| {int(ExitCode.STDOUT_CLOSED)} |" in readme
    for name in ("doctor", "report", "capture", "poll-model", "bench-serialize"):
        assert main([name, "--help"]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "Exit codes:" in out and "141 stdout closed early" in out, name
