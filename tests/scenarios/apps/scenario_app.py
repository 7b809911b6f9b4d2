"""The Celery app every scenario runs, configured the way users configure theirs: a celeryconfig module.

``CELERYDIAG_SCENARIO_CONFIG`` names a config module (a ``celeryconfig_<hex>.py`` the scenario writes
into a temp dir on ``PYTHONPATH``); applying a printed fix means appending the finding's
``fix.config`` to that file, exactly as a user pastes it into theirs. The worker
(``celery -A tests.scenarios.apps.scenario_app:app worker``) and ``celerydiag doctor --app`` both
load it, so the doctor measures the same settings the worker runs with.

Every task is bounded in iterations and seconds and stops early when its ``stop_file`` exists, so a
scenario can end it at once (and a leaked one still ends by itself).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

app = Celery("celerydiag_scenario")
if os.environ.get("CELERYDIAG_SCENARIO_CONFIG"):
    app.config_from_object(os.environ["CELERYDIAG_SCENARIO_CONFIG"])

MAX_SECONDS = 120.0  # no task outlives a scenario by much, whatever its arguments


def _stopped(stop_file: str, started: float, seconds: float) -> bool:
    return os.path.exists(stop_file) or time.monotonic() - started >= min(seconds, MAX_SECONDS)


@app.task(bind=True, name="scenario.progress")
def progress(self: Any, stop_file: str, seconds: float = 60.0, interval_s: float = 0.2,
             array_floats: int = 0) -> dict[str, Any]:
    """Report progress every ``interval_s`` until stopped. With ``array_floats`` > 0 the meta carries a
    NumPy array of that many floats (as a list, the way people make one JSON-serializable): the
    anti-pattern the serialization probe exists for."""
    started = time.monotonic()
    data = None
    if array_floats:
        import numpy as np

        data = np.random.default_rng(0).random(array_floats)
    i = 0
    while not _stopped(stop_file, started, seconds):
        meta: dict[str, Any] = {"current": i, "total": None}
        if data is not None:
            meta["samples"] = data.tolist()
        self.update_state(state="PROGRESS", meta=meta)
        i += 1
        time.sleep(interval_s)
    return {"updates": i}


@app.task(name="scenario.block")
def block(stop_file: str, seconds: float = 10.0) -> str:
    """Hold the worker's only thread (pool solo: its event loop too) for ``seconds``: a consumer that
    stops reading its socket."""
    started = time.monotonic()
    while not _stopped(stop_file, started, seconds):
        time.sleep(0.05)
    return "unblocked"


@app.task(name="scenario.payload")
def payload(blob: str) -> int:
    """A task whose arguments are large (a few hundred KB): what fills a stalled consumer's window."""
    return len(blob)


@app.task(name="scenario.echo")
def echo(value: Any = None) -> Any:
    """Readiness check: the worker is consuming and can store a result."""
    return value
