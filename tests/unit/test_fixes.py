"""Every fix the config probe can print is pasteable and works.

For each finding id the probe can emit at info or above, a config that triggers it; its
Fix.config must compile, assign only real Celery settings of the installed version, and, applied
to the same app the way a user pastes it into a celeryconfig, make that finding come back ok,
disappear, or have nothing left to paste. The list of ids comes from the probe's source, so a new
check without a case here fails this test."""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest
from celery.app.defaults import DEFAULTS, SETTING_KEYS
from kombu import Queue
from test_config_probe import MYSQL, PG, REDIS, SA2, make_target  # same directory (pytest rootdir imports)

from celerydiag.config import probe as config_probe
from celerydiag.config.probe import Facts, check_config
from celerydiag.findings import Finding, Severity
from celerydiag.rank import rated

NOW = (5, 7, 0)

# Settings the installed Celery reads with conf.get() but does not declare in app/defaults.py;
# each is checked below against the module that reads it.
READ_BY_CODE = {"redis_backend_health_check_interval": "celery.backends.redis"}

# slug -> (target settings, versions) that make it a problem with a fix
TRIGGERS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "db-isolation": ({"backend": MYSQL, "database_engine_options": {"pool_size": 5}}, {}),
    "db-autocommit": ({"backend": MYSQL, "database_engine_options": {"autocommit": True}}, {}),
    "db-nullpool-option-crash": ({"backend": PG, "database_engine_options": {"max_overflow": 3, "echo_pool": True}},
                                 {"celery": (5, 5, 3)}),
    "db-date-done-index": ({"backend": MYSQL, "database_table_names": {"task": "jobs", "group": "jobgroups"}},
                           {"celery": (5, 5, 3)}),
    "db-connection-per-read": ({"backend": PG}, {}),
    "redis-socket-timeout": ({}, {}),
    "always-retry": ({"backend": PG, "result_backend_always_retry": False}, {}),
    "rpc-confirm-publish": ({"backend": "rpc://", "broker_transport_options": {"confirm_publish": True}}, {}),
    "confirm-publish-ignored": ({"broker": REDIS, "broker_transport_options": {"confirm_publish": True,
                                                                               "visibility_timeout": 600}}, {}),
    "confirm-delivery-unknown": ({"broker_transport_options": {"confirm_delivery": True}}, {}),
    "publish-retry-keys": ({"broker_transport_options": {"max_retries": 3, "interval_start": 0.1,
                                                         "interval_step": 0.2}}, {}),
    "broker-heartbeat": ({"broker_heartbeat": 0}, {}),
    "broker-pool-limit": ({"broker_pool_limit": None}, {}),
    "track-started": ({"task_track_started": True}, {}),
    "result-extended": ({"result_extended": True}, {}),
    "result-backend-disabled": ({"backend": "disabled://"}, {}),
    "ignore-result": ({"task_ignore_result": True}, {}),
    "result-transport-visibility-timeout": ({"result_backend_transport_options": {"visibility_timeout": 60,
                                                                                  "global_keyprefix": "x"}}, {}),
    "pickle-accepted": ({"accept_content": ["pickle", "json"], "task_serializer": "pickle",
                         "result_accept_content": ["pickle"]}, {}),
    # issue 17: the checks for late or missing states and the network advice
    "task-events": ({}, {}),
    "db-engine-defaults": ({"backend": PG, "database_engine_options": {"pool_size": 5}}, {}),
    "prefetch": ({}, {}),
    "result-expires": ({"result_expires": None}, {}),
    "rpc-single-reader": ({"backend": "rpc://"}, {}),
    "redis-socket-keepalive": ({}, {}),
    "broker-failover": ({"broker": "amqp://guest@a//;amqp://guest@b//", "broker_failover_strategy": "round-robbin"},
                        {}),
    "queue-type": ({"task_queues": [Queue("ha", queue_arguments={"x-ha-policy": "all"})]}, {}),
    "amqp-keepalive": ({"broker_transport_options": {"socket_keepalive": True, "confirm_publish": True}}, {}),
}
# Extra triggers of the same ids through other branches (their fixes must work too).
MORE_TRIGGERS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("db-isolation", {"backend": MYSQL, "database_engine_options": {"isolation_level": "AUTOCOMMIT"}}, {}),
    ("broker-pool-limit", {"broker_pool_limit": 4, "worker_pool": "gevent", "worker_concurrency": 100}, {}),
    ("confirm-delivery-unknown", {"broker": REDIS, "broker_transport_options": {"confirm_delivery": True}}, {}),
    ("redis-socket-timeout", {"redis_socket_timeout": None}, {}),
    ("always-retry", {"result_backend_always_retry": True}, {}),
    ("result-expires", {"backend": PG, "result_expires": 0}, {}),
    ("broker-failover", {"broker_failover_strategy": "shuffle"}, {}),
    ("amqp-keepalive", {"broker_transport_options": {"socket_settings": {"TCP_KEEPIDLE": 30}}}, {}),
]


def _slugs_in_source() -> set[str]:
    """The slugs of every problem finding the probe can build (helpers _fixed/_cost/_hazard)."""
    source = inspect.getsource(config_probe)
    return set(re.findall(r"_(?:fixed|cost|hazard)\(\s*(?:facts,\s*)?\"([a-z0-9-]+)\"", source))


def _run(settings: dict[str, Any], versions: dict[str, Any]) -> dict[str, Finding]:
    facts = Facts(versions.get("celery", NOW), versions.get("sqlalchemy", SA2))
    return {f.id: rated(f, 1000.0) for f in check_config(make_target(**settings), facts)}  # rank decides


def _known_settings() -> set[str]:
    return {k.lower() for k in SETTING_KEYS} | {k.lower() for k in DEFAULTS}


def _executed(config: str) -> dict[str, Any]:
    compile(config, "<fix>", "exec")
    namespace: dict[str, Any] = {}
    exec(config, namespace)  # noqa: S102 (text the probe generated; the point is to run it)
    namespace.pop("__builtins__", None)
    return namespace


def test_every_problem_finding_has_a_trigger_here() -> None:
    slugs = _slugs_in_source()
    assert len(slugs) >= 15, slugs
    assert slugs == set(TRIGGERS), f"missing: {slugs - set(TRIGGERS)}, stale: {set(TRIGGERS) - slugs}"


def test_settings_read_by_code_exist_in_the_installed_celery() -> None:
    import importlib

    for name, module in READ_BY_CODE.items():
        assert name not in _known_settings(), f"{name} is declared now; drop it from READ_BY_CODE"
        assert f"'{name}'" in inspect.getsource(importlib.import_module(module)), (name, module)


CASES = [(slug, *TRIGGERS[slug]) for slug in sorted(TRIGGERS)] + MORE_TRIGGERS


@pytest.mark.parametrize(("slug", "settings", "versions"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_fix_is_pasteable_and_resolves_the_finding(slug: str, settings: dict[str, Any],
                                                   versions: dict[str, Any]) -> None:
    fid = f"config.{slug}"
    if slug == "db-engine-defaults" and not make_target().conf.database_engine_options:
        pytest.skip("this Celery (< 5.6.3) has no database_engine_options defaults a user's dict could drop")
    before = _run(settings, versions)
    assert fid in before and before[fid].severity > Severity.OK, f"trigger did not trigger {fid}"
    fix = before[fid].fix
    assert fix is not None and fix.summary and "\n" not in fix.summary
    assert fix.docs and all(d.startswith("https://") for d in fix.docs), fix.docs
    namespace = _executed(fix.config)
    unknown = {name for name in namespace if name not in _known_settings() and name not in READ_BY_CODE}
    assert not unknown, f"{fid} assigns names that are not Celery settings: {unknown}"
    assert all(name == name.lower() for name in namespace), namespace
    if not namespace:
        # Nothing to paste into a celeryconfig (an upgrade, DDL in comments, a per-task edit).
        assert all(not line.strip() or line.lstrip().startswith("#") for line in fix.config.splitlines())
        assert before[fid].severity < Severity.CRITICAL, f"{fid}: a critical needs a pasteable fix"
        return
    applied = dict(settings)
    if "result_backend" in namespace:
        applied["backend"] = namespace.pop("result_backend")
    applied.update(namespace)
    after = _run(applied, versions).get(fid)
    assert after is None or after.severity == Severity.OK or after.fix is None, (
        f"{fid} still asks for a fix after applying it: {after.severity} {after.title}\n{fix.config}")


def test_engine_option_fixes_never_contradict_each_other() -> None:
    """Every database_engine_options fix is the same dict, so pasting any two is safe."""
    found = _run({"backend": MYSQL, "database_engine_options": {"autocommit": True, "pool_size": 3}}, {})
    configs = {f.fix.config for f in found.values() if f.fix and "database_engine_options" in f.fix.config}
    assert len(configs) == 1 and len([f for f in found.values() if f.fix and f.fix.config in configs]) >= 3, configs


def test_index_ddl_uses_the_configured_table_names() -> None:
    found = _run(*TRIGGERS["db-date-done-index"])
    config = found["config.db-date-done-index"].fix.config
    assert "CREATE INDEX ix_jobs_date_done ON jobs (date_done);" in config
    assert "CREATE INDEX ix_jobgroups_date_done ON jobgroups (date_done);" in config
