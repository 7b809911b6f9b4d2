#!/usr/bin/env python3
"""The bad-input matrix: every way a user at 2 a.m. can hand celerydiag something broken, run for
real, judged by what the user would see (issue 12, point 9).

Each case is one real `celerydiag` subprocess, as a user would type it, against the local services
(RabbitMQ, Redis, PostgreSQL, MariaDB on loopback) or against ports this script holds itself: a
closed one (refused at once) and a silent one (accepts, never answers). A case is *clean* when all
of these hold:

- the exit code is one the case expects (README "Output, exit codes, CI");
- it ended within its bound (``--timeout`` plus start-up, or 2 s after a signal);
- no traceback on stdout or stderr;
- no password byte sequence it was given (raw, percent-encoded, or a fragment of it split at the
  special character) on stdout, stderr or in its ``--output`` file;
- an error (exit 2 or 3) starts stderr with one ``celerydiag: error:`` / ``Usage:`` / ``Error:`` line;
- with ``--format json``, a report or exit 3 still leaves a JSON document on stdout.

It prints the number of cases tried and clean, then each unclean case with its command and what
was wrong. Exit status 0 when every case is clean, 1 otherwise.

    .venv/bin/python bench/robustness.py                 # the whole matrix (~3-5 min on 2 cores)
    .venv/bin/python bench/robustness.py --only password # cases whose name contains 'password'
    .venv/bin/python bench/robustness.py --list          # the cases, not run
    .venv/bin/python bench/robustness.py --json          # one JSON document, for scripts

Bounded: every case is killed after ``HARD_KILL_S``; at most ``--jobs`` run at once; all traffic
goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("celerydiag")
CLI = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "celerydiag"]
AMQP = os.environ.get("CELERYDIAG_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
REDIS = os.environ.get("CELERYDIAG_TEST_REDIS", "redis://127.0.0.1:6379/15")
PG = os.environ.get("CELERYDIAG_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL = os.environ.get("CELERYDIAG_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")
PCAP = ROOT / "fixtures" / "pcaps" / "amqp_healthy.pcap"

TIMEOUT_S = 2.0  # the --timeout every case passes where the command takes one
START_S = 8.0  # interpreter, Celery import and rendering on a busy 2-core machine
SIGNAL_BOUND_S = 2.0  # issue 12: SIGTERM/SIGINT end any command within 2 s
HARD_KILL_S = 120.0
ERROR_STARTS = ("celerydiag: error:", "Usage:", "Error:")
BOUND_LINE = "celerydiag: bounded: "
SPECIALS = ["#", "?", "/", "@", ":", "%", "+", " "]
NON_ASCII = ["é", "пароль", "密码"]
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")}


@dataclass
class Case:
    name: str
    argv: list[str]
    expect: frozenset[int]
    env: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    within_s: float = TIMEOUT_S * 3 + START_S
    json_stdout: bool = False  # stdout must be a JSON document
    app_source: str | None = None  # written as robust_app.py in the case's folder (-A robust_app)
    files: dict[str, bytes] = field(default_factory=dict)  # written in the case's folder first
    send_signal: tuple[float, int] | None = None  # (after seconds, signal)
    output: bool = False  # add --output FILE (in the case's folder) and scan it too
    stdout_full: bool = False  # stdout is /dev/full (ENOSPC on the first flush)

    def command(self) -> str:
        """As a user would type it (the -A cases also need robust_app.py: see app_source)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return " ".join(filter(None, [env, "celerydiag", *(shlex.quote(a) for a in self.argv)]))


@dataclass
class Outcome:
    case: Case
    code: int | None
    elapsed_s: float
    problems: list[str]

    @property
    def clean(self) -> bool:
        return not self.problems


# ---- ports this script holds --------------------------------------------------------------------

class Ports:
    """A closed port (bound, then closed: refused) and a silent one (listening, never accepting:
    the handshake completes in the kernel, no byte ever comes back)."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.closed = s.getsockname()[1]
        self._silent = socket.socket()
        self._silent.bind(("127.0.0.1", 0))
        self._silent.listen(64)
        self.silent = self._silent.getsockname()[1]

    def close(self) -> None:
        self._silent.close()


# ---- the matrix ---------------------------------------------------------------------------------

def passwords() -> Iterator[tuple[str, str]]:
    """(label, password): one per special character, each non-ASCII one, and all at once."""
    for c in SPECIALS:
        yield f"'{c}'", f"Sup3r{c}Secret9"
    for word in NON_ASCII:
        yield word, f"Sup3r{word}Secret9"
    yield "all", "Sup3r#?/@:%+ é" + "Secret9"


def fragments(password: str) -> tuple[str, ...]:
    """What a leak may look like: the password, its percent-encoding, and each piece between the
    special characters that is long enough to be recognisable (the parser cuts there)."""
    pieces = {password, quote(password, safe=""), quote(password, safe="").replace("%20", "+")}
    word = ""
    for ch in password:
        if ch.isalnum() and ch.isascii():
            word += ch
        else:
            if len(word) >= 6:
                pieces.add(word)
            word = ""
    if len(word) >= 6:
        pieces.add(word)
    return tuple(sorted(pieces, key=len, reverse=True))


FORMATS = ["text", "json", "markdown", "junit"]


def password_cases(ports: Ports) -> Iterator[Case]:
    """Every password x raw/encoded x command x (flag, env, app), rotating the formats: the
    password must never come back, whatever the command says about the URL."""
    commands: list[tuple[str, list[str], str, list[str]]] = [
        # (label, argv before the URL options, which side carries the password, formats it takes)
        ("doctor", ["doctor", "--timeout", str(TIMEOUT_S), "--max-seconds", "5"], "broker", FORMATS),
        ("probe broker", ["probe", "broker", "--timeout", str(TIMEOUT_S)], "broker", FORMATS),
        ("probe backend", ["probe", "backend", "--timeout", str(TIMEOUT_S)], "backend", FORMATS),
        ("poll-model", ["poll-model", "--from-backend", "t-1", "--watch-seconds", "1s"], "backend",
         ["text", "json"]),
        ("bench-serialize", ["bench-serialize", "--from-backend", "t-1", "--quick",
                             "--timeout", str(TIMEOUT_S)], "backend", ["text", "json"]),
        ("capture --read", ["capture", "--read", str(PCAP)], "broker", ["text", "json"]),
    ]
    i = 0
    for label, password in passwords():
        for encoded in (False, True):
            pw = quote(password, safe="") if encoded else password
            for cmd, argv, side, formats in commands:
                via = ("flag", "env", "app")[i % 3]
                fmt = formats[i % len(formats)]
                i += 1
                if side == "broker":
                    url = f"amqp://guest:{pw}@127.0.0.1:{ports.closed}//"
                else:
                    url = f"redis://:{pw}@127.0.0.1:{ports.closed}/0"
                case = Case(f"password {label} {'encoded' if encoded else 'raw'} {cmd} via {via} ({fmt})",
                            [*argv, "--format", fmt], frozenset({0, 1, 2, 3}), secrets=fragments(password),
                            output=(i % 4 == 0), json_stdout=False)
                flag = "--broker" if side == "broker" else "--backend"
                env_name = "CELERY_BROKER_URL" if side == "broker" else "CELERY_RESULT_BACKEND"
                if via == "flag":
                    case.argv += [flag, url]
                elif via == "env":
                    case.env[env_name] = url
                else:
                    setting = "broker" if side == "broker" else "backend"
                    case.app_source = (f"from celery import Celery\n"
                                       f"app = Celery('robust', {setting}={url!r}, set_as_current=False)\n")
                    case.argv += ["-A", "robust_app"]
                if cmd == "capture --read":
                    case.expect = frozenset({0, 1, 2})  # a file: never exit 3
                yield case


def bad_url_cases() -> Iterator[Case]:
    """Point 5: each is a usage error at once (exit 2, one line with the expected form)."""
    brokers = {
        "garbage": "not a url",
        "no scheme": "127.0.0.1:5672",
        "unknown scheme": "foo://127.0.0.1:1/",
        "http as broker": "http://127.0.0.1:1/",
        "redis db not a number": "redis://127.0.0.1:6379/abc",
        "redis port not a number": "redis://127.0.0.1:port/0",
        "amqp port out of range": "amqp://guest:guest@127.0.0.1:99999//",
        "rediss without ssl_cert_reqs": "rediss://127.0.0.1:6380/0",
        "empty": "",
    }
    backends = {
        "db+ unknown dialect": "db+nosuchdialect://u@127.0.0.1/x",
        "db+ garbage": "db+not a url",
        "unknown scheme": "foo://127.0.0.1:1/",
        "redis db not a number": "redis://127.0.0.1:6379/abc",
        "rediss without ssl_cert_reqs": "rediss://127.0.0.1:6380/0",
        "empty": "",
    }
    for side, urls in (("broker", brokers), ("backend", backends)):
        for label, url in urls.items():
            yield Case(f"bad {side} URL: {label}", ["probe", side, f"--{side}", url, "--timeout", str(TIMEOUT_S)],
                       frozenset({2}), within_s=START_S)
    yield Case("empty --app", ["doctor", "-A", ""], frozenset({2}), within_s=START_S)
    yield Case("bad URL in CELERY_BROKER_URL", ["probe", "broker", "--timeout", str(TIMEOUT_S)], frozenset({2}),
               env={"CELERY_BROKER_URL": "not a url"}, within_s=START_S)
    yield Case("bad URL in CELERY_RESULT_BACKEND", ["probe", "backend", "--timeout", str(TIMEOUT_S)],
               frozenset({2}), env={"CELERY_RESULT_BACKEND": "redis://127.0.0.1:6379/abc"}, within_s=START_S)


def unreachable_cases(ports: Ports) -> Iterator[Case]:
    """Point 6 and exit 3: a dead side, closed or silent, fails only the probes that need it, in
    every format, within --timeout; with json the report is still on stdout."""
    for how, port in (("closed", ports.closed), ("silent", ports.silent)):
        dead_broker = f"amqp://guest:guest@127.0.0.1:{port}//"
        dead_redis = f"redis://127.0.0.1:{port}/0"
        dead_pg = f"db+postgresql+psycopg://postgres@127.0.0.1:{port}/test"
        dead_mysql = f"db+mysql+pymysql://root@127.0.0.1:{port}/test"
        for fmt in FORMATS:
            yield Case(f"doctor, broker {how} ({fmt})",
                       ["doctor", "--broker", dead_broker, "--backend", REDIS, "--timeout", str(TIMEOUT_S),
                        "--max-seconds", "5", "--samples", "20", "--format", fmt],
                       frozenset({3}), json_stdout=fmt == "json", within_s=60)
        yield Case(f"probe broker, broker {how}", ["probe", "broker", "--broker", dead_broker, "--timeout",
                                                   str(TIMEOUT_S), "--format", "json"], frozenset({3}),
                   json_stdout=True)
        yield Case(f"probe broker, redis broker {how}", ["probe", "broker", "--broker", dead_redis, "--timeout",
                                                         str(TIMEOUT_S), "--format", "json"], frozenset({3}),
                   json_stdout=True)
        for label, url in (("redis", dead_redis), ("postgres", dead_pg), ("mariadb", dead_mysql)):
            yield Case(f"probe backend, {label} {how}", ["probe", "backend", "--backend", url, "--timeout",
                                                         str(TIMEOUT_S), "--format", "json"], frozenset({3}),
                       json_stdout=True)
        yield Case(f"probe backend with the broker {how}", ["probe", "backend", "--broker", dead_broker,
                                                            "--backend", REDIS, "--samples", "20", "--timeout",
                                                            str(TIMEOUT_S), "--format", "json"],
                   frozenset({0, 1}), json_stdout=True, within_s=60)
        yield Case(f"probe broker with the backend {how}", ["probe", "broker", "--broker", AMQP, "--backend",
                                                            dead_redis, "--samples", "20", "--timeout",
                                                            str(TIMEOUT_S), "--format", "json"],
                   frozenset({0, 1}), json_stdout=True, within_s=60)
        yield Case(f"probe serialization with the broker {how}",
                   ["probe", "serialization", "--broker", dead_broker, "--backend", REDIS, "--timeout",
                    str(TIMEOUT_S), "--format", "json"], frozenset({0, 1}), json_stdout=True, within_s=60)
        yield Case(f"probe network --pcap with both {how}",
                   ["probe", "network", "--pcap", str(PCAP), "--broker", dead_broker, "--backend", dead_redis,
                    "--format", "json"], frozenset({0, 1}), json_stdout=True)
        yield Case(f"poll-model --from-backend, backend {how}",
                   ["poll-model", "--from-backend", "t-1", "--backend", dead_redis], frozenset({3}))
        yield Case(f"bench-serialize --from-backend, backend {how}",
                   ["bench-serialize", "--from-backend", "t-1", "--backend", dead_redis, "--timeout",
                    str(TIMEOUT_S)], frozenset({3}))


def exit_code_cases() -> Iterator[Case]:
    """Point 7: user errors are 2 (never 4), numbers are finite, documents say what they are."""
    for option, command in (("--timeout", ["probe", "broker"]), ("--budget-ms", ["doctor", "--static"]),
                            ("--poll-interval", ["probe", "polling"]), ("--max-seconds", ["probe", "backend"]),
                            ("--duration", ["probe", "host"])):
        for value in ("nan", "inf", "-inf"):
            yield Case(f"{option} {value}", [*command, option, value], frozenset({2}), within_s=START_S)
    yield Case("-A module:attr that is not an app", ["doctor", "-A", "robust_app:not_an_app"], frozenset({2}),
               app_source="not_an_app = 42\n", within_s=START_S)
    yield Case("-A module that does not exist", ["doctor", "-A", "celerydiag_no_such_module:app"], frozenset({2}),
               within_s=START_S)
    yield Case("-A module whose import raises", ["doctor", "-A", "robust_app"], frozenset({2}),
               app_source="raise RuntimeError('boom at import')\n", within_s=START_S)
    yield Case("-A module whose import hangs", ["doctor", "-A", "robust_app", "--timeout", str(TIMEOUT_S)],
               frozenset({2, 3}), app_source="import time\ntime.sleep(600)\n", within_s=TIMEOUT_S + START_S + 5)
    yield Case("capture --write into a missing folder", ["capture", "--read", str(PCAP), "--write",
                                                         "/nonexistent/x.pcap"], frozenset({2}), within_s=START_S)
    yield Case("--output into a missing folder", ["doctor", "--static", "--output", "/nonexistent/r.json"],
               frozenset({2}), within_s=START_S)
    yield Case("--output /dev/full", ["doctor", "--static", "--output", "/dev/full"], frozenset({2}),
               within_s=START_S)
    yield Case("stdout is /dev/full", ["doctor", "--static"], frozenset({2}), within_s=START_S, stdout_full=True)
    yield Case("--traceback keeps the exit code of a user error", ["--traceback", "doctor", "-A",
                                                                   "celerydiag_no_such_module:app"],
               frozenset({2}), within_s=START_S)
    deep = b"[" * 100_000 + b"]" * 100_000
    yield Case("bench-serialize on a deeply nested payload", ["bench-serialize", "--payload", "deep.json",
                                                              "--quick"], frozenset({2}), files={"deep.json": deep},
               within_s=30)
    yield Case("report on garbage", ["report", "garbage.json"], frozenset({2}), files={"garbage.json": b"{nope"},
               within_s=START_S)
    yield Case("report on a JSON that is no report", ["report", "other.json"], frozenset({2}),
               files={"other.json": b'{"hello": 1}'}, within_s=START_S)
    yield Case("report on a newer schema", ["report", "newer.json"], frozenset({2}),
               files={"newer.json": b'{"schema": "celerydiag.report/3", "findings": []}'}, within_s=START_S)
    yield Case("report on a report missing its probes' names", ["report", "broken.json"], frozenset({2}),
               files={"broken.json": json.dumps({"schema": "celerydiag.report/2", "probes": [{"status": "ran"}],
                                                 "findings": []}).encode()}, within_s=START_S)
    yield Case("report on a capture document", ["report", "capture.json"], frozenset({2}),
               files={"capture.json": b'{"schema": "celerydiag.capture/1", "connections": [], "findings": []}'},
               within_s=START_S)
    yield Case("option no selected probe reads", ["probe", "broker", "--updates", "50", "--broker", AMQP],
               frozenset({2}), within_s=START_S)


def file_cases() -> Iterator[Case]:
    """Point 8: a truncated, garbage or empty capture is exit 2 with one line, never an 'ok'."""
    real = PCAP.read_bytes()
    broken = {
        "garbage": b"this is not a capture\n" * 10,
        "empty": b"",
        "truncated mid-record": real[: len(real) // 2 + 7],
        "header only": real[:24],
        "pcapng bad block length": bytes.fromhex("0a0d0d0a") + (7).to_bytes(4, "little") + b"\x4d\x3c\x2b\x1a" * 4,
    }
    for label, data in broken.items():
        files = {"cap.pcap": data}
        if label == "header only":  # what tcpdump writes when it saw nothing: a valid, empty capture
            yield Case("capture --read an empty capture (header only)", ["capture", "--read", "cap.pcap"],
                       frozenset({0}), files=files, within_s=START_S)
            continue
        yield Case(f"capture --read {label}", ["capture", "--read", "cap.pcap"], frozenset({2}), files=files,
                   within_s=START_S)
        yield Case(f"doctor --pcap {label}", ["doctor", "--static", "--pcap", "cap.pcap"], frozenset({2}),
                   files=files, within_s=START_S)
        yield Case(f"probe network --pcap {label}", ["probe", "network", "--pcap", "cap.pcap"], frozenset({2}),
                   files=files, within_s=START_S)
    yield Case("capture --read a missing file", ["capture", "--read", "/nonexistent.pcap"], frozenset({2}),
               within_s=START_S)


def signal_cases() -> Iterator[Case]:
    """Point 3: SIGTERM is 143, SIGINT 130, within 2 s, after cleanup; the embedded doctor runs long
    enough (an in-process worker) for the signal to land mid-probe."""
    for after in (1.5, 4.0, 8.0):
        yield Case(f"SIGTERM {after:g} s into doctor", ["doctor"], frozenset({143}),
                   send_signal=(after, signal.SIGTERM))
        yield Case(f"SIGINT {after:g} s into doctor", ["doctor"], frozenset({130}),
                   send_signal=(after, signal.SIGINT))
    yield Case("SIGTERM during poll-model --from-backend", ["poll-model", "--from-backend", "t-1", "--backend",
                                                             REDIS, "--watch-seconds", "30s"], frozenset({143}),
               send_signal=(2.0, signal.SIGTERM))
    yield Case("SIGTERM during probe backend", ["probe", "backend", "--backend", f"db+{PG}", "--duration", "20"],
               frozenset({143}), send_signal=(3.0, signal.SIGTERM))


def all_cases(ports: Ports) -> list[Case]:
    return [*password_cases(ports), *bad_url_cases(), *unreachable_cases(ports), *exit_code_cases(),
            *file_cases(), *signal_cases()]


# ---- running and judging ------------------------------------------------------------------------

def run(case: Case) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="celerydiag-robust-") as folder:
        work = Path(folder)
        if case.app_source is not None:
            (work / "robust_app.py").write_text(case.app_source, encoding="utf-8")
        for name, data in case.files.items():
            (work / name).write_bytes(data)
        argv = list(case.argv)
        output = work / "out.report"
        if case.output:
            argv += ["--output", str(output)]
        stdout_target: Any = open("/dev/full", "wb") if case.stdout_full else subprocess.PIPE  # noqa: SIM115
        env = {**CLEAN_ENV, "PYTHONPATH": str(work), **case.env, "NO_COLOR": "1"}
        started = time.monotonic()
        proc = subprocess.Popen([*CLI, *argv], cwd=work, env=env, stdout=stdout_target, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        signalled_at = None
        try:
            if case.send_signal:
                after, signum = case.send_signal
                try:
                    proc.wait(timeout=after)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signum)
                    signalled_at = time.monotonic()
            out, err = proc.communicate(timeout=HARD_KILL_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            return Outcome(case, None, time.monotonic() - started, [f"still running after {HARD_KILL_S:g} s: killed"])
        finally:
            if stdout_target is not subprocess.PIPE:
                stdout_target.close()
        elapsed = time.monotonic() - started
        written = output.read_bytes() if case.output and output.exists() else b""
        stdout = (out or b"").decode("utf-8", "replace")
        stderr = err.decode("utf-8", "replace")
        problems = judge(case, proc.returncode, elapsed, stdout, stderr, written,
                         None if signalled_at is None else time.monotonic() - signalled_at)
        if case.send_signal and signalled_at is None:
            problems.append(f"ended (exit {proc.returncode}) before the signal at {case.send_signal[0]:g} s")
        return Outcome(case, proc.returncode, elapsed, problems)


def judge(case: Case, code: int, elapsed: float, stdout: str, stderr: str, written: bytes,
          after_signal_s: float | None) -> list[str]:
    problems = []
    if code not in case.expect:
        problems.append(f"exit {code}, expected {' or '.join(map(str, sorted(case.expect)))}")
    if after_signal_s is not None and after_signal_s > SIGNAL_BOUND_S:
        problems.append(f"took {after_signal_s:.1f} s after the signal (bound {SIGNAL_BOUND_S:g} s)")
    elif after_signal_s is None and elapsed > case.within_s:
        problems.append(f"took {elapsed:.1f} s (bound {case.within_s:g} s)")
    if "Traceback" in stdout + stderr:
        problems.append("a traceback")
    problems += leaks(case.secrets, stdout=stdout, stderr=stderr, output=written.decode("utf-8", "replace"))
    if code in (2, 3) and after_signal_s is None:  # doctor's bound line may come first: not an error
        lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(BOUND_LINE)]
        if not lines or not lines[0].startswith(ERROR_STARTS):
            problems.append(f"stderr does not start with one error line: {(lines or [''])[0][:100]!r}")
    if code == 4:
        problems.append("exit 4: an internal error of ours")
    if case.json_stdout and code in (0, 1, 3):
        try:
            json.loads(stdout)
        except ValueError:
            problems.append("--format json left no JSON document on stdout")
    return problems


def leaks(secrets: tuple[str, ...], **streams: str) -> list[str]:
    """One problem per stream that carries any of ``secrets``."""
    return [f"the password (or {found!r}) on {where}" for where, text in streams.items()
            for found in [next((s for s in secrets if s in text), None)] if found]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="run only the cases whose name contains this text")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    parser.add_argument("--list", action="store_true", help="print the cases, do not run them")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args()
    ports = Ports()
    try:
        cases = [c for c in all_cases(ports) if not args.only or args.only in c.name]
        if args.list:
            for c in cases:
                print(f"{c.name}\n    {c.command()}")
            print(f"{len(cases)} cases")
            return 0
        started = time.monotonic()
        outcomes: list[Outcome] = []
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for outcome in pool.map(run, cases):
                outcomes.append(outcome)
                mark = "." if outcome.clean else "F"
                print(mark, end="", file=sys.stderr, flush=True)
                if len(outcomes) % 80 == 0:
                    print(f" {len(outcomes)}/{len(cases)}", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        wall = time.monotonic() - started
    finally:
        ports.close()
    unclean = [o for o in outcomes if not o.clean]
    if args.json:
        print(json.dumps({"cases": len(outcomes), "clean": len(outcomes) - len(unclean), "wall_s": round(wall, 1),
                          "unclean": [{"name": o.case.name, "command": o.case.command(), "exit": o.code,
                                       "elapsed_s": round(o.elapsed_s, 2), "problems": o.problems}
                                      for o in unclean]}, indent=2))
    else:
        print(f"cases tried: {len(outcomes)}, clean: {len(outcomes) - len(unclean)} "
              f"({100 * (len(outcomes) - len(unclean)) / max(1, len(outcomes)):.1f} %), in {wall:.0f} s")
        for o in unclean:
            print(f"\nUNCLEAN {o.case.name} (exit {o.code}, {o.elapsed_s:.1f} s)\n    {o.case.command()}")
            for p in o.problems:
                print(f"    - {p}")
    return 0 if not unclean else 1


if __name__ == "__main__":
    sys.exit(main())
