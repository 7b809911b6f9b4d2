"""`celerydiag watch` on the embedded default (in-memory broker, SQLite, in-process worker): real
rounds with no services, through the loop in-process and through the console script."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

from celerydiag.target import resolve_target
from celerydiag.watch.loop import WatchOptions, run
from celerydiag.watch.sample import REASONS, Sample


def test_the_loop_measures_every_signal_that_applies_and_keeps_no_scratch_behind() -> None:
    target = resolve_target()
    got: list[Sample] = []
    try:
        done = run(target, WatchOptions(interval_s=0.5, timeout_s=3, updates=3, count=2), [got.append])
        assert done == 2 and [s.round for s in got] == [1, 2]
        ok = [s for s in got if s.canary == "ok"]
        # On a loaded machine a round may miss (then it says why, and the canary is rebuilt);
        # one good round of two shows the method works here.
        assert ok, [s.problems for s in got]
        for s in ok:
            assert s.up == {"broker": True, "backend": True}
            assert s.visibility_ms["poll"] and all(v >= 0 for v in s.visibility_ms["poll"])
            assert s.dispatch_ms and s.backend_write_ms
            assert s.problems == []
        for s in got:
            assert "backend" in s.rtt_ms  # SELECT 1 on the SQLite file: the application ping
            assert all(p.signal == "canary" and p.reason in REASONS for p in s.problems)
        # the canary's rows went with its scratch table: none left in the SQLite file
        import sqlite3

        path = target.backend_url.split("sqlite:///", 1)[1]
        tables = [r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert not [t for t in tables if t.startswith("celerydiag_w")], tables
    finally:
        import shutil

        if target.scratch_dir:
            shutil.rmtree(target.scratch_dir, ignore_errors=True)


def test_the_console_script_writes_one_json_line_per_interval_and_removes_its_temp_dir(
        run_cli: Callable[..., Any]) -> None:
    done = run_cli("watch", "--interval", "0.5", "--count", "2", "--updates", "2", "-f", "json", timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    docs = [json.loads(line) for line in lines]
    assert [d["round"] for d in docs] == [1, 2] and all(d["schema"] == "celerydiag.watch/1" for d in docs)
    assert any(d["canary"] == "ok" for d in docs), [d["problems"] for d in docs]
    assert "embedded default" in done.stderr
    temp = re.search(r"sqlite:///(/\S+)/results\.sqlite", done.stderr)
    assert temp and not os.path.exists(temp.group(1))


def test_help_states_the_load_and_that_metrics_bind_loopback(run_cli: Callable[..., Any]) -> None:
    done = run_cli("watch", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "Load on your services" in text and "per second" in text
    assert "binds loopback" in text


def test_metrics_bind_loopback_by_default_and_say_so(run_cli: Callable[..., Any]) -> None:
    done = run_cli("watch", "--interval", "0.5", "--count", "1", "--updates", "2", "-f", "json",
                   "--prometheus", ":0", timeout=120)
    assert done.returncode == 0, done.stderr
    assert re.search(r"serving Prometheus metrics on http://127\.0\.0\.1:\d+/metrics \(loopback only", done.stderr)


def test_a_taken_port_is_bad_usage_before_any_measurement(run_cli: Callable[..., Any]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = run_cli("watch", "--count", "1", "--prometheus", f"127.0.0.1:{port}", timeout=120)
    assert done.returncode == 2, done.stderr
    assert "cannot listen there" in done.stderr and done.stdout == ""


def test_ctrl_c_exits_130_after_removing_the_canary(cli_argv: list[str]) -> None:
    import signal

    from tests.conftest import clean_env
    from tests.support.process import running

    with running([*cli_argv, "watch", "--interval", "0.5", "--updates", "2", "-f", "json"],
                 sigint_default=True, env=clean_env()) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # one interval done: the canary exists
        assert json.loads(first)["round"] == 1
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted (Ctrl-C)" in err and "Traceback" not in err
