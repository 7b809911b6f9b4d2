"""`celerydiag probe broker --broker URL` on broken targets: one line and a hint, exit 3, within the
timeout, no traceback, no password. Runs the real console script in a subprocess."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]

PASSWORD = "pw-s3cret-7f3a"
TIMEOUT_S = 2.0
ALLOWED_S = TIMEOUT_S * 3 + 5  # reach check + interpreter/celery import on a busy 2-core machine


# Each case builds its URL from the shared fixtures' ports: (closed, silent) -> URL.
CASES: dict[str, Callable[[int, int], str]] = {
    "closed port": lambda closed, silent: f"amqp://guest:{PASSWORD}@127.0.0.1:{closed}//",
    "port that never answers": lambda closed, silent: f"amqp://guest:{PASSWORD}@127.0.0.1:{silent}//",
    "wrong vhost": lambda closed, silent: f"amqp://guest:{PASSWORD}@127.0.0.1:5672/celerydiag-no-such-vhost",
    "wrong credentials": lambda closed, silent: f"amqp://guest:{PASSWORD}@127.0.0.1:5672//",
    "amqps without certificates": lambda closed, silent: f"amqps://guest:{PASSWORD}@127.0.0.1:5672//",
    "redis closed port": lambda closed, silent: f"redis://:{PASSWORD}@127.0.0.1:{closed}/0",
}
EXPECT = {
    "closed port": "refused",
    "port that never answers": "timed out",
    "wrong vhost": "vhost",
    "wrong credentials": "ACCESS_REFUSED",
    "amqps without certificates": "SSL",
    "redis closed port": "refused",
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_target_is_one_line_exit_3(case: str, closed_port: int, silent_port: int, amqp_url: str,
                                       run_cli: Callable[..., Any]) -> None:
    url = CASES[case](closed_port, silent_port)
    started = time.monotonic()
    done = run_cli("probe", "broker", "--broker", url, "--timeout", str(TIMEOUT_S), "--format", "json",
                   timeout=60)
    took = time.monotonic() - started
    assert done.returncode == 3, (done.returncode, done.stderr)
    assert took < ALLOWED_S, f"{case}: {took:.1f} s"
    assert "Traceback" not in done.stderr + done.stdout
    assert PASSWORD not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("celerydiag: error: broker ") and EXPECT[case].lower() in lines[0].lower(), lines
    assert len(lines) == 3 and lines[1].startswith("  hint: "), lines
    assert lines[2].startswith("celerydiag: ") and lines[2].endswith("probes failed: broker"), lines
    doc = json.loads(done.stdout)  # the report still comes, naming the dead side (`| jq` works)
    assert doc["unreachable"]["broker"] in lines[0] and doc["probes"][0]["status"] == "failed"
