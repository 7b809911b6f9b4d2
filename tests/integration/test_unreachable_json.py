"""With --format json an unreachable target still writes its document (issue 12, point 7): the
README promises `doctor --format json | jq` always works, and an empty stdout makes jq fail with
a parse error instead of showing why. The report names the dead side (``unreachable``); each
probe that needs it failed with that side's line, the others ran (point 6); exit 3; the one
error line comes first on stderr; no password anywhere."""

from __future__ import annotations

import json
from typing import Any

import pytest

from celerydiag.errors import ExitCode

PASSWORD = "Sup3rSecretPw"
TIMEOUT = "2"


def _unreachable_document(done: Any, check_report: Any, text: str, side: str) -> dict[str, Any]:
    assert done.returncode == ExitCode.UNREACHABLE, done.stderr
    assert "Traceback" not in done.stderr
    assert PASSWORD not in text and PASSWORD not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("celerydiag: error:")]
    assert len(errors) == 1 and f"{side} " in errors[0] and "unreachable" in errors[0], done.stderr
    assert done.stderr.startswith(errors[0]), done.stderr
    doc = json.loads(text)
    check_report(doc)
    [(name, why)] = doc["unreachable"].items()
    assert name == ("backend" if side == "result backend" else "broker") and why in errors[0]
    failed = [p for p in doc["probes"] if p["status"] == "failed"]
    assert failed and all(why in p["reason"] for p in failed), doc["probes"]
    return doc


@pytest.mark.integration
@pytest.mark.parametrize("command", [["doctor"], ["probe", "broker"]], ids=["doctor", "probe-broker"])
def test_json_on_a_closed_broker_port_is_a_document_and_exit_3(run_cli: Any, check_report: Any, closed_port: int,
                                                               command: list[str]) -> None:
    broker = f"amqp://guest:{PASSWORD}@127.0.0.1:{closed_port}//"
    done = run_cli(*command, "--broker", broker, "--format", "json", "--timeout", TIMEOUT, timeout=60)
    doc = _unreachable_document(done, check_report, done.stdout, "broker")
    assert [p["name"] for p in doc["probes"]][-1] == ("e2e" if command == ["doctor"] else "broker")
    assert f"127.0.0.1:{closed_port}" in doc["target"]["broker"]


@pytest.mark.integration
def test_json_on_a_closed_backend_port_names_the_backend(run_cli: Any, check_report: Any, redis_url: str,
                                                         closed_port: int) -> None:
    backend = f"redis://:{PASSWORD}@127.0.0.1:{closed_port}/0"
    done = run_cli("doctor", "--broker", redis_url, "--backend", backend, "--format", "json", "--timeout", TIMEOUT,
                   timeout=60)
    _unreachable_document(done, check_report, done.stdout, "result backend")


@pytest.mark.integration
def test_json_output_file_on_an_unreachable_target_holds_the_document(run_cli: Any, check_report: Any, tmp_path: Any,
                                                                      closed_port: int) -> None:
    out = tmp_path / "report.json"
    done = run_cli("doctor", "--broker", f"amqp://guest:{PASSWORD}@127.0.0.1:{closed_port}//", "--format", "json",
                   "--timeout", TIMEOUT, "-o", str(out), timeout=60)
    assert done.stdout == ""
    _unreachable_document(done, check_report, out.read_text(encoding="utf-8"), "broker")


@pytest.mark.integration
def test_text_on_an_unreachable_target_says_it_first(run_cli: Any, closed_port: int) -> None:
    done = run_cli("doctor", "--broker", f"amqp://guest@127.0.0.1:{closed_port}//", "--timeout", TIMEOUT, timeout=60)
    assert done.returncode == ExitCode.UNREACHABLE, done.stderr
    assert done.stderr.startswith("celerydiag: error: broker "), done.stderr
    assert 0 < done.stdout.find("UNREACHABLE: broker") < done.stdout.find("Findings"), done.stdout[:400]
