"""Which deployment we measure (app > flags > env > embedded) and how its URLs print safely."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from celerydiag.errors import ExitCode, InputError
from celerydiag.target import Origin, Target, TargetSource, redact, redact_url, resolve_target, scheme_of

APPS = Path(__file__).resolve().parents[1] / "fixtures" / "apps"
ENV = {"CELERY_BROKER_URL": "redis://env-host:6379/1", "CELERY_RESULT_BACKEND": "redis://env-host:6379/2"}


@pytest.fixture(autouse=True)
def apps_on_path(monkeypatch):
    """Import tests/fixtures/apps/tapp_* like `celery -A` would, and forget them afterwards
    (resolve_target writes --broker/--backend into the imported app)."""
    monkeypatch.syspath_prepend(str(APPS))
    yield
    for name in [m for m in sys.modules if m.startswith("tapp_")]:
        del sys.modules[name]


@pytest.fixture
def resolve():
    made: list[Target] = []

    def _resolve(**kw) -> Target:
        target = resolve_target(**kw)
        made.append(target)
        return target

    yield _resolve
    for target in made:
        if target.scratch_dir:
            shutil.rmtree(target.scratch_dir, ignore_errors=True)


def test_the_apps_urls_and_conf_when_nothing_else_sets_them(resolve):
    t = resolve(app="tapp_clean:app", environ={})
    assert t.source is TargetSource.APP
    assert t.broker_url == "amqp://guest@127.0.0.1:5672//"
    assert t.backend_url == "redis://127.0.0.1:6379/15"
    assert t.origins() == (Origin.APP, Origin.APP)
    assert t.conf.accept_content == ["json"]  # the user's own conf is what we read
    assert t.app.main == "tapp_clean"


# Celery's order for each URL on its own (celery/bin/celery.py turns -b / --result-backend into
# these variables; celery/app/utils.py Settings.broker_url / result_backend read them before the
# app's setting): flag, then environment, then the app, then Celery's default.
@pytest.mark.parametrize(("kw", "broker", "backend"), [
    ({"app": "tapp_clean:app", "environ": ENV},
     ("redis://env-host:6379/1", Origin.ENV), ("redis://env-host:6379/2", Origin.ENV)),
    ({"app": "tapp_clean:app", "broker": "redis://flag-host:6379/3", "environ": ENV},
     ("redis://flag-host:6379/3", Origin.FLAG), ("redis://env-host:6379/2", Origin.ENV)),
    ({"app": "tapp_clean:app", "backend": "redis://flag-host:6379/4", "environ": {}},
     ("amqp://guest@127.0.0.1:5672//", Origin.APP), ("redis://flag-host:6379/4", Origin.FLAG)),
    ({"broker": "amqp://guest@flag-host:5672//", "environ": ENV},
     ("amqp://guest@flag-host:5672//", Origin.FLAG), ("redis://env-host:6379/2", Origin.ENV)),
    ({"broker": "amqp://guest@flag-host:5672//", "environ": {}},
     ("amqp://guest@flag-host:5672//", Origin.FLAG), ("disabled://", Origin.DEFAULT)),
    ({"backend": "redis://flag-host:6379/4", "environ": {"CELERY_BROKER_URL": "redis://env-host:6379/1"}},
     ("redis://env-host:6379/1", Origin.ENV), ("redis://flag-host:6379/4", Origin.FLAG)),
    ({"environ": {"CELERY_RESULT_BACKEND": "redis://env-host:6379/2"}},
     ("amqp://guest@localhost:5672//", Origin.DEFAULT), ("redis://env-host:6379/2", Origin.ENV)),
    ({"broker": "amqp://guest@flag-host:5672//", "environ": {"CELERY_RESULT_BACKEND": ""}},  # empty = unset
     ("amqp://guest@flag-host:5672//", Origin.FLAG), ("disabled://", Origin.DEFAULT)),
])
def test_each_url_is_picked_as_celery_picks_it(resolve, kw, broker, backend):
    t = resolve(**kw)
    assert (t.broker_url, t.origins()[0]) == broker
    assert (t.backend_url, t.origins()[1]) == backend
    doc = t.to_dict()
    assert (doc["broker_source"], doc["backend_source"]) == (str(broker[1]), str(backend[1]))
    expected_source = "app" if "app" in kw else "flags" if {"broker", "backend"} & set(kw) else "env"
    assert doc["source"] == expected_source  # how the target was named, as before
    if t.app_name:  # the conf the config checks read says what is measured
        assert (t.conf.broker_url, t.conf.result_backend) == (t.broker_url, t.backend_url)


def test_the_apps_own_settings_are_read_past_the_environment(resolve, monkeypatch):
    """Celery's conf.broker_url property answers CELERY_BROKER_URL first: reading the app's own
    setting through it would make an --app look like it holds the shell's URL."""
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://os-env-host:6379/1")
    t = resolve(app="tapp_clean:app", environ={})
    assert (t.broker_url, t.origins()[0]) == ("amqp://guest@127.0.0.1:5672//", Origin.APP)


def test_pin_environment_makes_every_celery_app_use_the_target(resolve):
    """`celery -b X` sets CELERY_BROKER_URL=X; we do the same, or an app built with broker=X
    would connect to the shell's URL while the report says X."""
    from celery import Celery

    from celerydiag.target import pin_environment

    environ = {"CELERY_BROKER_URL": "redis://env-host:6379/1"}
    t = resolve(broker="amqp://guest@flag-host:5672//", backend="redis://flag-host:6379/4", environ=environ)
    pin_environment(t, environ)
    assert environ == {"CELERY_BROKER_URL": "amqp://guest@flag-host:5672//",
                       "CELERY_RESULT_BACKEND": "redis://flag-host:6379/4"}
    os_environ_before = dict(os.environ)
    try:
        pin_environment(t)
        app = Celery("x", broker="memory://", set_as_current=False)
        assert app.conf.broker_url == t.broker_url and app.conf.result_backend == t.backend_url
    finally:
        os.environ.clear()
        os.environ.update(os_environ_before)


def test_app_by_module_name_finds_its_app(resolve):
    assert resolve(app="tapp_clean", environ={}).app.main == "tapp_clean"


def test_env_wins_over_embedded(resolve):
    t = resolve(environ=ENV)
    assert (t.source, t.broker_url, t.backend_url) == (
        TargetSource.ENV, "redis://env-host:6379/1", "redis://env-host:6379/2")
    only_backend = resolve(environ={"CELERY_RESULT_BACKEND": "redis://env-host:6379/2"})
    assert only_backend.source is TargetSource.ENV
    assert only_backend.broker_scheme == "amqp"  # Celery's own default broker


def test_os_environ_is_the_default_environment(resolve, monkeypatch):
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://from-os-environ:6379/0")
    assert resolve().broker_url == "redis://from-os-environ:6379/0"


def test_embedded_default_when_nothing_is_configured(resolve):
    t = resolve(environ={})
    assert t.source is TargetSource.EMBEDDED
    assert t.broker_url == "memory://"
    assert t.backend_scheme == "db" and t.backend_url.endswith("/results.sqlite")
    assert t.scratch_dir and os.path.isdir(t.scratch_dir)
    assert t.backend_url == f"db+sqlite:///{t.scratch_dir}/results.sqlite"
    assert "embedded default" in t.describe() and "in-memory broker" in t.describe()
    assert t.to_dict() == {"broker": "memory://", "backend": t.backend_url, "source": "embedded",
                           "broker_source": "embedded", "backend_source": "embedded"}


def test_unknown_app_is_usage_with_a_hint(resolve):
    with pytest.raises(InputError) as err:
        resolve(app="no_such_module_xyz:app", environ={})
    assert err.value.exit_code == ExitCode.USAGE
    assert "no_such_module_xyz" in err.value.message and "ModuleNotFoundError" in err.value.message
    assert "celery -A" in err.value.hint


def test_import_error_inside_the_users_app_names_it(resolve):
    with pytest.raises(InputError) as err:
        resolve(app="tapp_broken:app", environ={})
    assert "RuntimeError: settings module is missing DATABASE_HOST" in err.value.message
    assert "\n" not in err.value.message


def test_missing_attribute_of_app_module(resolve):
    with pytest.raises(InputError, match="tapp_clean:nope"):
        resolve(app="tapp_clean:nope", environ={})


@pytest.mark.parametrize("kw", [
    {"backend": "foo://x"},
    {"broker": "memory://", "backend": "nosuchscheme://h/0"},
    {"environ": {"CELERY_RESULT_BACKEND": "mongo-ish://h"}},
])
def test_unsupported_backend_scheme_is_usage(resolve, kw):
    kw.setdefault("environ", {})
    with pytest.raises(InputError) as err:
        resolve(**kw)
    assert err.value.exit_code == ExitCode.USAGE
    assert "unsupported result backend" in err.value.message
    assert "redis://" in err.value.hint


def test_unsupported_broker_scheme_is_usage(resolve):
    with pytest.raises(InputError) as err:
        resolve(broker="foo://x", backend="redis://127.0.0.1/0", environ={})
    assert err.value.exit_code == ExitCode.USAGE
    assert "foo" in err.value.message and "amqp://" in (err.value.hint or "")


def test_unsupported_backend_scheme_hides_the_password(resolve):
    with pytest.raises(InputError) as err:
        resolve(backend="foo://u:Hunter2pw@h/0", environ={})
    assert "Hunter2pw" not in str(err.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://user:pass@rabbit:5672//", "amqp://user:**@rabbit:5672//"),
        ("pyamqp://user:pass@rabbit:5672/vhost", "pyamqp://user:**@rabbit:5672/vhost"),
        ("redis://:pass@redis:6379/0", "redis://:**@redis:6379/0"),
        ("rediss://:pass@redis:6380/0?ssl_cert_reqs=required", "rediss://:**@redis:6380/0?ssl_cert_reqs=required"),
        ("redis://default:pass@redis:6379/0", "redis://default:**@redis:6379/0"),
        ("db+postgresql+psycopg://celery:pass@db/celery", "db+postgresql+psycopg://celery:**@db/celery"),
        ("db+mysql+pymysql://root:pass@127.0.0.1:3306/test", "db+mysql+pymysql://root:**@127.0.0.1:3306/test"),
        ("amqp://user:p%40ss%2Fw%3Ard@rabbit//", "amqp://user:**@rabbit//"),  # percent-encoded
        ("amqp://user:p@ss@rabbit//", "amqp://user:**@rabbit//"),  # '@' unencoded: kombu accepts it
        ("amqp://user:pa:ss#x?y@rabbit//", "amqp://user:**@rabbit//"),
        ("amqp://a:pw1@h1:5672//;amqp://b:pw2@h2:5672//", "amqp://a:**@h1:5672//;amqp://b:**@h2:5672//"),
        ("sentinel://:pw@s1:26379;sentinel://:pw@s2:26379", "sentinel://:**@s1:26379;sentinel://:**@s2:26379"),
        ("amqp://guest@rabbit:5672//", "amqp://guest@rabbit:5672//"),  # no password: unchanged
        ("memory://", "memory://"),
        ("db+sqlite:///tmp/x/results.sqlite", "db+sqlite:///tmp/x/results.sqlite"),
        ("redis+socket:///run/redis.sock?virtual_host=0", "redis+socket:///run/redis.sock?virtual_host=0"),
        ("", ""),
        (None, ""),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_redact_leaves_urls_without_userinfo_alone():
    text = "connect to http://rabbit:15672/api failed; see redis://redis:6379/0"
    assert redact(text) == text


def test_target_redact_scrubs_known_passwords_from_any_text():
    t = Target(broker_url="amqp://u:Sup3rS3cret-xyz@h//", backend_url="redis://:r3dis-pw@h/0",
               source=TargetSource.FLAGS)
    text = ("AMQPConnectionError: ACCESS_REFUSED for user u with Sup3rS3cret-xyz; "
            "redis AUTH r3dis-pw failed; url amqp://u:Sup3rS3cret-xyz@h//")
    out = t.redact(text)
    assert "Sup3rS3cret-xyz" not in out and "r3dis-pw" not in out
    assert "ACCESS_REFUSED for user u" in out


def test_target_redact_scrubs_percent_encoded_passwords_in_both_spellings():
    t = Target(broker_url="amqp://u:p%40ss%23word@h//", backend_url="disabled://", source=TargetSource.FLAGS)
    out = t.redact("login failed with p@ss#word (sent as p%40ss%23word)")
    assert "p@ss#word" not in out and "p%40ss%23word" not in out


def test_target_redact_scrubs_every_failover_password():
    t = Target(broker_url="amqp://a:first-pw@h1//;amqp://b:second-pw@h2//", backend_url="disabled://",
               source=TargetSource.FLAGS)
    out = t.redact("h1 refused first-pw, then h2 refused second-pw")
    assert "first-pw" not in out and "second-pw" not in out


def test_target_secrets_include_the_apps_password_settings(resolve):
    t = resolve(app="tapp_clean:app", environ={})
    t.conf.broker_password = "conf-level-pw"
    assert "conf-level-pw" in t.secrets()
    assert "conf-level-pw" not in t.redact("auth with conf-level-pw failed")


@pytest.mark.parametrize(("url", "scheme"), [
    ("db+postgresql+psycopg://u@h/db", "db"), ("rediss://h", "rediss"), ("RPC://", "rpc"),
    ("pyamqp://h//", "pyamqp"), ("memory://", "memory"), ("", ""), ("not a url", ""),
])
def test_scheme_of(url, scheme):
    assert scheme_of(url) == scheme


def test_describe_and_to_dict_never_show_the_password():
    t = Target(broker_url="amqp://u:Sup3rS3cret-xyz@h//", backend_url="db+postgresql+psycopg://p:Sup3rS3cret-xyz@d/x",
               source=TargetSource.FLAGS)
    assert "Sup3rS3cret-xyz" not in t.describe()
    assert "Sup3rS3cret-xyz" not in repr(t.to_dict())


def test_a_password_that_does_not_parse_is_still_a_secret():
    """'#' ends urlsplit's netloc, '/' ends the URL pattern: the raw password is what we scrub."""
    from celerydiag.target import passwords_of

    url = "amqp://guest:Se#cr3t/Pw@127.0.0.1//"
    assert "Se#cr3t/Pw" in passwords_of(url)
    assert "Se%23cr3t" in passwords_of("amqp://guest:Se%23cr3t@h//") and "Se#cr3t" in passwords_of(
        "amqp://guest:Se%23cr3t@h//")
    t = Target(url, "disabled://", TargetSource.FLAGS)
    assert "cr3t" not in t.redact(f"cannot parse {url}: port 'Se'")


def test_an_error_while_resolving_carries_the_passwords_it_must_be_scrubbed_of(resolve):
    from celerydiag.errors import secrets_of

    with pytest.raises(InputError) as caught:
        resolve(broker="foo://u:Hunter2pw@h//")
    assert "Hunter2pw" in secrets_of(caught.value)


@pytest.mark.parametrize(("url", "expected"), [
    ("amqp://guest:my pw@rabbit//", "amqp://guest:**@rabbit//"),  # a space: the old pattern stopped there
    ("amqp://guest:Sup3r/Secret@rabbit:5672//", "amqp://guest:**@rabbit:5672//"),  # '/': printed whole before
    ("amqp://guest:a#b?c/d@e:f@rabbit//", "amqp://guest:**@rabbit//"),
    ("redis://:p\u00e4ss\u20ac@redis:6379/0", "redis://:**@redis:6379/0"),
])
def test_redact_url_masks_the_password_by_structure(url, expected):
    assert redact_url(url) == expected


def test_pieces_of_a_password_that_did_not_parse_are_scrubbed():
    """kombu's "Port could not be cast to integer value as 'Sup3rSecret'" quotes a piece: each
    piece of at least MIN_LITERAL_SECRET characters is a secret too, as typed and decoded."""
    from celerydiag.target import spellings

    t = Target("amqp://guest:Sup3rSecret#Pw9xyz@127.0.0.1//", "redis://:Ab%2FCdef%23Gh@h/0", TargetSource.FLAGS)
    text = ("ValueError: Port could not be cast to integer value as 'Sup3rSecret'; then Pw9xyz; "
            "auth Ab/Cdef#Gh failed (Ab%2FCdef%23Gh), piece Cdef")
    out = t.redact(text)
    for piece in ("Sup3rSecret", "Pw9xyz", "Ab/Cdef#Gh", "Ab%2FCdef%23Gh", "Cdef"):
        assert piece not in out, out
    assert "Port could not be cast" in out
    assert {"Sup3rSecret#Pw9xyz", "Sup3rSecret%23Pw9xyz", "Sup3rSecret", "Pw9xyz"} <= spellings("Sup3rSecret#Pw9xyz")
    assert "Gh" not in spellings("Ab/Gh")  # a short piece is masked inside URLs only
