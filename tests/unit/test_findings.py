"""The types every probe produces and every renderer reads: thresholds, ranking, ids, JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celerydiag.findings import (
    REPORT_SCHEMA,
    Cause,
    Finding,
    Fix,
    ProbeResult,
    ProbeStatus,
    Report,
    Severity,
    delay,
)
from celerydiag.rank import rank, rated

REPORTS = Path(__file__).resolve().parents[1] / "fixtures" / "reports"


@pytest.mark.parametrize(
    ("impact_ms", "budget_ms", "expected"),
    [
        (0.0, 1000, Severity.INFO),
        (199.999, 1000, Severity.INFO),
        (200.0, 1000, Severity.WARNING),  # exactly 20 % of the budget
        (999.999, 1000, Severity.WARNING),
        (1000.0, 1000, Severity.CRITICAL),  # exactly the budget
        (5000.0, 1000, Severity.CRITICAL),
        (19.9, 100, Severity.INFO),
        (20.0, 100, Severity.WARNING),
        (100.0, 100, Severity.CRITICAL),
        (-5.0, 1000, Severity.INFO),  # a cause that saves time is never a problem
    ],
)
def test_severity_from_impact_uses_budget_and_twenty_percent(impact_ms, budget_ms, expected):
    assert Severity.from_impact(impact_ms, budget_ms) is expected


def test_measured_impact_is_never_ok_ok_is_only_for_passed_checks():
    assert all(Severity.from_impact(x, 1000) > Severity.OK for x in (0.0, 0.001, 1e9))


def test_rated_sets_severity_from_impact_and_budget():
    f = rated(delay("broker.publish-latency", Cause.BROKER, 250.0, "slow publish",
                    evidence={"p99_ms": 250.0}), 1000)
    assert (f.severity, f.impact_ms, f.title) == (Severity.WARNING, 250.0, "slow publish")
    assert rated(delay("broker.publish-latency", Cause.BROKER, 250.0, "x"), 200).severity is Severity.CRITICAL


def test_severity_strings_are_the_wire_values():
    assert [str(s) for s in Severity] == ["ok", "info", "warning", "critical"]
    assert all(Severity.parse(str(s)) is s for s in Severity)
    assert Severity.parse("WARNING") is Severity.WARNING


def test_rank_is_severity_then_impact_descending():
    findings = [
        Finding("a.info-big", Cause.BACKEND, Severity.INFO, "t", impact_ms=150.0),
        Finding("a.crit-small", Cause.BACKEND, Severity.CRITICAL, "t", impact_ms=1000.0),
        Finding("a.ok", Cause.CONFIG, Severity.OK, "t", impact_ms=0.0),
        Finding("a.warn-big", Cause.BACKEND, Severity.WARNING, "t", impact_ms=900.0),
        Finding("a.crit-big", Cause.BACKEND, Severity.CRITICAL, "t", impact_ms=4000.0),
        # a fixed-severity finding (security) outranks a bigger impact of lower severity
        Finding("a.warn-zero", Cause.CONFIG, Severity.WARNING, "t", impact_ms=0.0),
    ]
    assert [f.id for f in rank(findings, 1000)] == [
        "a.crit-big", "a.crit-small", "a.warn-big", "a.warn-zero", "a.info-big", "a.ok"]


finding_st = st.builds(
    Finding,
    id=st.from_regex(r"[a-z][a-z0-9-]{0,5}\.[a-z0-9][a-z0-9-]{0,5}", fullmatch=True),
    cause=st.sampled_from(Cause),
    severity=st.sampled_from(Severity),
    title=st.just("t"),
    impact_ms=st.floats(min_value=0, max_value=1e6, allow_nan=False),
)


@given(st.lists(finding_st, max_size=30))
def test_rank_is_ordered_and_independent_of_input_order(findings):
    ranked = rank(findings, 1000)
    keys = [(-f.severity, -f.impact_ms) for f in ranked]
    assert keys == sorted(keys)
    # ties on (severity, impact) break on the id, so the order does not depend on the input's
    assert [(f.severity, f.impact_ms, f.id) for f in rank(reversed(findings), 1000)] == \
        [(f.severity, f.impact_ms, f.id) for f in ranked]
    assert sorted(map(id, ranked)) == sorted(map(id, findings))


@pytest.mark.parametrize("good", ["backend.lock-wait", "e2e.visibility-poll", "config.pickle-accepted",
                                  "broker.p99", "a.b"])
def test_finding_id_accepts_probe_dot_kebab_slug(good):
    assert Finding(good, Cause.BACKEND, Severity.INFO, "t").id == good


@pytest.mark.parametrize("bad", ["backend", "backend.", ".lock", "Backend.lock-wait", "backend.Lock-wait",
                                 "backend.lock_wait", "backend.lock wait", "backend.lock.wait",
                                 "backend.-lock", "1backend.lock", "", "backend/lock"])
def test_finding_id_rejects_anything_else(bad):
    with pytest.raises(ValueError, match="kebab"):
        Finding(bad, Cause.BACKEND, Severity.INFO, "t")


def test_finding_round_trips_through_json():
    f = Finding("backend.lock-wait", Cause.BACKEND, Severity.CRITICAL, "waits", detail="d",
                impact_ms=1840.5,
                evidence={"waits_count": 3, "wait_ms": {"p50": 1.5, "p99": 1840.5}, "blocker": "pid 7"},
                fix=Fix("use READ COMMITTED", "database_engine_options = {'isolation_level': 'READ COMMITTED'}\n",
                        ("https://docs.celeryq.dev/",)))
    wire = json.loads(json.dumps(f.to_dict(), allow_nan=False))
    assert Finding.from_dict(wire) == f
    assert wire["severity"] == "critical" and wire["cause"] == "backend"
    assert wire["fix"]["docs"] == ["https://docs.celeryq.dev/"]


def test_finding_without_fix_serialises_fix_as_null():
    f = Finding("config.pickle-accepted", Cause.CONFIG, Severity.OK, "pickle is not accepted")
    assert f.to_dict()["fix"] is None
    assert Finding.from_dict(f.to_dict()) == f


def test_nan_and_infinity_never_reach_json():
    f = Finding("broker.x", Cause.BROKER, Severity.INFO, "t", impact_ms=math.nan,
                evidence={"p99_ms": math.nan, "max_ms": math.inf, "seq_ms": [1.0, -math.inf],
                          "nested_ms": {"p50": math.nan}})
    text = json.dumps(f.to_dict(), allow_nan=False)  # raises if any NaN/inf slipped through
    wire = json.loads(text)
    assert wire["impact_ms"] is None
    assert wire["evidence"] == {"p99_ms": None, "max_ms": None, "seq_ms": [1.0, None], "nested_ms": {"p50": None}}
    assert Finding.from_dict(wire).impact_ms == 0.0


def test_evidence_odd_types_become_json_values():
    from decimal import Decimal

    f = Finding("backend.x", Cause.BACKEND, Severity.INFO, "t",
                evidence={"size_bytes": Decimal("12"), "ids": ("a", "b"), "when": object.__new__(object)})
    wire = json.loads(json.dumps(f.to_dict(), allow_nan=False))
    assert wire["evidence"]["size_bytes"] == 12.0
    assert wire["evidence"]["ids"] == ["a", "b"]
    assert isinstance(wire["evidence"]["when"], str)


def _report() -> Report:
    crit = delay("backend.lock-wait", Cause.BACKEND, 1500.0, "locks", evidence={"max_wait_ms": 1500.0})
    warn = delay("broker.publish-latency", Cause.BROKER, 300.0, "publish")
    ok = Finding("config.pickle-accepted", Cause.CONFIG, Severity.OK, "fine")
    e2e = delay("e2e.visibility-poll", Cause.E2E, 1900.0, "seen late", evidence={"samples": 250})
    results = [
        ProbeResult("config", ProbeStatus.RAN, "", 0.01, (ok,)),
        ProbeResult("broker", ProbeStatus.RAN, "", 1.0, (warn,)),
        ProbeResult("backend", ProbeStatus.RAN, "", 2.0, (crit,)),
        ProbeResult.skipped("network", "no capture"),
        ProbeResult("e2e", ProbeStatus.RAN, "", 5.0, (e2e,), {"observed_p50_ms": 9.0, "observed_p99_ms": 1900.0}),
    ]
    target = {"broker": "amqp://u:**@h//", "backend": "redis://h/0", "source": "flags"}
    return Report.build(target, 1000.0, results, {"hostname": "h"}, "0.1.0")


def test_report_build_ranks_and_fills_the_latency_block():
    report = _report()
    assert [f.id for f in report.findings] == [
        "e2e.visibility-poll", "backend.lock-wait", "broker.publish-latency", "config.pickle-accepted"]
    assert report.worst() is Severity.CRITICAL
    # observed numbers from e2e; causes summed per cause, without e2e itself and without config/ok
    assert report.latency == {"observed_p50_ms": 9.0, "observed_p99_ms": 1900.0,
                              "by_cause_ms": {"backend": 1500.0, "broker": 300.0}}


def test_report_round_trips_through_json(check_report):
    report = _report()
    wire = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert wire["schema"] == REPORT_SCHEMA
    back = Report.from_dict(wire)
    assert back.to_dict() == report.to_dict()
    assert [p.status for p in back.probes] == [p.status for p in report.probes]


def test_report_without_findings_is_ok():
    report = Report.build({"broker": "memory://", "backend": "", "source": "embedded"}, 1000.0, [], {}, "0")
    assert report.worst() is Severity.OK
    assert report.latency == {"observed_p50_ms": None, "observed_p99_ms": None, "by_cause_ms": {}}


@pytest.mark.parametrize("schema", ["celerydiag.report/3", "celerydiag.capture/1", None])
def test_from_dict_refuses_other_schemas(schema):
    with pytest.raises(ValueError, match="celerydiag.report/1"):
        Report.from_dict({"schema": schema, "findings": []})


@pytest.mark.parametrize("path", sorted(REPORTS.glob("*-v1.json")), ids=lambda p: p.name)
def test_saved_v1_reports_load_forever(path, check_report):
    """pyperf's habit: documents written by 0.1 must keep loading and re-serialise unchanged.
    Since report/2 "unchanged" means: every v1 key keeps its value; the v2 document only adds
    what v1 did not say (kind, by_impact, at_least, a hazard's worst_case_ms, the report's
    ``unreachable`` sides) and may reorder findings by kind."""
    data = json.loads(path.read_text(encoding="utf-8"))
    check_report(data)
    report = Report.from_dict(data)
    again = report.to_dict()
    check_report(again)
    assert again["schema"] == REPORT_SCHEMA
    assert again["unreachable"] == data.get("unreachable", {})
    assert {k: v for k, v in again.items() if k not in ("schema", "findings", "unreachable")} == \
        {k: v for k, v in data.items() if k not in ("schema", "findings", "unreachable")}
    old = {f["id"] + repr(f["evidence"].get("host")): f for f in data["findings"]}
    new = {f["id"] + repr(f["evidence"].get("host")): f for f in again["findings"]}
    assert old.keys() == new.keys()
    for key, finding in old.items():
        wire = new[key]
        assert {k: wire[k] for k in finding if k != "evidence"} == {k: v for k, v in finding.items() if k != "evidence"}
        assert {k: wire["evidence"][k] for k in finding["evidence"]} == finding["evidence"]
        assert set(wire["evidence"]) - set(finding["evidence"]) <= {"worst_case_ms"}
    # and a v2 document re-serialises unchanged, byte for byte
    assert Report.from_dict(again).to_dict() == again


def test_canonical_report_covers_what_renderers_must_show():
    """Guard the fixture itself: the render tests are only as good as what it contains."""
    report = Report.from_dict(json.loads((REPORTS / "full-v1.json").read_text(encoding="utf-8")))
    assert {f.severity for f in report.findings} == set(Severity)
    assert {p.status for p in report.probes} == set(ProbeStatus)
    assert any(f.fix and f.fix.config and f.fix.docs for f in report.findings)


@pytest.mark.parametrize(
    ("evidence", "problems"),
    [
        ({"samples": 250, "p50_ms": 1.0, "p99_ms": 9.0}, []),
        ({"waits_count": 3, "miss_ratio": 0.1, "size_bytes": 10, "interval_s": 0.5}, []),
        ({"publish_ms": {"p50": 1.0, "p99": 2.0}}, []),  # Summary.short() under a unit key
        ({"blocker": "pid 7", "confirms": True, "host": "web-1"}, []),  # labels need no unit
        ({"waits": 3}, ["waits"]),
        ({"latency": {"p50": 1.0}}, ["latency.p50"]),
        ({"timings": [1.0, 2.0]}, ["timings"]),
    ],
)
def test_evidence_unit_checker(evidence, problems, evidence_unit_problems):
    assert evidence_unit_problems(evidence) == problems
