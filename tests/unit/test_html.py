"""The verdict every report opens with, evidence as named values with units, and the HTML page
without a browser: self-contained, one figure per chart the findings carry data for, the config
block, no secret; a missing matplotlib is one line with the install command (exit 2)."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest

from celerydiag.cli import main
from celerydiag.cli.bench_serialize import _default_vs_fastest, _skipped_payloads
from celerydiag.findings import Cause, Finding, Fix, ProbeResult, ProbeStatus, Report, Severity, delay
from celerydiag.measure import downsampled
from celerydiag.render.words import evidence_lines, ok_line, paste_block, verdict
from tests.unit.test_render import REPORTS, load, rendered


def report_of(*findings: Finding, **kw) -> Report:
    return Report.build({"broker": "amqp://h//", "backend": "redis://h/0", "source": "flags"}, 1000.0,
                        [ProbeResult("backend", ProbeStatus.RAN, "", 0.1, findings)], {}, "0", **kw)


# ---- the verdict -----------------------------------------------------------------------------------

def test_verdict_names_the_cause_its_milliseconds_the_budget_and_the_fix():
    fix = Fix("give Celery's connections a lock timeout", "database_engine_options = {}\n")
    report = report_of(delay("backend.lock-wait", Cause.BACKEND, 1500.0, "writes blocked", fix=fix))
    first, then = verdict(report)
    assert first.startswith("Verdict: the result backend makes states late by 1500.0 ms at P99, 150 % of the "
                            "1000 ms budget, over it (backend.lock-wait).")
    assert then == "Next: give Celery's connections a lock timeout (fix for backend.lock-wait below)."


def test_verdict_says_when_nothing_is_late_and_what_to_do_next():
    report = report_of(delay("backend.write-latency", Cause.BACKEND, 12.0, "fast writes"))
    first, then = verdict(report)
    assert first.startswith("Verdict: nothing makes states late against the 1000 ms budget; the largest single cost is "
                            "the result backend at 12.0 ms (1 % of it).")
    assert then == "Next: nothing to change."


def test_verdict_calls_info_fixes_optional_not_nothing():
    """The paste block still carries an info finding's fix: "nothing to change" would contradict it."""
    fix = Fix("enable publisher confirms", "broker_transport_options = {'confirm_publish': True}\n")
    report = report_of(delay("backend.write-latency", Cause.BACKEND, 12.0, "fast writes"),
                       delay("broker.confirm-publish", Cause.BROKER, 0.0, "confirms off", fix=fix))
    first, then = verdict(report)
    assert first.startswith("Verdict: nothing makes states late"), first
    assert then == "Next: nothing urgent; the paste block at the end hardens 1 info finding (optional).", then


def test_verdict_puts_an_unreachable_side_first():
    report = report_of(unreachable={"broker": "cannot connect to amqp://h//: refused"})
    assert verdict(report)[0].startswith("Verdict: the broker could not be reached")


@pytest.mark.parametrize("fmt", ["text", "markdown", "html"])
def test_every_text_report_opens_with_the_verdict(fmt):
    out = rendered(load("full-v2"), fmt)
    text = re.sub(r"<[^>]+>", "\n", out) if fmt == "html" else out
    lines = [x.strip("*# ") for x in text.splitlines() if x.strip("*# ")]
    if fmt == "html":
        lines = lines[lines.index("celerydiag report", 1) + 1:]  # after <title> and <h1>
    elif fmt == "markdown":
        lines = lines[1:]
    assert lines[0].startswith("Verdict: the result backend makes states late by 260.0 ms at P99"), lines[:3]


def test_text_folds_ok_rows_into_one_line_unless_verbose():
    report = load("full-v2")
    out = rendered(report, "text")
    assert "1 check ok: config.result-extended (--verbose lists them)." in " ".join(out.split())
    assert "state payloads carry only status" not in out
    assert "state payloads carry only status" in rendered(report, "text", verbose=True)
    assert ok_line(report_of()) is None


# ---- evidence as named values with units -------------------------------------------------------------

def test_evidence_is_named_values_with_units_never_a_dict():
    lines = evidence_lines({"p99_ms": 495.0, "miss_ratio": 0.0123, "rows_count": 3, "size_bytes": 2048,
                            "phases": {"one_row": {"writes_count": 60, "write_ms": {"p50": 1.5, "p99": 4.0}}},
                            "episodes": [{"waiter_id": "1", "wait_ms": 12.0}], "trusted": True,
                            "series": {"latencies_ms": [1.0, 2.0]}})
    assert lines == ["p99: 495.0 ms", "miss: 1.2 %", "rows: 3", "size: 2.0 KiB", "phases:", "  one row:",
                     "    writes: 60", "    write: p50 1.5 ms, p99 4.0 ms", "episodes 1: waiter id: 1; wait: 12.0 ms",
                     "trusted: yes"]
    assert not any("{" in x or "[" in x for x in lines)


def test_a_series_is_capped_and_keeps_its_extremes():
    values = [float(i) for i in range(10_000)]
    kept = downsampled(values)
    assert len(kept) == 2000 and kept[0] == 0.0 and kept[-1] == 9999.0 and kept == sorted(kept)


# ---- the config block ---------------------------------------------------------------------------------

def test_paste_block_holds_each_fix_config_once_under_its_finding():
    # issue 17: one merged block, each setting once (the views of it are in the findings' fixes)
    block = paste_block(load("full-v2"))
    assert block.count("database_engine_options = {") == 1
    assert block.count("accept_content = ['json']") == 1
    text = rendered(load("full-v2"), "text")
    assert text.index("Paste into your Celery config") > text.index("Probes:")


# ---- html ---------------------------------------------------------------------------------------------

def test_html_is_self_contained_with_a_figure_per_chart():
    page = rendered(load("charts-v2"), "html")
    assert page.startswith("<!DOCTYPE html>") and "Content-Security-Policy" in page
    assert "<script" not in page and "<link rel=\"stylesheet\"" not in page
    assert not re.search(r'(src|xlink:href)="https?:', page)  # only the docs are links, and only <a href>
    assert re.findall(r'data-chart="([a-z0-9-]+)"', page) == ["impact", "e2e-visibility", "lock-waits"]
    assert page.count("<svg") == 3
    ids = re.findall(r' id="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # several inline SVGs never share an id
    assert "Paste into your Celery config" in page and "lock_timeout=500" in page


def test_html_of_a_report_without_series_draws_what_it_can():
    page = rendered(load("full-v1"), "html")
    assert re.findall(r'data-chart="([a-z0-9-]+)"', page) == ["impact"]
    assert "e2e.visibility-poll" in page


def test_html_escapes_what_the_report_says():
    f = Finding("backend.x", Cause.BACKEND, Severity.WARNING, "<img src=x onerror=alert(1)>",
                detail="a & b")
    page = rendered(report_of(f), "html")
    assert "<img src=x" not in page and "&lt;img src=x" in page and "a &amp; b" in page


def test_html_without_matplotlib_is_one_line_with_the_install_command(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    out = tmp_path / "r.html"
    code = main(["report", str(REPORTS / "full-v2.json"), "--format", "html", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "--format html needs matplotlib" in err and "pip install 'celerydiag[html]'" in err
    capsys.readouterr()
    assert main(["report", str(REPORTS / "full-v2.json"), "--fail-on", "never"]) == 0  # text never needs it
    assert capsys.readouterr().out.startswith("Verdict:")


def test_report_verbose_lists_the_ok_rows(capsys):
    main(["report", str(REPORTS / "full-v2.json"), "--verbose", "--fail-on", "never"])
    assert "state payloads carry only status" in capsys.readouterr().out


def test_capture_series_reach_the_json_and_the_timeline(capsys):
    from celerydiag.network.capture import analyse
    from celerydiag.network.capture.render import render_html

    pcap = Path(__file__).resolve().parents[2] / "fixtures" / "pcaps" / "amqp_missed_heartbeat.pcap"
    report = analyse(str(pcap))
    conn = report.to_dict()["connections"][0]
    assert conn["amqp"]["heartbeat_ts_s"]["client"] or conn["amqp"]["heartbeat_ts_s"]["server"]
    assert conn["tcp"]["reset_ts_s"]["server"] is not None
    assert conn["amqp"]["silence_s"]["client"][1] == pytest.approx(conn["amqp"]["max_silence_s"]["client"])
    stream = io.StringIO()
    render_html(report, stream)
    assert re.findall(r'data-chart="([a-z0-9-]+)"', stream.getvalue())[0] == "capture-timeline"


# ---- bench-serialize ------------------------------------------------------------------------------------

def _row(payload, serializer, error=None, update_ms=None):
    return {"payload": payload, "serializer": serializer, "error": error, "update_ms": update_ms,
            "encode_ms": None, "decode_ms": None, "size_bytes": None, "peak_memory_bytes": None, "note": None}


def test_bench_numpy_missing_is_one_skipped_payload_not_an_error_per_serializer():
    why = "numpy is not installed: pip install numpy"
    rows = [_row("ndarray-1mb", s, why) for s in ("json", "pickle")] + [_row("progress-meta", "json", None, 0.1)]
    assert _skipped_payloads(rows) == {"ndarray-1mb": why}
    assert _default_vs_fastest({"results": rows}, "json") is None


def test_bench_numpy_rows_compare_the_default_with_the_fastest():
    from rich.console import Console

    rows = [_row("ndarray-1mb", "json", "EncodeError: Object of type ndarray is not JSON serializable"),
            _row("ndarray-1mb", "pickle5", None, 37.4), _row("ndarray-1mb", "orjson", None, 114.5),
            _row("ndarray-10mb", "json", None, 900.0), _row("ndarray-10mb", "pickle5", None, 300.0)]
    console = Console(file=io.StringIO(), width=150)
    console.print(_default_vs_fastest({"results": rows}, "json"))
    out = console.file.getvalue()
    assert "cannot encode it (EncodeError)" in out and "pickle5" in out and "x3.0" in out


def test_bench_advice_skips_a_payload_numpy_could_not_build():
    """No NumPy: the array payloads are skipped, not 'heavy', so no serializer is suggested for them."""
    from celerydiag.serialization.harness import NUMPY_MISSING, CaseResult, backend_model, recommend

    results = [CaseResult("ndarray-1mb", s, error=NUMPY_MISSING) for s in ("json", "pickle5")]
    lines, suggested = recommend(results, backend_model("redis"))
    assert lines[1] == f"ndarray-1mb: skipped ({NUMPY_MISSING})" and suggested == []
    assert lines[0].startswith("json is fine for these payloads")
