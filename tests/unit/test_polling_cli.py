"""`celerydiag poll-model` end to end (the real console script), the plot writers, and the static
polling probe inside `doctor --static`. No services: the model and the probe need none."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from celerydiag.polling import model as polling
from celerydiag.polling.probe import PollingProbe
from celerydiag.probe import ProbeContext, ProbeOptions, run_probe
from celerydiag.render import charts, terminal
from celerydiag.target import resolve_target

REPO = Path(__file__).resolve().parents[2]
OBSERVED = REPO / "fixtures/polling/observed_durations.txt"
STRATEGY_KEYS = {"name", "delay_ms", "p_delay_over_threshold", "p_miss_transient", "requests_per_task"}


def test_issue_example_json(run_cli) -> None:
    proc = run_cli("poll-model", "--interval", "5s", "--strategy", "fixed", "--threshold", "135ms",
                   "--durations", "exp:2s", "--format", "json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "celerydiag.poll-model/1"
    [fixed] = doc["strategies"]
    assert STRATEGY_KEYS <= set(fixed)
    assert set(fixed["delay_ms"]) >= {"mean", "p50", "p95", "p99"}
    assert fixed["name"] == "fixed:5s"
    assert fixed["delay_ms"] == {"mean": 2500.0, "p50": 2500.0, "p95": 4750.0, "p99": 4950.0}
    assert fixed["p_delay_over_threshold"] == pytest.approx(0.973)
    assert fixed["p_miss_transient"] == pytest.approx(0.632834, abs=1e-6)
    assert fixed["requests_per_task"] == pytest.approx(20 / 5 + 1)  # 10 states x 2 s, one read per 5 s, +1
    assert doc["claim"]["threshold_ms"] == pytest.approx(135.0)
    assert doc["claim"]["mean_delay_ms"] == pytest.approx(2500.0)


def test_text_shows_table_chart_claim_and_recommendation(run_cli, tmp_path: Path) -> None:
    png = tmp_path / "cdf.png"
    proc = run_cli("poll-model", "--durations", str(OBSERVED), "--clients", "200", "--target-delay", "1s",
                   "--request-budget", "100", "--plot", str(png), timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for name in ("fixed:5s", "jitter:5s,20%", "backoff:500ms,2,5s", "smart:5s", "push"):
        assert name in out
    assert "135ms" in out and "mean delay is 2.5s" in out  # the 97.3 % claim, automatic at 5 s
    assert "No fixed interval meets both" in out  # 200 clients at ~1 s is 200 req/s > 100
    first = out.splitlines()[0]  # issue 15: the answer first, the same recommendation as at the end
    assert first.startswith("Verdict: No fixed interval meets both"), first
    assert "█" in out  # the terminal chart
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "Traceback" not in proc.stderr


def test_several_strategies_and_output_file(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "model.json"
    proc = run_cli("poll-model", "-s", "fixed:1s", "-s", "backoff:0.2s,2,2s", "-s", "smart", "--interval", "2s",
                   "--format", "json", "--output", str(out), "--seed", "7", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    doc = json.loads(out.read_text())
    assert [s["name"] for s in doc["strategies"]] == ["fixed:1s", "backoff:200ms,2,2s", "smart:2s"]
    assert doc["claim"] is None
    backoff = doc["strategies"][1]
    assert backoff["method"] == "monte-carlo"
    low, high = backoff["ci95"]["p_miss_transient"]
    assert low <= backoff["p_miss_transient"] <= high
    again = run_cli("poll-model", "-s", "fixed:1s", "-s", "backoff:0.2s,2,2s", "-s", "smart", "--interval", "2s",
                    "--format", "json", "--seed", "7", timeout=60)
    assert json.loads(again.stdout)["strategies"] == doc["strategies"]  # same seed, same numbers


@pytest.mark.parametrize(("args", "expected"), [
    (["--interval", "0"], "--interval: expected an interval between 1ms and 1h, got 0s"),
    (["--interval", "-5s"], "--interval: expected a duration like 5s"),
    (["--interval", "3d"], "--interval: expected a duration like 5s"),
    (["--interval", "2h"], "expected an interval between 1ms and 1h"),
    (["--strategy", "wobble"], "unknown strategy 'wobble'; expected fixed"),
    (["--durations", "exp:"], "--durations: expected exp:MEAN"),
    (["--durations", "weibull:2s"], "--durations: expected exp:MEAN"),
    (["--threshold", "soon"], "--threshold: expected a duration like 5s"),
])
def test_bad_input_is_one_line_exit_2(run_cli, args: list[str], expected: str) -> None:
    proc = run_cli("poll-model", *args, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_malformed_durations_file(run_cli, tmp_path: Path) -> None:
    bad = tmp_path / "durations.txt"
    bad.write_text("0.5\n0.7 s\n")
    proc = run_cli("poll-model", "--durations", str(bad), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"celerydiag: error: --durations {bad}:2: expected one duration in seconds "
                                   "per line (e.g. 0.25), got '0.7 s'")


def test_help_explains_every_option(run_cli) -> None:
    proc = run_cli("poll-model", "--help", timeout=60)
    assert proc.returncode == 0
    for option in ("--interval", "--strategy", "--threshold", "--durations", "--states", "--queue-wait",
                   "--read-latency", "--clients", "--target-delay", "--request-budget", "--plot", "--format",
                   "--output", "--explain-claim", "--seed", "--tasks"):
        assert option in proc.stdout
    assert "smart[:START]" in proc.stdout and "x0.8" in proc.stdout


# ---- plot ---------------------------------------------------------------------------------------


def _png_chunks(data: bytes) -> dict[bytes, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    return chunks


def test_png_is_valid_and_draws_each_curve_in_its_colour() -> None:
    """--plot goes through matplotlib (the hand-written encoder is retired): a valid PNG whose
    pixels hold the first two curves' colours."""
    curves = [("fixed:1s", [(float(x), x / 1000) for x in range(0, 1001, 10)]),
              ("push", [(0.0, 1.0)])]
    data = charts.cdf_png(curves, x_max_ms=1000)
    chunks = _png_chunks(data)
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (width, height, depth) == (750, 360, 8) and colour in (2, 6)
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(chunks[b"IDAT"])
    assert len(raw) == height * (1 + channels * width)
    # PNG filters its rows: read the pixels back through matplotlib's own PNG reader
    import io

    from matplotlib.image import imread

    image = imread(io.BytesIO(data), format="png")
    pixels = {tuple(round(float(c) * 255) for c in p[:3]) for row in image for p in row}
    for hex_colour in charts.COLORS[:2]:
        assert tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)) in pixels


def test_terminal_chart_rows() -> None:
    chart = terminal.terminal_chart([("a", [(0.0, 0.0), (50.0, 0.5), (100.0, 1.0)]), ("push", [(0.0, 1.0)])],
                                width=10, x_max_ms=100)
    lines = chart.splitlines()
    assert lines[0].startswith("   a |") and lines[0].endswith("█|")
    assert lines[1] == "push |██████████|"
    assert "100ms" in lines[2]


# ---- the probe (static: no network) ------------------------------------------------------------


def _probe(backend: str, tmp_path: Path, **options) -> list:
    target = resolve_target(broker="memory://", backend=backend)
    # static: a unit test counts no real backend's reads (tests/integration/test_polling_measured.py does)
    result = run_probe(PollingProbe(), ProbeContext(target=target, budget_ms=1000, options=ProbeOptions(**options),
                                                    static=True))
    assert str(result.status) == "ran", result.reason
    return list(result.findings)


def test_probe_models_get_on_sync_backends(tmp_path: Path) -> None:
    [f] = _probe(f"db+sqlite:///{tmp_path}/r.db", tmp_path)
    assert f.id == "polling.detection-delay"
    assert f.impact_ms == pytest.approx(495.0)  # get(interval=0.5): P99 = 0.99 x 500 ms
    assert str(f.severity) == "info" and str(f.kind) == "modelled"  # assumed: never a warning
    assert "Assumption" in f.detail
    compile(f.fix.config, "<fix>", "exec")
    assert "result_backend" in f.fix.config


def test_probe_says_redis_get_is_push_and_the_page_is_unknown(tmp_path: Path) -> None:
    [f] = _probe("redis://127.0.0.1:6379/15", tmp_path)
    assert f.id == "polling.client-model" and str(f.severity) == "info" and f.impact_ms == 0
    assert "--poll-interval" in f.detail


def test_probe_ranks_a_slow_page_as_critical(tmp_path: Path, evidence_unit_problems) -> None:
    findings = {f.id: f for f in _probe("redis://127.0.0.1:6379/15", tmp_path, poll_interval=5.0)}
    delay = findings["polling.detection-delay"]
    assert delay.impact_ms == pytest.approx(4950.0) and str(delay.severity) == "critical"
    assert delay.evidence["miss_1s_state_ratio"] == pytest.approx(0.8)
    assert not evidence_unit_problems(delay.evidence)
    assert "on_message" in delay.fix.summary
    assert "get_task_meta" in findings["polling.client-reads"].detail


def test_probe_push_on_a_sync_backend_is_not_available(tmp_path: Path) -> None:
    [f] = _probe(f"db+sqlite:///{tmp_path}/r.db", tmp_path, poll_strategy="push")
    assert "push is not available" in f.title and f.impact_ms == pytest.approx(495.0)


def test_probe_rpc_pollers_in_other_processes(tmp_path: Path) -> None:
    ids = {f.id for f in _probe("rpc://", tmp_path, poll_interval=1.0, poll_strategy="backoff")}
    assert {"polling.detection-delay", "polling.rpc-other-process", "polling.client-reads"} <= ids


def test_doctor_static_ranks_polling(run_cli, tmp_path: Path, check_report) -> None:
    proc = run_cli("doctor", "--static", "--broker", "memory://", "--backend", f"db+sqlite:///{tmp_path}/r.db",
                   "--poll-interval", "2", "--format", "json", timeout=120)
    assert proc.returncode == 1, proc.stderr  # 1980 ms >= the 1000 ms budget: critical
    doc = json.loads(proc.stdout)
    check_report(doc)
    polling_probe = [p for p in doc["probes"] if p["name"] == "polling"]
    assert polling_probe and polling_probe[0]["status"] == "ran"
    delay = next(f for f in doc["findings"] if f["id"] == "polling.detection-delay")
    assert delay["impact_ms"] == pytest.approx(1980.0) and delay["severity"] == "critical"
    assert doc["latency"]["by_cause_ms"]["polling"] == pytest.approx(1980.0)


def test_fixed_durations_helper_label() -> None:
    assert polling.fixed_durations(0.3).label == "fixed:300ms"


def test_the_97_percent_claim_is_explained_only_for_a_5s_fixed_poll():
    import contextlib
    import io

    from celerydiag.cli import main

    for args, expected in ((["-s", "fixed:1s"], False), (["--interval", "5s", "-s", "fixed"], True),
                           (["-s", "push"], False)):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            main(["poll-model", "--format", "json", *args])
        assert (json.loads(out.getvalue())["claim"] is not None) is expected, args
