"""Each URL is picked as Celery picks it, the report says where each came from, and every Celery
app of the run really uses the URLs the report names (issue 12, point 7).

Celery's order, per URL (celery/bin/celery.py, celery/app/utils.py): `celery -b X` /
`--result-backend Y` set CELERY_BROKER_URL / CELERY_RESULT_BACKEND, and ``conf.broker_url`` /
``conf.result_backend`` read those variables before the app's own setting.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

APPS = Path(__file__).resolve().parents[1] / "fixtures" / "apps"


def target_of(proc) -> dict[str, str]:
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)["target"]


def test_a_broker_flag_uses_the_backend_of_the_environment(run_cli):
    """Issue 12: `--broker X` with CELERY_RESULT_BACKEND set measured `disabled://`."""
    proc = run_cli("doctor", "--static", "--broker", "memory://", "--format", "json",
                   env={"CELERY_RESULT_BACKEND": "redis://127.0.0.1:6379/15"})
    assert target_of(proc) == {"broker": "memory://", "backend": "redis://127.0.0.1:6379/15", "source": "flags",
                               "broker_source": "flag", "backend_source": "env"}


def test_the_environment_overrides_the_apps_url_and_a_flag_overrides_both(run_cli):
    env = {"CELERY_BROKER_URL": "redis://127.0.0.1:6379/14"}
    by_env = target_of(run_cli("doctor", "--static", "-A", "tapp_clean:app", "--format", "json", cwd=APPS, env=env))
    assert (by_env["broker"], by_env["broker_source"]) == ("redis://127.0.0.1:6379/14", "env")
    assert (by_env["backend"], by_env["backend_source"], by_env["source"]) == (
        "redis://127.0.0.1:6379/15", "app", "app")
    by_flag = target_of(run_cli("doctor", "--static", "-A", "tapp_clean:app", "--broker", "memory://",
                                "--format", "json", cwd=APPS, env=env))
    assert (by_flag["broker"], by_flag["broker_source"]) == ("memory://", "flag")


def test_the_text_report_names_the_target_it_measured(run_cli):
    proc = run_cli("doctor", "--static", "--broker", "memory://", env={"CELERY_RESULT_BACKEND": "redis://127.0.0.1:6379/15"})
    assert proc.returncode in (0, 1), proc.stderr
    assert "backend redis://127.0.0.1:6379/15" in proc.stdout


@pytest.mark.integration
@pytest.mark.redis
def test_every_celery_app_of_the_run_uses_the_flags_not_the_shells_variables(run_cli, redis_url, closed_port):
    """Celery's conf reads CELERY_BROKER_URL before the broker an app was built with: without
    pinning the variables to the target, the e2e worker connected to the shell's closed port and
    the run said the flag's Redis was unreachable (exit 3)."""
    env = {"CELERY_BROKER_URL": f"amqp://guest@127.0.0.1:{closed_port}//",
           "CELERY_RESULT_BACKEND": f"redis://127.0.0.1:{closed_port}/0"}
    proc = run_cli("probe", "e2e", "--broker", redis_url, "--backend", redis_url, "--updates", "20",
                   "--max-seconds", "5", "--timeout", "3", "--format", "json", env=env, timeout=120)
    doc = json.loads(proc.stdout)
    assert proc.returncode in (0, 1), proc.stderr
    assert (doc["target"]["broker_source"], doc["target"]["backend_source"]) == ("flag", "flag")
    assert [p["status"] for p in doc["probes"]] == ["ran"], doc["probes"]
