"""Issue 17: one paste block, in the user's naming style, that every finding's fix is a view of.

Real Celery apps configured each way (fixtures/apps/style_*.py): the printed block, appended to
the app's own config module the way a user pastes it, must load without ImproperlyConfigured and
its values must take effect. Every combination of two trigger configs (tests/unit/test_fixes.py)
must give fixes that never contradict each other and a merged block that sets what each fix sets.
"""

from __future__ import annotations

import importlib
import itertools
import sys
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import ImproperlyConfigured
from test_fixes import TRIGGERS, _run  # same directory (pytest rootdir imports)

from celerydiag.backend.probe import engine_fix, redis_progress_fix
from celerydiag.broker.probe import fix_confirm_on
from celerydiag.compat import sqlalchemy_version
from celerydiag.config.paste import ALTERNATIVES, KEEP, merge, merged, parse, paste_block, unify
from celerydiag.config.probe import ConfigProbe
from celerydiag.config.style import NAMESPACE, NEW, OLD, Naming, detect
from celerydiag.doctor import diagnose
from celerydiag.findings import Finding, Fix, ProbeResult, ProbeStatus, Report, Severity
from celerydiag.target import resolve_target

ROOT = Path(__file__).resolve().parents[2]
STYLES = {"style_new": (NEW, None), "style_old": (OLD, None), "style_django": (NAMESPACE, "CELERY")}


def _report(findings: list[Finding], app: Any) -> Report:
    result = ProbeResult("config", ProbeStatus.RAN, findings=tuple(findings))
    return unify(Report.build({"source": "app"}, 1000.0, [result], {}, "test"), app)


def _doctor(name: str) -> Report:
    target = resolve_target(app=f"fixtures.apps.{name}:app", environ={})
    return diagnose(target, [ConfigProbe], static=True)


@pytest.mark.parametrize("name", sorted(STYLES))
def test_style_is_detected_from_the_app(name: str) -> None:
    module = importlib.import_module(f"fixtures.apps.{name}")
    kind, _ = STYLES[name]
    assert detect(module.app).kind == kind


@pytest.mark.parametrize("name", sorted(STYLES))
def test_pasted_block_lets_celery_start_and_takes_effect(name: str, tmp_path: Path, monkeypatch) -> None:
    report = _doctor(name)
    block = paste_block(report)
    assert block, "the fixture has findings with config fixes"
    settings = {k: v for k, v in merged(report).settings.items() if k not in ALTERNATIVES}
    assert settings
    config = importlib.import_module(f"fixtures.apps.{name}_config" if name != "style_django"
                                     else "fixtures.apps.style_django_settings")
    pasted = Path(config.__file__).read_text() + "\n" + block
    module = f"pasted_{name}"
    (tmp_path / f"{module}.py").write_text(pasted)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(module, None)
    _, namespace = STYLES[name]
    app = Celery(module, set_as_current=False)
    app.config_from_object(module, namespace=namespace)
    conf = app.conf  # loading it is what raises "Cannot mix new setting names with old"
    for setting, value in settings.items():
        assert conf.get(setting) == value or (setting, value) == ("result_expires", 86400) \
            and conf.result_expires.total_seconds() == 86400, (setting, conf.get(setting), value)


def test_lowercase_into_an_old_config_is_what_breaks_celery(tmp_path: Path, monkeypatch) -> None:
    """The bug of point 7, shown on the real Celery: the same block in new names does not load."""
    from celerydiag.config.paste import render

    report = _doctor("style_old")
    config = importlib.import_module("fixtures.apps.style_old_config")
    block = render({k: v for k, v in merged(report).settings.items() if k not in ALTERNATIVES}, Naming())
    (tmp_path / "pasted_lower.py").write_text(Path(config.__file__).read_text() + "\n" + block)
    monkeypatch.syspath_prepend(str(tmp_path))
    app = Celery("lower", set_as_current=False)
    app.config_from_object("pasted_lower")
    with pytest.raises(ImproperlyConfigured, match="Cannot mix"):
        app.conf.result_backend  # noqa: B018  (loading the config raises)


@pytest.mark.parametrize("name", sorted(STYLES))
def test_each_fix_is_a_view_of_the_block_in_the_users_style(name: str) -> None:
    report = _doctor(name)
    naming = Naming.from_dict(dict(report.meta)["config_style"])
    block = merged(report)
    assert not block.conflicts
    for f in report.findings:
        if f.fix and f.fix.config and f.severity != Severity.OK:
            one = parse(f.fix.config, naming)
            assert not one.code, f.id
            for setting, value in one.settings.items():
                assert block.settings[setting] == value, (f.id, setting)
            for line in f.fix.config.splitlines():
                head = line.split("=")[0].strip()
                if head and not line.startswith((" ", "#", "}")):
                    assert head == naming.name(setting_of(head, naming)), (f.id, head)


def setting_of(name: str, naming: Naming) -> str:
    return next(iter(parse(f"{name} = 1\n", naming).settings))


def _extra_fixes(settings: dict[str, Any]) -> list[Finding]:
    """The fixes other probes build from the same config (backend lock bounds, the Redis
    alternative, confirms on): what doctor with every probe could print beside config's."""
    from test_config_probe import make_target

    target = make_target(**settings)
    out: list[Finding] = []
    for dialect in ("postgresql", "mysql"):
        fix = engine_fix(dialect, target)
        if fix and target.backend_scheme == "db":
            out.append(Finding(f"backend.lock-{dialect}", "backend", Severity.INFO, "t", fix=fix))  # type: ignore[arg-type]
    out.append(Finding("backend.redis-progress", "backend", Severity.INFO, "t", fix=redis_progress_fix()))  # type: ignore[arg-type]
    if target.broker_scheme.startswith("amqp"):
        out.append(Finding("broker.confirm-publish", "broker", Severity.INFO, "t",  # type: ignore[arg-type]
                           fix=Fix("confirms", fix_confirm_on(target))))
    return out


def _removed(settings: dict[str, Any], fixes: list[Finding]) -> dict[str, set[str]]:
    """Keys of the user's own dict settings that some fix leaves out (it removes them)."""
    from test_config_probe import make_target

    conf = make_target(**settings).conf
    out: dict[str, set[str]] = {}
    for f in fixes:
        for name, value in parse(f.fix.config if f.fix else "").settings.items():
            mine = conf.get(name)
            if isinstance(value, dict) and isinstance(mine, dict) and name in settings:
                out.setdefault(name, set()).update(set(mine) - set(value))
    return out


COMBOS = [(a, b) for a, b in itertools.combinations(sorted(TRIGGERS), 2)
          if not set(TRIGGERS[a][0]) & set(TRIGGERS[b][0]) and TRIGGERS[a][1] == TRIGGERS[b][1]]


@pytest.mark.parametrize(("a", "b"), COMBOS, ids=[f"{a}+{b}" for a, b in COMBOS])
def test_no_two_fixes_contradict_and_the_block_sets_what_each_sets(a: str, b: str) -> None:
    settings = {**TRIGGERS[a][0], **TRIGGERS[b][0]}
    versions = TRIGGERS[a][1]
    findings = [f for f in _run(settings, versions).values() if f.severity != Severity.OK]
    findings += _extra_fixes(settings)
    fixed = [f for f in findings if f.fix and f.fix.config]
    block = merge(parse(f.fix.config) for f in fixed if f.fix)
    assert not block.conflicts, block.conflicts
    for name, keys in _removed(settings, fixed).items():
        assert not keys & set(block.settings.get(name) or {}), (name, keys, "one fix removes what another keeps")
    report = _report(findings, None)
    text = paste_block(report)
    namespace: dict[str, Any] = {}
    exec(compile(text, "celeryconfig.py", "exec"), {}, namespace)  # noqa: S102 (our own generated text)
    for f in fixed:
        for name, value in parse(f.fix.config if f.fix else "").settings.items():
            if name in ALTERNATIVES:
                assert f"# {name} = " in text  # offered, commented: it would move every result
                continue
            assert _contains(namespace[name], value), (f.id, name)


def _contains(big: Any, small: Any) -> bool:
    if small == KEEP:
        return True
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and _contains(big[k], v) for k, v in small.items()
                                             if v != KEEP)
    return bool(big == small)


def test_secrets_stay_comments_through_the_merge() -> None:
    one = parse("database_engine_options = {\n    # 'password': keep your existing value\n    'x': 1,\n}\n")
    assert one.settings == {"database_engine_options": {"password": KEEP, "x": 1}}
    from celerydiag.config.paste import render

    assert "# 'password': keep your existing value" in render(one.settings, Naming(OLD))
    assert "CELERY_RESULT_ENGINE_OPTIONS = {" in render(one.settings, Naming(OLD))


def test_json_report_carries_the_block(tmp_path: Path) -> None:
    import io
    import json

    from celerydiag.render import json as render_json

    report = _doctor("style_old")
    out = io.StringIO()
    render_json.render(report, out)
    data = json.loads(out.getvalue())
    assert data["paste_block"].startswith("# Every fix") and "CELERY_RESULT_BACKEND_MAX_RETRIES = 3" in data[
        "paste_block"]
    # a saved report re-renders the same block (the style travels in meta)
    assert paste_block(Report.from_dict(data)) == data["paste_block"]
    assert ROOT.exists()


# ---- point 2: connect arguments right for the driver in the user's URL, or none ------------------

# SQLAlchemy 2.1 loads psycopg (3) for a bare postgresql:// (2.0, which Celery 5.3/5.4 resolve on
# Python 3.9/3.10, psycopg2) and mysqlclient (mysqldb) for mysql://
_BARE_PG = "psycopg" if sqlalchemy_version() >= (2, 1) else "psycopg2"
DRIVER_URLS = {
    "db+postgresql://u@h/d": (_BARE_PG, {"connect_timeout": 5}, {"options": "-c lock_timeout=2000"}),
    "db+postgresql+psycopg://u@h/d": ("psycopg", {"connect_timeout": 5}, {"options": "-c lock_timeout=2000"}),
    "db+postgresql+psycopg2://u@h/d": ("psycopg2", {"connect_timeout": 5}, {"options": "-c lock_timeout=2000"}),
    # pg8000 1.31 connect() has timeout= and startup_params=, no connect_timeout/options (TypeError)
    "db+postgresql+pg8000://u@h/d": ("pg8000", {"timeout": 5}, {"startup_params": {"lock_timeout": "2000"}}),
    "db+mysql+pymysql://u@h/d": ("pymysql", {"connect_timeout": 5},
                                 {"init_command": "SET SESSION innodb_lock_wait_timeout=5"}),
    "db+mysql://u@h/d": ("mysqldb", {"connect_timeout": 5}, {"init_command": "SET SESSION innodb_lock_wait_timeout=5"}),
    "db+mysql+mysqlconnector://u@h/d": ("mysqlconnector", {"connect_timeout": 5}, None),
    "db+mysql+asyncmy://u@h/d": ("asyncmy", None, None),
}


@pytest.mark.parametrize("url", sorted(DRIVER_URLS))
def test_connect_and_lock_args_are_spelled_for_the_driver(url: str) -> None:
    from test_config_probe import make_target

    from celerydiag.config.fixes import connect_timeout_args, db_driver, lock_timeout_args

    driver, timeout, lock = DRIVER_URLS[url]
    t = make_target(backend=url)
    assert db_driver(t) == driver
    assert connect_timeout_args(driver) == timeout
    assert lock_timeout_args(driver, {}) == lock
    found = {f.id: f for f in check_config_now(t)}
    fix = found["config.db-connection-per-read"].fix
    if timeout is None:
        assert fix is None or "connect_args" not in fix.config  # nothing printed rather than a wrong keyword
    else:
        assert fix is not None
        assert parse(fix.config).settings["database_engine_options"]["connect_args"] == timeout
    if "pg8000" in url:
        assert "connect_timeout" not in (fix.config if fix else "")
        dialect = "postgresql"
    else:
        dialect = "postgresql" if "postgresql" in url else "mysql"
    lock_fix = engine_fix(dialect, t)
    options = parse(lock_fix.config).settings["database_engine_options"] if lock_fix else {}
    for key, value in (lock or {}).items():
        assert options["connect_args"][key] == value
    if lock is None and dialect == "mysql":
        assert lock_fix is not None and "SET GLOBAL innodb_lock_wait_timeout" in lock_fix.summary
        assert "init_command" not in lock_fix.config


def check_config_now(t: Any) -> list[Finding]:
    from celerydiag.config.probe import Facts, check_config

    return check_config(t, Facts((5, 7, 0), (2, 0, 0)))


def test_postgres_index_ddl_is_concurrent() -> None:
    """Point 4: a plain CREATE INDEX blocks writes to the task table while it builds."""
    from test_config_probe import PG, make_target

    fix = {f.id: f for f in check_config_now(make_target(backend=PG))}["config.db-date-done-index"].fix
    assert fix is not None and "CREATE INDEX CONCURRENTLY ix_celery_taskmeta_date_done" in fix.config


def test_redis_progress_fix_says_every_result_moves() -> None:
    fix = redis_progress_fix()
    assert "every result" in fix.summary and "let progress" not in fix.summary


def test_serializer_fixes_merge_and_the_pickle_fix_wins() -> None:
    """A serializer switch adds its content type to the same list the pickle fix sets; a
    pickle-family suggestion never undoes the security fix."""
    from celerydiag.serialization.harness import known_serializers

    specs = known_serializers()
    safe = parse("accept_content = ['json']\nresult_accept_content = ['json']\n")
    for name in ("msgpack", "orjson", "pickle5"):
        block = merge([safe, parse(specs[name].config())])
        assert not block.conflicts, (name, block.conflicts)
        accepted = block.settings["result_accept_content"]
        assert ("pickle5" not in accepted) and (name in accepted or name == "pickle5"), (name, accepted)
        # a pickle-family suggestion goes whole: serializer and content type (never one without the other)
        assert block.settings.get("result_serializer") == (None if name == "pickle5" else name)
        if name == "orjson":
            assert block.code and "register('orjson'" in block.code[0]
