"""`celerydiag bench-serialize` end to end in a subprocess: the JSON contract, --compare, and
every bad input giving one line and exit 2 (no traceback). No services needed."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

QUICK = ("bench-serialize", "--quick", "-k", "progress-meta")


def _one_error_line(proc) -> str:  # noqa: ANN001
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr
    return proc.stderr


def test_json_output_follows_the_contract(run_cli) -> None:  # noqa: ANN001
    proc = run_cli(*QUICK, "-s", "json", "-s", "msgpack", "--format", "json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "celerydiag.bench-serialize/1"
    assert [(r["payload"], r["serializer"]) for r in doc["results"]] == [
        ("progress-meta", "json"), ("progress-meta", "msgpack")]
    for row in doc["results"]:
        assert row["encode_ms"]["median"] > 0 and row["decode_ms"]["median"] > 0
        assert 0 <= row["encode_ms"]["spread"] and row["size_bytes"] > 100 and row["error"] is None
    assert doc["backend_model"]["backend"] == "redis"  # no target given: the common backend


def test_user_json_payload_runs_alone_and_compare_shows_before_after(run_cli, tmp_path: Path) -> None:  # noqa: ANN001
    payload = tmp_path / "meta.json"
    payload.write_text(json.dumps({"current": 3, "total": 9, "rows": list(range(2000))}))
    before = tmp_path / "before.json"
    proc = run_cli("bench-serialize", "--quick", "-s", "json", "-p", str(payload), "--format", "json",
                   "-o", str(before), timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(before.read_text())
    assert [r["payload"] for r in doc["results"]] == ["file:meta.json"]
    proc = run_cli("bench-serialize", "--quick", "-s", "json", "-p", str(payload), "--compare", str(before),
                   "--no-color", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Before / after" in proc.stdout and "file:meta.json" in proc.stdout
    assert "Recommendation" in proc.stdout


def test_trusted_pickle_payload_is_accepted(run_cli, tmp_path: Path) -> None:  # noqa: ANN001
    payload = tmp_path / "meta.pkl"
    payload.write_bytes(pickle.dumps({"current": 1, "blob": b"\x00" * 1000}, protocol=5))
    proc = run_cli("bench-serialize", "--quick", "-s", "pickle", "-p", str(payload), "--trust-pickle",
                   "--format", "json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"][0]["size_bytes"] > 1000


def test_pickle_without_trust_is_refused_with_the_reason(run_cli, tmp_path: Path) -> None:  # noqa: ANN001
    payload = tmp_path / "meta.pkl"
    payload.write_bytes(pickle.dumps({"a": 1}))
    err = _one_error_line(run_cli("bench-serialize", "-p", str(payload)))
    assert "run any code" in err and "--trust-pickle" in err


def test_a_file_neither_json_nor_pickle_is_refused(run_cli, tmp_path: Path) -> None:  # noqa: ANN001
    payload = tmp_path / "meta.bin"
    payload.write_bytes(b"\x00\x01GIF89a not a payload")
    assert "neither JSON nor a pickle" in _one_error_line(run_cli("bench-serialize", "-p", str(payload)))


def test_a_payload_above_max_size_is_refused_before_reading(run_cli, tmp_path: Path) -> None:  # noqa: ANN001
    payload = tmp_path / "huge.json"
    with open(payload, "wb") as stream:  # sparse: 3 GB that takes no disk and must never be read
        stream.truncate(3 * 1024**3)
    err = _one_error_line(run_cli("bench-serialize", "-p", str(payload), timeout=30))
    assert "above --max-size 67,108,864" in err
    err = _one_error_line(run_cli("bench-serialize", "-p", str(payload), "--max-size", "1k", timeout=30))
    assert "above --max-size 1,024" in err


def test_unknown_serializer_lists_the_known_ones(run_cli) -> None:  # noqa: ANN001
    err = _one_error_line(run_cli("bench-serialize", "-s", "protobuf"))
    assert "unknown serializer 'protobuf'" in err and "msgpack" in err and "pickle5" in err


@pytest.mark.parametrize("args", [("--max-size", "12 parsecs"), ("-k", "ndarray-5gb")])
def test_bad_option_values_are_usage_errors(run_cli, args) -> None:  # noqa: ANN001
    proc = run_cli("bench-serialize", *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_from_backend_needs_a_backend(run_cli) -> None:  # noqa: ANN001
    err = _one_error_line(run_cli("bench-serialize", "--from-backend", "abc"))
    assert "--backend" in err


def test_compare_with_a_file_of_another_kind_is_refused(run_cli, tmp_path: Path) -> None:  # noqa: ANN001
    other = tmp_path / "report.json"
    other.write_text(json.dumps({"schema": "celerydiag.report/1"}))
    err = _one_error_line(run_cli("bench-serialize", "--compare", str(other)))
    assert "not a celerydiag.bench-serialize/1 document" in err


def test_help_explains_every_option(run_cli) -> None:  # noqa: ANN001
    proc = run_cli("bench-serialize", "--help")
    assert proc.returncode == 0
    for option in ("--serializer", "--payload-kind", "--payload", "--trust-pickle", "--max-size",
                   "--from-backend", "--quick", "--compare", "--format", "--bandwidth-mbit"):
        assert option in proc.stdout


def test_the_fixture_payload_is_heavy_under_json_and_gets_a_pasteable_serializer_config(run_cli) -> None:  # noqa: ANN001
    fixture = Path(__file__).resolve().parents[2] / "fixtures" / "payloads" / "progress-history.json"
    proc = run_cli("bench-serialize", "--quick", "-p", str(fixture), "-s", "json", "-s", "msgpack",
                   "--format", "json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rows = {r["serializer"]: r for r in doc["results"]}
    assert rows["json"]["size_bytes"] > fixture.stat().st_size  # the meta envelope around the file
    assert doc["recommendation"][0].startswith("Keep update_state meta small")
    for name in doc["suggested"]:
        compile(doc["serializers"][name]["config"], "<config>", "exec")


def test_text_opens_with_the_verdict_naming_the_costliest_payload(run_cli) -> None:  # noqa: ANN001
    """Issue 15: the answer first. The verdict names the payload the JSON says costs most per update
    with the serializer in use, and its figure, before any table."""
    proc = run_cli("bench-serialize", "--quick", "-k", "progress-meta", "-k", "floats-10k", "-s", "json",
                   "-s", "msgpack", "--format", "json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    from celerydiag.cli.bench_serialize import verdict

    doc = json.loads(proc.stdout)
    line = verdict(doc)
    worst = max((r for r in doc["results"] if r["serializer"] == "json"), key=lambda r: r["update_ms"])
    assert line.startswith("Verdict: ") and worst["payload"] in line and f"{worst['update_ms']:.3g} ms" in line
    text = run_cli("bench-serialize", "--quick", "-k", "progress-meta", "-s", "json", timeout=60)
    assert text.returncode == 0, text.stderr
    first = text.stdout.splitlines()[0]
    assert first.startswith("Verdict: serialization does not make states late"), first
