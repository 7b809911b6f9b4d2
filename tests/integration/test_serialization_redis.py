"""The serialization probe and `bench-serialize --from-backend` against real metas that Celery
itself stored in the local Redis (db 15), under this test's own key prefix / task ids, which are
forgotten afterwards and checked to be gone."""

from __future__ import annotations

import json
import os
import random
import sys

import pytest

from celerydiag.probe import ProbeContext, run_probe
from celerydiag.serialization.probe import SerializationProbe
from celerydiag.target import resolve_target

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from tests.conftest import check_finding_document  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def _meta(floats: int) -> dict:
    rng = random.Random(floats)
    return {"current": floats, "total": floats, "values": [rng.random() for _ in range(floats)]}


@pytest.fixture
def target(redis_url: str, scratch: str):  # noqa: ANN201
    """A target whose keys all start with ``scratch`` (global_keyprefix), so the probe sees only
    what this test stored, and a leak check that nothing under it survives."""
    target = resolve_target(broker="memory://", backend=redis_url)
    target.conf.result_backend_transport_options = {"global_keyprefix": scratch}
    backend = target.app.backend
    yield target
    client = backend.client
    for key in client.scan_iter(match=f"{scratch}*", count=500):
        client.delete(key)
    assert not list(client.scan_iter(match=f"{scratch}*", count=500)), "keys leaked"


def test_probe_reads_real_stored_metas_and_measures_the_largest(target, scratch: str) -> None:  # noqa: ANN001
    backend = target.app.backend
    ids = {f"{scratch}-{n}": n for n in (10, 500, 10_000)}
    for task_id, floats in ids.items():
        backend.store_result(task_id, _meta(floats), "PROGRESS")
    largest = backend.client.strlen(backend.get_key_for_task(f"{scratch}-10000"))
    assert largest > 150_000

    result = run_probe(SerializationProbe(), ProbeContext(target=target, budget_ms=1000))

    assert str(result.status) == "ran", result.reason
    assert result.elapsed_s < 10
    (finding,) = result.findings
    check_finding_document(finding.to_dict())
    assert finding.id == "serialization.stored-meta"
    ev = finding.evidence
    assert ev["metas_count"] == 3
    assert ev["max_bytes"] == largest
    assert ev["measured_bytes"] == largest  # re-encoding the decoded meta gives Celery's bytes back
    assert ev["wire_bytes"] == 4 * largest  # GET old + SETEX + PUBLISH + client read
    assert ev["encode_ms"] > 0 and ev["decode_ms"] > 0
    assert finding.impact_ms == pytest.approx(ev["update_ms"])
    assert f"{scratch}-10000" in finding.detail
    assert finding.fix is not None and "update_state" in finding.fix.config  # ~200 KB of floats
    compile(finding.fix.config, "<fix>", "exec")
    for task_id in ids:
        backend.forget(task_id)


def test_probe_never_decodes_what_the_clients_would_refuse(redis_url: str, target, scratch: str) -> None:  # noqa: ANN001
    """A pickle-encoded meta under a json-only config is skipped, not unpickled: Celery's decode
    reads the bytes as the configured result_serializer (json) and fails."""
    writer = resolve_target(broker="memory://", backend=redis_url)
    writer.conf.result_backend_transport_options = {"global_keyprefix": scratch}
    writer.conf.result_serializer = "pickle"
    writer.conf.result_accept_content = ["pickle"]
    writer.app.backend.store_result(f"{scratch}-pickled", {"current": 1}, "PROGRESS")

    result = run_probe(SerializationProbe(), ProbeContext(target=target, budget_ms=1000))

    (finding,) = result.findings
    assert finding.id == "serialization.standard-meta"  # fell back: nothing usable was stored
    assert "DecodeError" in finding.detail and f"{scratch}-pickled" in finding.detail
    writer.app.backend.forget(f"{scratch}-pickled")


def test_bench_from_backend_times_the_real_stored_meta(run_cli, redis_url: str, scratch: str) -> None:  # noqa: ANN001
    target = resolve_target(broker="memory://", backend=redis_url)
    backend = target.app.backend
    task_id = f"{scratch}-bench"
    backend.store_result(task_id, _meta(2_000), "PROGRESS")
    try:
        stored = backend.client.strlen(backend.get_key_for_task(task_id))
        proc = run_cli("bench-serialize", "--backend", redis_url, "--from-backend", task_id, "--quick",
                       "-s", "json", "-s", "msgpack", "--format", "json", timeout=90)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        rows = {r["serializer"]: r for r in doc["results"]}
        assert set(rows) == {"json", "msgpack"}
        assert rows["json"]["payload"] == f"backend:{task_id}"
        assert rows["json"]["size_bytes"] == stored
        assert rows["msgpack"]["size_bytes"] < stored  # binary floats beat their decimal text
        assert doc["backend_model"]["backend"] == "redis"

        missing = run_cli("bench-serialize", "--backend", redis_url, "--from-backend", f"{scratch}-none",
                          timeout=60)
        assert missing.returncode == 2 and "no stored state" in missing.stderr
    finally:
        backend.forget(task_id)
    assert not backend.client.exists(backend.get_key_for_task(task_id))


def test_an_undecodable_largest_meta_gives_way_to_the_next_ones(target, scratch: str) -> None:  # noqa: ANN001
    """After a result_serializer change the old metas no longer decode with the new one: the
    probe must measure the metas it can read, not fall back to standard payloads."""
    from celery import Celery

    backend = target.app.backend
    old_writer = Celery("old", broker="memory://", backend=target.backend_url, set_as_current=False)
    old_writer.conf.result_backend_transport_options = {"global_keyprefix": scratch}
    old_writer.conf.result_serializer = "msgpack"
    old_writer.conf.accept_content = ["msgpack"]
    for name, n in (("old", 20_000), ("older", 15_000)):  # the largest and the median: msgpack
        old_writer.backend.store_result(f"{scratch}-{name}", _meta(n), "PROGRESS")
    for n in (10, 5_000):
        backend.store_result(f"{scratch}-{n}", _meta(n), "PROGRESS")  # json, readable

    result = run_probe(SerializationProbe(), ProbeContext(target=target, budget_ms=1000))

    (finding,) = result.findings
    assert finding.id == "serialization.stored-meta", finding
    assert finding.evidence["metas_count"] == 4
    assert finding.evidence["measured_bytes"] == backend.client.strlen(backend.get_key_for_task(f"{scratch}-5000"))
    assert f"{scratch}-5000" in finding.detail and f"{scratch}-old" in finding.detail  # measured / not used
    for task_id in (f"{scratch}-old", f"{scratch}-older", f"{scratch}-10", f"{scratch}-5000"):
        backend.forget(task_id)
    old_writer.close()


def test_reading_a_meta_leaves_the_users_backend_untouched(target, scratch: str) -> None:  # noqa: ANN001
    """bench-serialize --from-backend reads through an app of our own with our timeouts: the
    user's backend keeps its own socket settings (the old code overwrote them), and the read
    still goes through the user's global_keyprefix."""
    from celerydiag.serialization.stored import read_task_meta

    backend = target.app.backend
    before = dict(backend.connparams)
    backend.store_result(f"{scratch}-one", _meta(10), "PROGRESS")

    payload = read_task_meta(target, f"{scratch}-one", timeout_s=0.5, max_bytes=1 << 20)

    assert payload.stored["status"] == "PROGRESS" and payload.stored["result"]["current"] == 10
    assert backend.connparams == before
