"""Each probe needs only what it uses (issue 12, point 6): with the broker down, `probe backend`,
`probe serialization` and `probe network --pcap` still measure; with the backend down, `probe
broker` does; doctor with one side down runs every probe that does not need it and exits 3
naming the dead side, in the report (JSON and text) and first on stderr.

The dead side is a closed loopback port (refused at once), the live side the real local service.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from celerydiag.errors import ExitCode

pytestmark = pytest.mark.integration

PCAP = Path(__file__).parents[2] / "fixtures" / "pcaps" / "amqp_healthy.pcap"


def probes(proc) -> dict[str, str]:
    return {p["name"]: p["status"] for p in json.loads(proc.stdout)["probes"]}


BOUNDS = ("--timeout", "2", "--max-seconds", "5", "--samples", "20")  # what broker, backend and doctor read


def run_json(run_cli, *args: str):
    proc = run_cli(*args, "--format", "json", timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.mark.postgres
def test_probe_backend_works_with_the_broker_down(run_cli, closed_port, pg_url):
    proc = run_json(run_cli, "probe", "backend", *BOUNDS, "--broker", f"amqp://guest:guest@127.0.0.1:{closed_port}//",
                    "--backend", f"db+{pg_url}")
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert probes(proc) == {"backend": "ran"}
    assert json.loads(proc.stdout)["unreachable"] == {}


@pytest.mark.redis
def test_probe_serialization_works_with_the_broker_down(run_cli, closed_port, redis_url):
    proc = run_json(run_cli, "probe", "serialization", "--timeout", "2", "--broker", f"redis://127.0.0.1:{closed_port}/0",
                    "--backend", redis_url)
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert probes(proc) == {"serialization": "ran"}


def test_probe_network_reads_a_capture_with_both_sides_down(run_cli, closed_port):
    proc = run_json(run_cli, "probe", "network", "--pcap", str(PCAP),
                    "--broker", f"amqp://guest:guest@127.0.0.1:{closed_port}//",
                    "--backend", f"redis://127.0.0.1:{closed_port}/0")
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert probes(proc) == {"network": "ran"}


@pytest.mark.rabbitmq
def test_probe_broker_works_with_the_backend_down(run_cli, closed_port, amqp_url):
    proc = run_json(run_cli, "probe", "broker", *BOUNDS, "--broker", amqp_url,
                    "--backend", f"redis://127.0.0.1:{closed_port}/0")
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert probes(proc) == {"broker": "ran"}


@pytest.mark.redis
def test_doctor_with_the_broker_down_runs_the_rest_and_exits_3_naming_it(run_cli, closed_port, redis_url):
    proc = run_json(run_cli, "doctor", *BOUNDS, "--broker", f"amqp://guest:S3cretPw@127.0.0.1:{closed_port}//",
                    "--backend", redis_url)
    assert proc.returncode == ExitCode.UNREACHABLE, proc.stderr
    doc = json.loads(proc.stdout)
    assert list(doc["unreachable"]) == ["broker"] and f"127.0.0.1:{closed_port}" in doc["unreachable"]["broker"]
    status = probes(proc)
    assert status["broker"] == status["e2e"] == "failed"  # they need the broker
    assert status["backend"] == status["serialization"] == status["polling"] == status["config"] == "ran"
    assert any(f["cause"] == "backend" for f in doc["findings"])  # the backend was measured
    assert proc.stderr.startswith("celerydiag: error: broker "), proc.stderr
    assert "S3cretPw" not in proc.stdout + proc.stderr


@pytest.mark.rabbitmq
def test_doctor_with_the_backend_down_says_so_in_text_first(run_cli, closed_port, amqp_url):
    proc = run_cli("doctor", "--broker", amqp_url, "--backend", f"redis://:S3cretPw@127.0.0.1:{closed_port}/0",
                   "--timeout", "2", "--max-seconds", "5", "--samples", "20", timeout=120)
    assert proc.returncode == ExitCode.UNREACHABLE, proc.stderr
    first = proc.stdout.find("UNREACHABLE: result backend")
    assert 0 < first < proc.stdout.find("Findings"), proc.stdout[:400]  # before any finding
    assert "broker ran" in proc.stdout and "backend failed" in proc.stdout
    assert "S3cretPw" not in proc.stdout + proc.stderr
