"""An unreachable target is one line, a hint and exit 3, within the timeout: never a traceback,
never a password, never every probe failing the same way on stderr (with --format json the report
on stdout says each probe was not run, and why, so `| jq` still reads it).

Each case is a real failure against the real local services (or a port of our own): a closed
port, a port that accepts and never answers, wrong credentials, a wrong vhost or database.
"""

from __future__ import annotations

import json
import time
from urllib.parse import urlsplit, urlunsplit

import pytest

from celerydiag.errors import ExitCode

TIMEOUT_S = 2.0
SLACK_S = 6.0  # interpreter start, Celery import, one retry: well under the user's patience
WRONG_PW = "WrongPw-123xyz"


def with_userinfo(url: str, user: str, password: str | None) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}:{password}@{host}" if password is not None else f"{user}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def assert_unreachable(proc, *needles: str, secret: str = WRONG_PW) -> None:
    """Exit 3; stderr starts with the one error line and its hint, then the summary line; stdout is
    still the JSON report (`| jq` works), naming the dead side, with its probes failed."""
    assert proc.returncode == ExitCode.UNREACHABLE, (proc.returncode, proc.stdout[-500:], proc.stderr)
    lines = [line for line in proc.stderr.splitlines()  # doctor's bound line is not an error line
             if line.strip() and not line.startswith("celerydiag: bounded: ")]
    assert "Traceback" not in proc.stderr, proc.stderr
    if not proc.stdout.startswith("{"):  # text: the report says it before any finding
        assert 0 < proc.stdout.find("UNREACHABLE: ") < proc.stdout.find("Findings"), proc.stdout[:500]
        report = {"unreachable": {s: e.split("error: ", 1)[1] for s, e in
                                  (("backend" if "result backend" in x else "broker", x)
                                   for x in lines[:-1:2])}, "probes": []}
    else:
        report = json.loads(proc.stdout)
    down = report["unreachable"]
    assert lines[-1].startswith("celerydiag: ") and "probes failed: " in lines[-1], lines[-1]
    assert len(lines) == 2 * len(down) + 1, proc.stderr  # per dead side: its error and its hint
    errors, hints = lines[:-1:2], lines[1:-1:2]
    assert all(e.startswith("celerydiag: error: ") and "unreachable" in e for e in errors), errors
    assert all(h.startswith("  hint: ") for h in hints), hints
    side = "backend" if "result backend" in needles else "broker"
    [line] = [e for e in errors if down[side] in e]
    for needle in needles:
        assert needle in line, line
    for p in report["probes"]:  # a failed probe failed for a dead side; one that needs neither ran
        if p["status"] == "failed":
            assert any(why in p["reason"] for why in down.values()), p
    assert secret not in proc.stderr + proc.stdout


def doctor(run_cli, *args: str):
    started = time.monotonic()
    proc = run_cli("doctor", *args, "--timeout", str(TIMEOUT_S), "--format", "json", timeout=60)
    elapsed = time.monotonic() - started
    assert elapsed < TIMEOUT_S + SLACK_S, f"took {elapsed:.1f} s with --timeout {TIMEOUT_S}"
    return proc


@pytest.mark.integration
@pytest.mark.parametrize("scheme", ["amqp", "redis"])
def test_broker_on_a_closed_port(run_cli, closed_port, scheme):
    url = f"{scheme}://user:{WRONG_PW}@127.0.0.1:{closed_port}/" + ("/" if scheme == "amqp" else "0")
    proc = doctor(run_cli, "--broker", url, "--backend", "redis://127.0.0.1:1/0")
    assert_unreachable(proc, "broker", f"127.0.0.1:{closed_port}", "refused")


@pytest.mark.integration
@pytest.mark.parametrize("scheme", ["amqp", "redis"])
def test_broker_that_accepts_and_never_answers(run_cli, silent_port, scheme):
    url = f"{scheme}://user:{WRONG_PW}@127.0.0.1:{silent_port}/" + ("/" if scheme == "amqp" else "0")
    proc = doctor(run_cli, "--broker", url, "--backend", "redis://127.0.0.1:1/0")
    assert_unreachable(proc, "broker", f"127.0.0.1:{silent_port}")
    assert "time" in proc.stderr.lower()  # says it timed out, not something misleading


@pytest.mark.integration
@pytest.mark.parametrize("port_kind", ["closed_port", "silent_port"])
@pytest.mark.parametrize("backend", [
    "redis://:{pw}@127.0.0.1:{port}/0",
    "db+postgresql+psycopg://postgres:{pw}@127.0.0.1:{port}/test",
    "db+mysql+pymysql://root:{pw}@127.0.0.1:{port}/test",
], ids=["redis", "postgres", "mariadb"])
def test_backend_on_a_closed_or_silent_port(run_cli, request, port_kind, backend):
    port = request.getfixturevalue(port_kind)
    proc = doctor(run_cli, "--broker", "memory://", "--backend", backend.format(pw=WRONG_PW, port=port))
    assert_unreachable(proc, "result backend", f"127.0.0.1:{port}")


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_rabbitmq_wrong_password(run_cli, amqp_url):
    user = urlsplit(amqp_url).username or "guest"
    proc = doctor(run_cli, "--broker", with_userinfo(amqp_url, user, WRONG_PW), "--backend", "redis://127.0.0.1:1/0")
    assert_unreachable(proc, "broker", "ACCESS_REFUSED")


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_rabbitmq_wrong_vhost(run_cli, amqp_url, scratch):
    proc = doctor(run_cli, "--broker", with_path(amqp_url, f"/{scratch}"), "--backend", "redis://127.0.0.1:1/0")
    assert_unreachable(proc, "broker", "NOT_ALLOWED", scratch)


@pytest.mark.integration
@pytest.mark.redis
def test_redis_wrong_password(run_cli, redis_url, scratch):
    """The shared Redis has no requirepass (and we must not set one): an ACL user that does not
    exist gets WRONGPASS, the same refusal a wrong password gets."""
    proc = doctor(run_cli, "--broker", "memory://", "--backend", with_userinfo(redis_url, scratch, WRONG_PW))
    assert_unreachable(proc, "result backend", "AuthenticationError")


@pytest.mark.integration
@pytest.mark.redis
def test_redis_as_broker_wrong_password(run_cli, redis_url, scratch):
    proc = doctor(run_cli, "--broker", with_userinfo(redis_url, scratch, WRONG_PW), "--backend", "redis://127.0.0.1:1/0")
    assert_unreachable(proc, "broker")


@pytest.mark.integration
@pytest.mark.postgres
def test_postgres_wrong_database(run_cli, pg_url, scratch):
    missing = scratch.replace("-", "_")
    proc = doctor(run_cli, "--broker", "memory://", "--backend", "db+" + with_path(pg_url, f"/{missing}"))
    assert_unreachable(proc, "result backend", f'database "{missing}" does not exist')


@pytest.mark.integration
@pytest.mark.mariadb
def test_mariadb_wrong_password(run_cli, mysql_url):
    user = urlsplit(mysql_url).username or "root"
    proc = doctor(run_cli, "--broker", "memory://", "--backend", "db+" + with_userinfo(mysql_url, user, WRONG_PW))
    assert_unreachable(proc, "result backend", "Access denied")


@pytest.mark.integration
def test_an_apps_unreachable_broker_is_exit_3_too(run_cli, closed_port, tmp_path):
    (tmp_path / "unreach_app.py").write_text(
        "from celery import Celery\n"
        f"app = Celery('u', broker='amqp://u:{WRONG_PW}@127.0.0.1:{closed_port}//',"
        " backend='redis://127.0.0.1:1/0', set_as_current=False)\n")
    started = time.monotonic()
    proc = run_cli("doctor", "--app", "unreach_app:app", "--timeout", str(TIMEOUT_S), cwd=tmp_path, timeout=60)
    assert time.monotonic() - started < TIMEOUT_S + SLACK_S
    assert_unreachable(proc, "broker", f"127.0.0.1:{closed_port}")
