"""The ranking stage (celerydiag/rank.py): each rule of design.md's "one number that joins them",
and what it makes possible: `report --budget-ms` re-rates a saved report, `report a a` counts once,
and a saved report/1 is read with kinds inferred."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from celerydiag.cli import main
from celerydiag.errors import ExitCode
from celerydiag.findings import (
    Cause,
    Finding,
    Kind,
    ProbeResult,
    ProbeStatus,
    Report,
    Severity,
    delay,
    hazard,
)
from celerydiag.rank import GIVEN, rank, rate

REPORTS = Path(__file__).resolve().parents[1] / "fixtures" / "reports"
OK, INFO, WARNING, CRITICAL = Severity.OK, Severity.INFO, Severity.WARNING, Severity.CRITICAL


def measured(ms: float, slug: str = "x", **kw) -> Finding:
    return delay(f"backend.{slug}", Cause.BACKEND, ms, f"{ms} ms", **kw)


@pytest.mark.parametrize(("impact_ms", "expected"), [(0.0, INFO), (19.9, INFO), (20.0, WARNING),
                                                     (99.9, WARNING), (100.0, CRITICAL), (150.0, CRITICAL)])
def test_a_delay_is_rated_by_its_impact_against_the_budget(impact_ms, expected):
    assert rate(measured(impact_ms), 100.0) is expected
    given = delay("polling.d", Cause.POLLING, impact_ms, "t", kind=Kind.MODELLED, evidence={"input": GIVEN})
    assert rate(given, 100.0) is expected


def test_a_measured_floor_raises_a_small_delay_but_never_lowers_a_big_one():
    assert rate(measured(1.0, at_least=WARNING), 1000) is WARNING
    assert rate(measured(5000.0, at_least=WARNING), 1000) is CRITICAL


def test_a_verdict_keeps_the_severity_its_check_gave():
    for severity in Severity:
        verdict = Finding("config.pickle-accepted", Cause.CONFIG, severity, "t", impact_ms=5000.0)
        assert rate(verdict, 1.0) is severity


def test_a_hazard_is_rated_by_its_worst_case_and_never_above_warning():
    stall = hazard("config.redis-socket-timeout", Cause.CONFIG, 120_000.0, "t")
    assert stall.impact_ms == 0 and stall.evidence["worst_case_ms"] == 120_000.0
    assert rate(stall, 1000) is WARNING  # 120 s is 120 budgets, but may never happen
    assert rate(stall, 1_000_000) is INFO  # under 20 % of a huge budget
    unbounded = hazard("config.broker-heartbeat", Cause.CONFIG, None, "t")
    assert rate(unbounded, 1000) is WARNING
    told = Finding("config.h", Cause.CONFIG, CRITICAL, "t", kind=Kind.HAZARD, evidence={"worst_case_ms": None})
    assert rate(told, 1000) is WARNING


def test_a_hazard_ranks_below_a_measured_info_delay_and_still_shows_its_severity():
    stall = hazard("config.redis-socket-timeout", Cause.CONFIG, 120_000.0, "t")
    small = measured(35.0, "read-latency")
    ranked = rank([stall, small], 1000)
    assert [f.id for f in ranked] == ["backend.read-latency", "config.redis-socket-timeout"]
    assert [f.severity for f in ranked] == [INFO, WARNING]


def test_an_assumed_model_is_at_most_info_and_ranks_below_a_measured_cause():
    """The 495 ms get() assumption once warned on every healthy database backend and outranked a
    measured 5.8 % retransmission: an assumed number informs, only a measured or given one warns."""
    assumed = delay("polling.detection-delay", Cause.POLLING, 4950.0, "t", kind=Kind.MODELLED)
    assert rate(assumed, 1000) is INFO
    seen = measured(150.0, "write-latency")
    assert [f.id for f in rank([assumed, seen], 1000)] == ["backend.write-latency", "polling.detection-delay"]
    given = delay("polling.detection-delay", Cause.POLLING, 4950.0, "t", kind=Kind.MODELLED,
                  evidence={"input": GIVEN})
    assert rate(given, 1000) is CRITICAL


def test_at_equal_severity_measured_ranks_above_modelled_whatever_the_impact():
    big_model = delay("polling.detection-delay", Cause.POLLING, 900.0, "t", kind=Kind.MODELLED,
                      evidence={"input": GIVEN})
    small_seen = measured(210.0, "write-latency")
    ranked = rank([big_model, small_seen], 1000)
    assert [f.id for f in ranked] == ["backend.write-latency", "polling.detection-delay"]
    assert {f.severity for f in ranked} == {WARNING}
    # severity still comes first: a critical model outranks a warning measurement
    worse = delay("polling.detection-delay", Cause.POLLING, 1900.0, "t", kind=Kind.MODELLED,
                  evidence={"input": GIVEN})
    assert rank([small_seen, worse], 1000)[0].id == "polling.detection-delay"


def test_order_is_severity_kind_impact_then_id():
    findings = [measured(300.0, "b"), measured(300.0, "a"), measured(900.0, "c"),
                delay("config.m", Cause.CONFIG, 950.0, "t", kind=Kind.MODELLED),
                Finding("config.ok", Cause.CONFIG, OK, "t")]
    ids = [f.id for f in rank(findings, 1000)]
    assert ids == ["backend.c", "backend.a", "backend.b", "config.m", "config.ok"]
    assert ids == [f.id for f in rank(reversed(findings), 1000)]


def test_the_guard_rates_what_a_probe_yields():
    """A ProbeResult never carries a placeholder severity: run_probe rates with the context's budget."""
    from celerydiag.probe import Probe, ProbeContext, run_probe
    from celerydiag.target import resolve_target

    class Slow(Probe):
        """A probe that measured one slow write."""

        name = "slow"
        cause = Cause.BACKEND

        def run(self, ctx):  # noqa: ANN001, ANN202
            yield measured(150.0)

    result = run_probe(Slow(), ProbeContext(target=resolve_target(broker="memory://", backend="rpc://"),
                                            budget_ms=100.0))
    assert [f.severity for f in result.findings] == [CRITICAL]


# ---- JSON: report/2 carries what re-rating needs; report/1 is read with kinds inferred -----------

def test_finding_json_says_its_kind_and_how_it_is_rated():
    wire = measured(12.0, at_least=WARNING).to_dict()
    assert (wire["kind"], wire["by_impact"], wire["at_least"]) == ("measured", True, "warning")
    stall = hazard("config.redis-socket-timeout", Cause.CONFIG, 50_000.0, "t")
    assert Finding.from_dict(json.loads(json.dumps(stall.to_dict()))) == stall


def test_v1_findings_get_their_kind_and_rating_inferred():
    budget = 1000.0
    v1 = [
        {"id": "backend.write-latency", "cause": "backend", "severity": "warning", "title": "t",
         "impact_ms": 310.0, "evidence": {}, "fix": None},  # follows the budget rule: rated
        {"id": "config.pickle-accepted", "cause": "config", "severity": "warning", "title": "t",
         "impact_ms": 0.0, "evidence": {}, "fix": None},  # a verdict
        {"id": "backend.row-contention", "cause": "backend", "severity": "warning", "title": "t",
         "impact_ms": 3.0, "evidence": {}, "fix": None},  # raised by hand in 0.1: keep it
        {"id": "config.redis-socket-timeout", "cause": "config", "severity": "warning", "title": "t",
         "impact_ms": 0.0, "evidence": {"worst_case_stall_s": 120.0}, "fix": None},
    ]
    write, pickle, contention, stall = (Finding.from_v1(d, budget) for d in v1)
    assert (write.kind, write.by_impact) == (Kind.MEASURED, True)
    assert (pickle.kind, pickle.by_impact) == (Kind.MEASURED, False)
    assert contention.by_impact is False and rate(contention, 100_000) is WARNING
    assert stall.kind is Kind.HAZARD and stall.evidence["worst_case_ms"] == 120_000.0
    assert stall.evidence["worst_case_stall_s"] == 120.0  # the v1 key stays


def test_v1_report_loads_as_v2_and_rerates():
    data = json.loads((REPORTS / "host-b-v1.json").read_text(encoding="utf-8"))
    report = Report.from_dict(data)
    write = next(f for f in report.findings if f.id == "backend.write-latency")
    assert write.severity is WARNING and write.by_impact  # 310 ms of 1000
    again = report.rerated(300.0)
    assert next(f for f in again.findings if f.id == "backend.write-latency").severity is CRITICAL
    assert again.budget_ms == 300.0 and again.latency["observed_p99_ms"] == report.latency["observed_p99_ms"]


# ---- the report command ---------------------------------------------------------------------------

def saved(tmp_path: Path, *findings: Finding, host: str = "web-1", budget_ms: float = 1000.0) -> Path:
    report = Report.build({"broker": "memory://", "backend": "", "source": "flags"}, budget_ms,
                          [ProbeResult("backend", ProbeStatus.RAN, "", 0.1, findings)],
                          {"hostname": host, "created": "2026-01-01T00:00:00+00:00", "python": "3",
                           "celery": "5", "kombu": "5"}, "0")
    path = tmp_path / f"{host}.json"
    path.write_text(json.dumps(report.to_dict()), encoding="utf-8")
    return path


def run_report(capsys, *args: str) -> tuple[int, dict]:
    code = main([*args, "--format", "json", "--fail-on", "never"])
    return code, json.loads(capsys.readouterr().out)


def test_report_budget_rerates_a_saved_report(capsys, tmp_path, check_report):
    path = saved(tmp_path, measured(150.0, "write-latency"))
    code, doc = run_report(capsys, "report", str(path))
    assert code == ExitCode.OK and doc["budget_ms"] == 1000.0
    assert doc["findings"][0]["severity"] == "info"  # kept its own budget
    _, doc = run_report(capsys, "report", "--budget-ms", "100", str(path))
    check_report(doc)
    assert doc["budget_ms"] == 100.0 and doc["findings"][0]["severity"] == "critical"


def test_report_budget_rerates_a_saved_v1_report(capsys):
    _, doc = run_report(capsys, "report", "--budget-ms", "300", str(REPORTS / "host-b-v1.json"))
    assert next(f for f in doc["findings"] if f["id"] == "backend.write-latency")["severity"] == "critical"
    assert next(f for f in doc["findings"] if f["id"] == "config.pickle-accepted")["severity"] == "ok"


def test_report_of_the_same_file_twice_does_not_double(capsys, tmp_path):
    path = saved(tmp_path, measured(150.0, "write-latency"), measured(10.0, "read-latency"))
    _, once = run_report(capsys, "report", str(path))
    _, twice = run_report(capsys, "report", str(path), str(path))
    assert twice["findings"] == once["findings"] and len(twice["findings"]) == 2
    full = str(REPORTS / "full-v1.json")
    _, doc = run_report(capsys, "report", full, full)
    assert len(doc["findings"]) == len(json.loads(Path(full).read_text())["findings"])


def test_report_of_two_hosts_keeps_both(capsys, tmp_path):
    a = saved(tmp_path, measured(150.0, "write-latency"), host="web-1")
    b = saved(tmp_path, measured(150.0, "write-latency"), host="web-2")
    _, doc = run_report(capsys, "report", str(a), str(b))
    assert sorted(f["evidence"]["host"] for f in doc["findings"]) == ["web-1", "web-2"]


def test_a_negligible_delay_is_ok_against_its_budget_and_rerates():
    small = measured(4.0, ok_below_ratio=0.01)
    assert rate(small, 1000) is OK  # under 1 % of 1000 ms: the probe calls that a passed check
    assert rate(small, 100) is INFO  # 4 % of 100 ms: worth a line
    assert rate(measured(4.0, ok_below_ratio=0.01, at_least=WARNING), 1000) is WARNING
