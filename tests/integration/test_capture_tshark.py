"""Our TCP counts equal tshark's on every fixture capture (tshark is the reference, recomputed here),
and each fixture's scenario claims (missed heartbeats, zero window, ...) hold."""

from __future__ import annotations

import glob
import os
import sys

import pytest
import yaml

from celerydiag.network.capture import analyse, ports_for_target

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from tests.support import tshark  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "pcaps")
CASES = sorted(glob.glob(os.path.join(FIXTURES, "*.yml")))

pytestmark = [pytest.mark.integration, pytest.mark.capture]


def _load(case: str) -> tuple[dict, dict]:
    with open(case) as fh:
        spec = yaml.safe_load(fh)
    path = os.path.join(FIXTURES, spec["file"])
    report = analyse(path, ports=ports_for_target([], spec.get("ports") or [])).to_dict()
    return spec, report


@pytest.mark.parametrize("case", CASES, ids=[os.path.basename(c)[:-4] for c in CASES])
def test_counts_match_tshark(case: str) -> None:
    spec, report = _load(case)
    path = os.path.join(FIXTURES, spec["file"])
    reference = tshark.per_side(path, report["connections"])
    assert report["file"]["packets"] == spec["packets"]
    for conn in report["connections"]:
        ours = {name: conn["tcp"][name] for name in tshark.FILTERS}
        assert ours == reference[conn["stream"]], f"stream {conn['stream']} {conn['client']} -> {conn['server']}"
    recorded = {c["stream"]: c["tshark"] for c in spec["connections"]}
    assert recorded == reference, "the fixture's .yml no longer matches tshark on the file: regenerate it"


@pytest.mark.parametrize("case", CASES, ids=[os.path.basename(c)[:-4] for c in CASES])
def test_scenario_claims(case: str) -> None:
    spec, report = _load(case)
    expect = spec.get("expect") or {}
    conns = report["connections"]
    if "amqp" in expect:
        amqp = [c for c in conns if c["protocol"] == "amqp"]
        assert amqp, "no AMQP connection recognised"
        main = max(amqp, key=lambda c: c["packets"])["amqp"]
        for key, value in expect["amqp"].items():
            assert main[key] == value, (key, main)
    if "zero_window_episodes" in expect:
        episodes = [e for c in conns for e in c["tcp"]["zero_window_episodes"]]
        want = expect["zero_window_episodes"]
        if isinstance(want, dict):
            assert len(episodes) >= want["min"]
            assert {e["side"] for e in episodes} == {want["side"]}
        else:
            assert len(episodes) == want
    for fid in expect.get("findings", []):
        found = {f["id"]: f for f in report["findings"]}
        assert fid["id"] in found, sorted(found)
        assert found[fid["id"]]["severity"] in fid["severity"], found[fid["id"]]
    if "redis" in expect:
        redis = [c["redis"] for c in conns if c["protocol"] == "redis"]
        assert redis
        for key, value in expect["redis"].items():
            if key == "commands":
                seen = set().union(*(r["commands"] for r in redis))
                assert set(value) <= seen, seen
            elif key == "min_task_ids_polled":
                assert max(r["task_ids_polled"] for r in redis) >= value
            elif key == "min_pubsub_pushes":
                assert sum(r["pubsub_pushes"] for r in redis) >= value
    if "min_retransmissions" in expect:
        total = sum(c["tcp"]["retransmission"][s] for c in conns for s in ("client", "server"))
        assert total >= expect["min_retransmissions"]
