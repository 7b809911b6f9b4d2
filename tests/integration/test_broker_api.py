"""The broker probe with the real RabbitMQ management API (``--rabbitmq-api``): its facts reach the
findings (alarms, connection counts, the app's queue depth and rates), a real memory alarm is
reported from it, and its credentials never show: not on a 401, not in any CLI output.

The API is the ``rabbitmq_management`` plugin on 127.0.0.1:15672, which ``scripts/services.sh``
(``make services``/``make test``) enables. Override with CELERYDIAG_TEST_RABBITMQ_API.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

import pytest

from celerydiag.broker import api as broker_api
from celerydiag.findings import Severity
from celerydiag.target import redact_url, resolve_target
from tests.integration.test_broker_rabbitmq import findings, probe, wait_missing
from tests.support.rabbitmq import memory_alarm, node_name, rabbitmq_user, waiting_tasks

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]

API_URL = os.environ.get("CELERYDIAG_TEST_RABBITMQ_API", "http://guest:guest@127.0.0.1:15672")


@pytest.fixture(scope="module")
def api_url(amqp_url: str) -> str:
    try:
        broker_api.get(API_URL, "/api/overview", 2)
    except broker_api.ApiError as exc:
        pytest.fail(f"RabbitMQ management API at {redact_url(API_URL)} is not answering ({exc}). Enable it with "
                    "`make services` or `rabbitmq-plugins enable rabbitmq_management`, or point "
                    "CELERYDIAG_TEST_RABBITMQ_API at one.", pytrace=False)
    return API_URL


def api_queue(api_url: str, name: str, messages: int, within_s: float = 15) -> dict[str, Any]:
    """Wait until the API's statistics (emitted every 5 s) show the queue's depth and its consumer
    count: a queue declared moments ago can list its depth before its first statistics carry
    ``consumers`` (the probe then leaves that key out, rightly; the test wants it there)."""
    path = f"/api/queues/%2F/{name}"
    deadline = time.monotonic() + within_s
    data = broker_api.get(api_url, path, 3)
    while data.get("messages") != messages or data.get("consumers") is None:
        assert time.monotonic() < deadline, f"the API never showed {messages} messages in {name}: {data}"
        time.sleep(0.5)
        data = broker_api.get(api_url, path, 3)
    return data


def _api_lists_a_connection(api_url: str, within_s: float = 15) -> None:
    """The API lists a connection only once its statistics are emitted (every 5 s): wait for ours."""
    deadline = time.monotonic() + within_s
    while not broker_api.get(api_url, "/api/connections?columns=state", 3):
        assert time.monotonic() < deadline, "the API never listed our open connection"
        time.sleep(0.5)


def test_api_facts_reach_the_findings(amqp_url: str, api_url: str, scratch: str) -> None:
    """A queue of our own holding 7 tasks and no consumer: the API's depth, consumers and publish
    rate are in the management-api finding, next to the connection count and (no) alarms."""
    user_queue = f"{scratch}.tasks"
    with waiting_tasks(amqp_url, user_queue, 7):
        api_queue(api_url, user_queue, 7)
        _api_lists_a_connection(api_url)
        target = resolve_target(broker=amqp_url)
        target.conf.task_default_queue = user_queue
        found = findings(probe(target, scratch, samples=10, rabbitmq_api=api_url))
    api = found["broker.management-api"]
    assert api.severity == Severity.OK, api.detail
    seen = api.evidence["queues"][user_queue]
    assert seen["messages_count"] == 7 and seen["consumers_count"] == 0
    assert seen["publish_rate_per_s"] >= 0 and seen.get("deliver_rate_per_s", 0) == 0  # none ever delivered
    assert api.evidence["connections_count"] >= 1  # at least our setup connection, open for seconds
    assert api.evidence["alarms"] == [] and api.evidence["flow_connections_count"] >= 0
    blocked = found["broker.blocked"]
    assert blocked.severity == Severity.OK
    assert blocked.evidence["connections_count"] == api.evidence["connections_count"]
    backlog = found["broker.backlog"]
    assert backlog.severity == Severity.CRITICAL and user_queue in backlog.title
    assert backlog.evidence["queues"][user_queue]["messages_count"] == 7


def test_wrong_api_credentials_are_a_note_without_the_password(amqp_url: str, api_url: str, scratch: str) -> None:
    secret = f"wr0ng-{uuid.uuid4().hex[:8]}"
    found = findings(probe(resolve_target(broker=amqp_url), scratch, samples=10,
                           rabbitmq_api=f"http://guest:{secret}@127.0.0.1:15672"))
    api = found["broker.management-api"]
    assert api.severity == Severity.INFO
    assert "HTTP 401" in api.detail and "wrong user or password" in api.detail
    assert secret not in repr(api.to_dict())
    assert found["broker.publish-latency"].severity in (Severity.OK, Severity.INFO, Severity.WARNING)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_api_password_never_appears_in_cli_output(amqp_url: str, api_url: str, scratch: str, run_cli: Any,
                                                  fmt: str) -> None:
    """A monitoring user of our own, with a password no other output could contain by chance:
    read successfully, and with a wrong password and with a malformed URL, never printed."""
    password = f"pw-{uuid.uuid4().hex}"
    right = f"http://{scratch}:{password}@127.0.0.1:15672"
    wrong = f"http://{scratch}:{password}x@127.0.0.1:15672"
    malformed = f"http://{scratch}:{password}/x@127.0.0.1:15672"  # an unencoded / in the password
    with rabbitmq_user(scratch, password, tags="monitoring"):
        outputs = [run_cli("probe", "broker", "--broker", amqp_url, "--rabbitmq-api", url, "--samples", "10",
                           "--max-seconds", "10", "--format", fmt, "--fail-on", "never", timeout=120)
                   for url in (right, wrong, malformed)]
    for done in outputs:
        assert done.returncode == 0, done.stderr
        assert password not in done.stdout + done.stderr
    if fmt == "json":
        api = [{f["id"]: f for f in json.loads(done.stdout)["findings"]}["broker.management-api"]
               for done in outputs]
        assert [f["severity"] for f in api] == ["ok", "info", "info"]
        assert "HTTP 401" in api[1]["detail"] and "invalid port" in api[2]["detail"]


@pytest.mark.slow
def test_memory_alarm_is_reported_from_the_api(amqp_url: str, api_url: str, scratch: str) -> None:
    """A real memory alarm, a few seconds long: the API's live health check names it at once (its
    /api/nodes statistics would take up to 5 s more), and the blocked finding carries it."""
    node = node_name()
    with memory_alarm():
        live = broker_api.live_alarms(api_url, 3)  # the health check alone, before any statistics tick
        result = probe(resolve_target(broker=amqp_url), scratch, samples=10, timeout_s=1.5, rabbitmq_api=api_url)
    found = findings(result)
    alarm = f"memory alarm on {node}"
    assert live == [alarm]
    assert found["broker.management-api"].evidence["alarms"] == [alarm]
    blocked = found["broker.blocked"]
    assert blocked.severity == Severity.CRITICAL
    assert blocked.evidence["alarms"] == [alarm]
    assert "memory" in blocked.evidence["reason"]
    assert wait_missing(amqp_url, f"{scratch}.broker") == "missing"
