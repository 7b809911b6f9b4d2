"""Bad URLs are usage errors (issue 12, point 5): exit 2 at once, one error line, the expected form.

Also the URLs that must still be accepted (each one Celery reads right), and the kombu behaviour
the credentials check exists for, so a kombu that stops misreading them shows up here.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from celerydiag.cli import main
from celerydiag.errors import ExitCode, InputError
from celerydiag.target import resolve_target

PCAP = Path(__file__).resolve().parents[2] / "fixtures" / "pcaps" / "amqp_healthy.pcap"
BROKER_FORM = "expected a broker URL: amqp://USER:PASSWORD@HOST:5672/VHOST"
BACKEND_FORM = "expected a result backend URL: redis://[:PASSWORD@]HOST:6379/DB"
ENCODE = "percent-encode the password (# -> %23, / -> %2F, ? -> %3F, @ -> %40"


def run(capsys, *args: str) -> tuple[int, str, str, float]:
    start = time.monotonic()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err, time.monotonic() - start


REFUSED = [
    # (option, value, what the error line says, what the hint shows)
    ("--broker", "not a url", "--broker is not a valid URL: it does not start with SCHEME://", BROKER_FORM),
    ("--broker", "", "--broker is empty", BROKER_FORM),
    ("--broker", "   ", "--broker is empty", BROKER_FORM),
    ("--backend", "", "--backend is empty", BACKEND_FORM),
    ("--app", "", "--app is empty", "celery -A"),
    ("--app", " ", "--app is empty", "celery -A"),
    ("--broker", "127.0.0.1:5672", "is not a valid URL: it does not start with SCHEME://", BROKER_FORM),
    ("--broker", "://127.0.0.1", "is not a valid URL", BROKER_FORM),
    ("--broker", " amqp://127.0.0.1//", "starts or ends with whitespace", BROKER_FORM),
    ("--broker", "amqp://127.0.0.1//\n", "starts or ends with whitespace", BROKER_FORM),
    ("--broker", "amqp://127.0.\t0.1//", "control character", BROKER_FORM),
    ("--broker", "amqp://not a host//", "its host holds a space", BROKER_FORM),
    ("--broker", "amqp://127.0.0.1:99999//", "its port is not a number from 0 to 65535", BROKER_FORM),
    ("--broker", "amqp://127.0.0.1:abc//", "its port is not a number", BROKER_FORM),
    ("--broker", "amqp://[::1//", "IPv6 host needs brackets", BROKER_FORM),
    ("--broker", "foo://127.0.0.1", "unsupported broker: kombu has no transport 'foo'", BROKER_FORM),
    ("--broker", "http://127.0.0.1", "unsupported broker: kombu has no transport 'http'", BROKER_FORM),
    ("--broker", "db+nosuchdialect://", "unsupported broker: kombu has no transport 'db'", BROKER_FORM),
    ("--broker", "amqp://127.0.0.1//;not a url", "a member of its ';' list", BROKER_FORM),
    ("--broker", "redis://127.0.0.1:6379/abc", "the Redis database after the host must be a number", BROKER_FORM),
    ("--broker", "rediss://127.0.0.1:6380/0", "a rediss:// URL needs ssl_cert_reqs", "?ssl_cert_reqs=required"),
    ("--backend", "foo://127.0.0.1/0", "unsupported result backend", BACKEND_FORM),
    ("--backend", "not a url", "--backend is not a valid URL", BACKEND_FORM),
    ("--backend", "db+nosuchdialect://", "unsupported result backend: SQLAlchemy has no dialect 'nosuchdialect'",
     BACKEND_FORM),
    ("--backend", "db+postgresql+nosuchdriver://u@127.0.0.1/test", "no dialect 'postgresql+nosuchdriver'",
     BACKEND_FORM),
    ("--backend", "redis://127.0.0.1:6379/abc", "the Redis database after the host must be a number", BACKEND_FORM),
    ("--backend", "rediss://127.0.0.1:6380/0", "a rediss:// URL needs ssl_cert_reqs", "redis_backend_use_ssl"),
    ("--backend", "rediss://127.0.0.1:6380/0?ssl_cert_reqs=maybe", "Celery cannot use it", BACKEND_FORM),
    ("--backend", "redis://127.0.0.1:6379/0?ssl_cert_reqs=required", "Celery cannot use it", BACKEND_FORM),
    ("--broker", "amqp://guest:pa#ss@127.0.0.1//", "holds '#' unencoded", ENCODE),
    ("--broker", "amqp://guest:1234/ss@127.0.0.1//", "holds '/' unencoded", ENCODE),  # kombu: host 'guest', port 1234
    ("--backend", "redis://:pa?ss@127.0.0.1:6379/0", "holds '?' unencoded", ENCODE),
    ("--backend", "db+postgresql+psycopg://postgres:pa@ss@127.0.0.1/test", "holds '@' unencoded", ENCODE),
]


@pytest.mark.parametrize(("option", "value", "says", "hint"), REFUSED)
def test_a_bad_url_is_exit_2_at_once_with_one_line_and_the_expected_form(capsys, option, value, says, hint):
    others = {"--broker": ("--backend", "disabled://"), "--backend": ("--broker", "memory://"), "--app": ()}[option]
    code, out, err, elapsed = run(capsys, "doctor", option, value, *others)
    assert code == ExitCode.USAGE, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("celerydiag: error: ") and lines[1].startswith("  hint: "), err
    assert says in lines[0], err
    assert hint in lines[1], err
    assert elapsed < 10, f"{elapsed:.1f} s: a bad URL must fail before any network call"


@pytest.mark.parametrize("command", [
    ("probe", "broker"), ("probe", "config"), ("capture", "--read", str(PCAP)),
    ("bench-serialize", "--quick", "--from-backend", "x"), ("poll-model", "--from-backend", "x"),
])
def test_every_command_refuses_a_bad_url(capsys, command):
    code, _, err, _ = run(capsys, *command, "--broker", "not a url", "--backend", "redis://127.0.0.1:6379/15")
    assert code == ExitCode.USAGE, err
    assert "--broker is not a valid URL" in err, err


@pytest.mark.parametrize(("variable", "names"), [
    ("CELERY_BROKER_URL", "CELERY_BROKER_URL is not a valid URL"),
    ("CELERY_RESULT_BACKEND", "CELERY_RESULT_BACKEND is not a valid URL"),
])
def test_a_bad_url_in_the_environment_names_the_variable(capsys, monkeypatch, variable, names):
    monkeypatch.setenv(variable, "not a url")
    code, _, err, _ = run(capsys, "doctor", "--static")
    assert code == ExitCode.USAGE, err
    assert names in err


def test_a_bad_url_in_the_app_names_the_setting(capsys, monkeypatch, tmp_path):
    (tmp_path / "tapp_badurl.py").write_text(
        "from celery import Celery\n"
        "app = Celery('tapp_badurl', broker='memory://', backend='redis://127.0.0.1:6379/abc',"
        " set_as_current=False)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
    code, _, err, _ = run(capsys, "doctor", "--static", "--app", "tapp_badurl:app")
    assert code == ExitCode.USAGE, err
    assert "result_backend of --app tapp_badurl:app redis://127.0.0.1:6379/abc" in err


def test_the_apps_tls_setting_completes_a_rediss_url(monkeypatch, tmp_path):
    """ssl_cert_reqs may come from broker_use_ssl / redis_backend_use_ssl instead of the URL."""
    (tmp_path / "tapp_tls.py").write_text(
        "import ssl\nfrom celery import Celery\n"
        "app = Celery('tapp_tls', broker='rediss://127.0.0.1:6380/0', backend='rediss://127.0.0.1:6380/1',"
        " set_as_current=False)\n"
        "app.conf.broker_use_ssl = {'ssl_cert_reqs': ssl.CERT_REQUIRED}\n"
        "app.conf.redis_backend_use_ssl = {'ssl_cert_reqs': ssl.CERT_REQUIRED}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    target = resolve_target(app="tapp_tls:app", environ={})
    assert target.broker_url.startswith("rediss://") and target.backend_url.startswith("rediss://")


ACCEPTED = [
    ("amqp://guest:p@ss@127.0.0.1:5672//", "disabled://"),  # '@': kombu splits at the last '@'
    ("amqp://guest:pa:ss@127.0.0.1:5672//", "disabled://"),  # ':' after the first belongs to the password
    ("amqp://guest:p%23ss%2Fw%3F%40rd@127.0.0.1:5672//", "disabled://"),
    ("amqp://guest:p+ss w\u00f6rd%zz@127.0.0.1:5672//", "disabled://"),  # + space non-ASCII, % not an escape
    ("amqp://[::1]:5672//", "disabled://"),
    ("amqp://", "rpc://"),  # Celery's defaults: localhost
    ("amqp://a:pw1@127.0.0.1//;amqp://b:pw2@127.0.0.2//", "disabled://"),
    ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379/"),
    ("rediss://127.0.0.1:6380/0?ssl_cert_reqs=required", "rediss://127.0.0.1:6380/1?ssl_cert_reqs=CERT_NONE"),
    ("sentinel://:pw@127.0.0.1:26379;sentinel://:pw@127.0.0.2:26379", "disabled://"),
    ("memory://", "redis+socket:///run/redis.sock?virtual_host=0"),
    ("memory://", "db+sqlite:////tmp/celerydiag-test/a@b.sqlite"),  # '@' in a path with no authority
    ("memory://", "db+postgresql+psycopg://postgres:p%40ss%2F@127.0.0.1:5432/test"),
    ("memory://", "db+mysql+pymysql://root:pa%23ss%2Fx%3Fy@127.0.0.1:3306/test"),
    ("memory://", "cache+memory://"),
]


@pytest.mark.parametrize(("broker", "backend"), ACCEPTED)
def test_urls_celery_reads_right_are_accepted(broker, backend):
    target = resolve_target(broker=broker, backend=backend, environ={})
    assert (target.broker_url, target.backend_url) == (broker, backend)


def test_the_check_opens_no_connection():
    """A database backend is not built to check it: Celery's DatabaseBackend connects in its
    constructor (database_create_tables_at_setup), with no timeout; an unresolvable host would
    then be a wait, not an instant answer."""
    start = time.monotonic()
    resolve_target(broker="memory://", backend="db+postgresql+psycopg://u@host.invalid/db", environ={})
    assert time.monotonic() - start < 10


def test_why_the_credentials_check_exists():
    """kombu (Celery's URL parser for brokers and the worker's banner) cuts the authority at the
    first '/', '?' or '#' (urllib): a password holding one is read as a host and port, or raises
    with a piece of it in the message. If this ever stops holding, access/urls.py may relax."""
    from kombu.utils.url import url_to_parts

    parts = url_to_parts("amqp://guest:1234/secret@rabbit:5672//")
    assert (parts.hostname, parts.port) == ("guest", 1234)  # connects to the wrong place, silently
    with pytest.raises(ValueError, match="Sup3r"):
        url_to_parts("amqp://guest:Sup3r#x@rabbit:5672//")
    from sqlalchemy.engine import make_url

    assert make_url("postgresql://u:p@ss@h/db").host == "ss@h"  # SQLAlchemy: the first '@'


def test_the_refusal_names_no_piece_of_the_password():
    with pytest.raises(InputError) as caught:
        resolve_target(broker="amqp://guest:Sup3rSecret#Pw9xyz@127.0.0.1//", environ={})
    text = f"{caught.value.message} {caught.value.hint}"
    assert "Sup3rSecret" not in text and "Pw9xyz" not in text
    assert "amqp://guest:**@127.0.0.1//" in text


@pytest.fixture(autouse=True)
def _no_target_environment(monkeypatch):
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
