"""No password in any output: every command x every format, on success and on error paths,
on stdout, stderr and an --output file.

RabbitMQ gets a user of our own (`celerydiag_t`, created with rabbitmqctl for this module and
deleted after) so a full `doctor` really logs in with the known password. PostgreSQL trusts
loopback on the test machine, so the same password in its URL is accepted and ignored. Redis'
requirepass must not change on a shared server: a Redis URL with the password is used against a
closed port instead, which exercises the error path.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

SECRET = "Sup3rS3cret-xyz"  # also in tests/fixtures/apps/tapp_secret.py
USER = "celerydiag_t"
FORMATS = ("text", "json", "markdown", "junit", "html")
APPS = Path(__file__).resolve().parents[1] / "fixtures" / "apps"
# Bounds that keep a full doctor run to a few seconds: this module tests what is printed.
QUICK = ("--updates", "20", "--samples", "10", "--max-seconds", "5", "--duration", "0.5", "--timeout", "3")


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def secret_broker(amqp_url: str) -> Iterator[str]:
    """An AMQP URL that logs in as our own user with the known password."""
    assert shutil.which("rabbitmqctl"), "rabbitmqctl not found: install rabbitmq-server (scripts/system-packages.sh)"
    _rabbitmqctl("delete_user", USER)  # a leftover from an interrupted run
    made = _rabbitmqctl("add_user", USER, SECRET)
    assert made.returncode == 0, made.stderr
    try:
        perms = _rabbitmqctl("set_permissions", "-p", "/", USER, ".*", ".*", ".*")
        assert perms.returncode == 0, perms.stderr
        parts = urlsplit(amqp_url)
        yield f"amqp://{USER}:{SECRET}@{parts.hostname}:{parts.port or 5672}//"
    finally:
        _rabbitmqctl("delete_user", USER)


@pytest.fixture(scope="module")
def secret_backend(pg_url: str) -> str:
    parts = urlsplit(pg_url)
    user, port = parts.username or "postgres", parts.port or 5432
    return f"db+{parts.scheme}://{user}:{SECRET}@{parts.hostname}:{port}{parts.path}"


def assert_no_secret(proc, output: Path | None = None) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    for name, text in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        assert SECRET not in text, f"password in {name}"
        assert "Sup3rS3cret%2Dxyz" not in text and "Sup3rS3cret" not in text, f"part of the password in {name}"
    if output is not None:
        assert output.exists(), proc.stderr
        assert SECRET not in output.read_text(encoding="utf-8"), f"password in --output {output.name}"


def both_ways(run_cli, tmp_path: Path, fmt: str, *args: str, cwd: Path | None = None) -> list[str]:
    """Run once to stdout and once to --output; check all three for the password.
    Returns the rendered reports so a test can check they are real reports."""
    first = run_cli(*args, "--format", fmt, cwd=cwd, timeout=120)
    assert_no_secret(first)
    assert first.returncode in (0, 1), first.stderr
    out = tmp_path / f"report.{fmt}"
    second = run_cli(*args, "--format", fmt, "--output", str(out), cwd=cwd, timeout=120)
    assert_no_secret(second, out)
    assert second.returncode in (0, 1), second.stderr  # measured runs may differ in severity
    return [first.stdout, out.read_text(encoding="utf-8")]


@pytest.mark.integration
@pytest.mark.parametrize("fmt", FORMATS)
def test_doctor_static_with_an_app(run_cli, tmp_path, fmt):
    reports = both_ways(run_cli, tmp_path, fmt, "doctor", "--static", "--app", "tapp_secret:app", cwd=APPS)
    assert all(r.strip() for r in reports)
    if fmt != "junit":  # junit carries no target
        assert "celerydiag_t:**@" in reports[0]  # the URL is shown, only its password is not


@pytest.mark.integration
@pytest.mark.parametrize("fmt", FORMATS)
def test_probe_config_with_flags(run_cli, tmp_path, fmt):
    both_ways(run_cli, tmp_path, fmt, "probe", "config",
              "--broker", f"amqp://{USER}:{SECRET}@127.0.0.1:5672//",
              "--backend", f"db+postgresql+psycopg://postgres:{SECRET}@127.0.0.1:5432/test")


@pytest.mark.integration
@pytest.mark.rabbitmq
@pytest.mark.postgres
@pytest.mark.parametrize("fmt", FORMATS)
def test_full_doctor_logged_in_with_the_password(run_cli, tmp_path, fmt, secret_broker, secret_backend):
    reports = both_ways(run_cli, tmp_path, fmt, "doctor", "--broker", secret_broker, "--backend", secret_backend,
                        *QUICK)
    if fmt == "json":
        report = json.loads(reports[0])
        assert report["target"]["broker"].startswith(f"amqp://{USER}:**@")
        # exit 0/1 already means it logged in (else reach fails with 3); a probe that failed
        # under load still had its reason checked for the password above
        assert any(p["status"] == "ran" and p["name"] != "config" for p in report["probes"]), report["probes"]


@pytest.mark.integration
@pytest.mark.rabbitmq
@pytest.mark.postgres
def test_report_of_saved_reports(run_cli, tmp_path, secret_broker, secret_backend):
    saved = tmp_path / "saved.json"
    made = run_cli("doctor", "--broker", secret_broker, "--backend", secret_backend, *QUICK,
                   "--format", "json", "--output", str(saved), timeout=120)
    assert_no_secret(made, saved)
    static = tmp_path / "static.json"
    assert_no_secret(run_cli("doctor", "--static", "--app", "tapp_secret:app", "--format", "json",
                             "--output", str(static), cwd=APPS), static)
    for fmt in FORMATS:
        both_ways(run_cli, tmp_path, fmt, "report", str(saved), str(static))


@pytest.mark.integration
@pytest.mark.rabbitmq
@pytest.mark.parametrize("fmt", FORMATS)
def test_wrong_password_refused_by_rabbitmq(run_cli, amqp_url, fmt):
    """The password the broker refused is still a password."""
    user = urlsplit(amqp_url).username or "guest"
    proc = run_cli("doctor", "--broker", f"amqp://{user}:{SECRET}@127.0.0.1:5672//",
                   "--backend", "redis://127.0.0.1:6379/15", "--timeout", "3", "--format", fmt)
    assert proc.returncode == 3, proc.stderr
    assert_no_secret(proc)


@pytest.mark.integration
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("where", ["broker", "backend"])
def test_passworded_redis_on_a_closed_port(run_cli, closed_port, fmt, where):
    url = f"redis://:{SECRET}@127.0.0.1:{closed_port}/0"
    args = ("--broker", url, "--backend", "redis://127.0.0.1:6379/15") if where == "broker" else \
        ("--broker", "memory://", "--backend", url)
    proc = run_cli("doctor", *args, "--timeout", "2", "--format", fmt)
    assert proc.returncode == 3, proc.stderr
    assert_no_secret(proc)
    assert "redis://:**@127.0.0.1" in proc.stderr


@pytest.mark.integration
def test_failover_broker_list_hides_every_password(run_cli, closed_port):
    url = f"amqp://a:{SECRET}@127.0.0.1:{closed_port}//;amqp://b:{SECRET[::-1]}@127.0.0.1:{closed_port}//"
    proc = run_cli("doctor", "--broker", url, "--backend", "redis://127.0.0.1:6379/15", "--timeout", "2")
    assert proc.returncode == 3, proc.stderr
    assert_no_secret(proc)
    assert SECRET[::-1] not in proc.stderr


@pytest.mark.integration
def test_an_apps_import_error_that_quotes_its_url(run_cli, tmp_path):
    (tmp_path / "leaky_app.py").write_text(
        f"raise RuntimeError('cannot reach amqp://admin:{SECRET}@rabbit.internal:5672//')\n")
    proc = run_cli("doctor", "--app", "leaky_app:app", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert_no_secret(proc)
    assert "amqp://admin:**@rabbit.internal" in proc.stderr


@pytest.mark.integration
def test_unsupported_scheme_error_hides_the_password(run_cli):
    for args in (("--backend", f"foo://u:{SECRET}@h/0"), ("--broker", f"foo://u:{SECRET}@h//")):
        proc = run_cli("doctor", *args)
        assert proc.returncode == 2, proc.stderr
        assert_no_secret(proc)
