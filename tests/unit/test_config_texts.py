"""Issue 17, points 1-6: the printed texts say what the installed Celery 5.7 / kombu / py-amqp do
(fixes-audit-5.7.md). Each assertion fails on the text the audit found wrong."""

from __future__ import annotations

import inspect

import pytest
from test_config_probe import AMQP, MYSQL, PG, REDIS, findings, make_target

from celerydiag.broker import probe as broker_probe
from celerydiag.findings import Severity


@pytest.mark.parametrize("backend,options", [
    (PG, {}),
    (MYSQL, {"database_engine_options": {"pool_pre_ping": True, "pool_recycle": 3600,
                                         "isolation_level": "READ COMMITTED"}}),
    (REDIS, {}),
])
def test_healthy_baselines_have_no_config_warning(backend: str, options: dict) -> None:
    """A check on a default setting that is fine is info, never a warning."""
    found = findings(make_target(backend=backend, **options))
    loud = {fid: f.title for fid, f in found.items() if f.severity >= Severity.WARNING}
    assert not loud, loud


def test_redis_timeout_fix_pairs_retries_and_says_what_the_task_sees() -> None:
    f = findings(make_target())["config.redis-socket-timeout"]
    assert f.severity == Severity.INFO  # Celery's default: was a warning on every Redis backend
    assert "blocks up to 120 s before Celery reconnects" not in f.detail
    assert "raises redis TimeoutError" in f.detail and "BackendStoreError" in f.detail
    assert f.fix is not None
    assert "result_backend_always_retry = True" in f.fix.config
    assert "result_backend_max_retries = 3" in f.fix.config
    assert f.evidence["worst_case_with_fix_s"] == 20.0


def test_heartbeat_texts_are_right_for_py_amqp() -> None:
    source = inspect.getsource(broker_probe)
    assert "the solo and threads pools send none" not in source
    assert "TCP keepalive (hours)" not in source
    f = findings(make_target(broker_heartbeat=0))["config.broker-heartbeat"]
    assert "until TCP gives up" not in f.detail and "150 s" in f.detail
    assert f.evidence["worst_case_ms"] == 150_000
    ok = findings(make_target())["config.broker-heartbeat"]
    assert "cannot raise" in ok.detail  # min(server, client): amqp/connection.py


def test_confirms_ok_text_matches_the_broker_probe() -> None:
    f = findings(make_target(broker_transport_options={"confirm_publish": True}))["config.rpc-confirm-publish"]
    assert "slow task dispatch" not in f.detail and "delivered as fast" in f.detail


def test_disabled_backend_text_names_attribute_error() -> None:
    f = findings(make_target(backend="disabled://"))["config.result-backend-disabled"]
    assert "AttributeError" in f.detail and "AsyncResult.state raises NotImplementedError" not in f.detail


def test_pickle_text_on_database_backends_names_the_fallback() -> None:
    f = findings(make_target(backend=PG, accept_content=["json"]))["config.pickle-accepted"]
    assert f.severity == Severity.INFO and "pickle.loads()" in f.detail
    redis = findings(make_target(accept_content=["json"]))["config.pickle-accepted"]
    assert redis.severity == Severity.OK


def test_result_extended_counts_seven_columns_and_transport_keys_are_complete() -> None:
    from celery.backends.database.models import TaskExtended

    from celerydiag.compat import celery_version

    extra = inspect.getsource(TaskExtended).count("sa.Column(")  # extend_existing: one shared table
    f = findings(make_target(result_extended=True), celery=celery_version())["config.result-extended"]
    # the installed Celery's count: 'stamps' is the seventh from 5.7 (make test-matrix runs 5.3..5.7)
    assert f"{ {6: 'six', 7: 'seven'}[extra]} extra" in f.detail, (extra, f.detail)
    v = findings(make_target(result_backend_transport_options={"visibility_timeout": 1}))
    assert "additional_connection_errors" in v["config.result-transport-visibility-timeout"].detail


def test_lock_fix_texts_say_the_trade() -> None:
    from test_backend_fixes import target

    from celerydiag.backend.probe import engine_fix

    for dialect in ("postgresql", "mysql"):
        fix = engine_fix(dialect, target("db+sqlite:///x.db"))
        assert fix is not None
        assert "BackendStoreError" in fix.summary and "the task fails" in fix.summary
        assert "result_backend_max_retries = 3" in fix.config


def test_amqp_broker_is_the_default_target_here() -> None:
    assert AMQP.startswith("amqp://")
