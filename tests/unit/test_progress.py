"""Progress draws on a real terminal: the path a person at 2 a.m. takes first, and the one a
pipe-based test never exercises. `script` (util-linux) gives the command a pty."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux `script` for a pty")


def _on_a_terminal(args: str, tmp_path) -> tuple[int, str]:
    report = tmp_path / "report.txt"
    proc = subprocess.run(
        ["script", "-qec", f"{sys.executable} -m celerydiag {args} -o {report}", "/dev/null"],
        capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def test_doctor_draws_progress_and_finishes_on_a_terminal(tmp_path) -> None:
    code, screen = _on_a_terminal("doctor --updates 200", tmp_path)
    assert "internal error" not in screen and "Traceback" not in screen, screen[-2000:]
    assert code in (0, 1), screen[-2000:]
    assert "probe e2e" in screen  # the bar named the probe while it ran
    assert (tmp_path / "report.txt").read_text().startswith("Verdict:")  # the report opens with its verdict


def test_static_doctor_with_probes_of_unknown_length_on_a_terminal(tmp_path) -> None:
    code, screen = _on_a_terminal("doctor --static", tmp_path)
    assert "internal error" not in screen and "Traceback" not in screen, screen[-2000:]
    assert code in (0, 1)
