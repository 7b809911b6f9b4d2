"""The polling model against reality: a real Celery worker writes PROGRESS states at known times
to the local Redis result backend, a real client polls AsyncResult every T, and the measured miss
rate and delays must fall inside the model's bands.

The worker is an in-process thread (celery.contrib.testing.worker, pool solo) on a queue named
after the test's scratch prefix, so the task records the exact moment each update_state() returned
with the same clock the client uses. The model is fed what was really measured (the durations the
task really slept, the client's mean lateness + read time as latency), so machine load moves both
sides together instead of making the test flaky. Bands are the model's own z = 4 intervals.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import pytest

from celerydiag.polling import model as polling

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.slow]

T = 0.25  # the client's poll interval
STATES = 25  # PROGRESS states per task
TASKS = 6
MEAN_DURATION = 0.15  # seconds each PROGRESS state lasts, exponential, clipped below
TASK_DEADLINE_S = 30.0


def _broker_url(redis_url: str) -> str:
    return redis_url.rsplit("/", 1)[0] + "/14"


def _keys(client: Any, scratch: str) -> list[bytes]:
    return list(client.scan_iter(match=f"*{scratch}*", count=1000))


@pytest.fixture
def celery_setup(redis_url: str, scratch: str) -> Iterator[tuple[Any, Any, dict[str, list[float]]]]:
    import redis
    from celery import Celery
    from celery.contrib.testing.worker import start_worker

    queue = f"{scratch}-q"
    app = Celery(scratch, broker=_broker_url(redis_url), backend=redis_url, set_as_current=False)
    app.conf.update(task_default_queue=queue, result_expires=600, worker_enable_remote_control=False,
                    broker_connection_retry_on_startup=False, redis_socket_timeout=5,
                    redis_socket_connect_timeout=2, broker_transport_options={"socket_timeout": 5})
    writes: dict[str, list[float]] = {}

    @app.task(bind=True, name=f"{scratch}.steps")
    def steps(self: Any, durations: list[float]) -> dict[str, int]:
        marks = writes.setdefault(self.request.id, [])
        for i, d in enumerate(durations):
            self.update_state(state="PROGRESS", meta={"i": i})
            marks.append(time.perf_counter())  # the moment update_state() returned
            time.sleep(d)
        return {"i": len(durations)}

    results = redis.Redis.from_url(redis_url, socket_timeout=5)
    broker = redis.Redis.from_url(_broker_url(redis_url), socket_timeout=5)
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, queues=[queue], loglevel="WARNING",
                          shutdown_timeout=10):
            yield app, steps, writes
    finally:
        for client in (results, broker):  # our keys only: result metas, the queue, its binding
            for key in _keys(client, scratch):
                client.delete(key)
        app.close()
    leaked = _keys(results, scratch) + _keys(broker, scratch)
    results.close()
    broker.close()
    assert not leaked, f"keys left behind: {leaked}"


def _poll_task(app: Any, task_id: str, rng: random.Random) -> tuple[list[tuple[float, float, int]], bool]:
    """Poll every T on a fixed schedule with a random phase; (intended, answered, index seen) per poll."""
    from celery.result import AsyncResult

    result = AsyncResult(task_id, app=app)
    start = time.perf_counter() + rng.random() * T
    polls = []
    for k in range(int(TASK_DEADLINE_S / T)):
        intended = start + k * T
        delay = intended - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        info = result.info  # one backend read (GET celery-task-meta-<id>)
        answered = time.perf_counter()
        index = info.get("i", -1) if isinstance(info, dict) else -1
        polls.append((intended, answered, index))
        if index >= STATES:  # SUCCESS carries i = STATES
            return polls, True
    return polls, False


def test_measured_polling_matches_the_model(celery_setup: Any, scratch: str) -> None:
    app, steps, writes = celery_setup
    rng = random.Random(20241124)
    delays: list[float] = []
    lateness: list[float] = []
    durations: list[float] = []
    transients = missed = 0
    for n in range(TASKS):
        plan = [min(0.6, max(0.02, rng.expovariate(1 / MEAN_DURATION))) for _ in range(STATES)]
        task_id = f"{scratch}-{n}"
        # forget() is the cleanup for the result key; registered before the task exists
        try:
            steps.apply_async(args=[plan], task_id=task_id)
            polls, finished = _poll_task(app, task_id, rng)
        finally:
            app.AsyncResult(task_id).forget()
        assert finished, f"task {task_id} did not reach SUCCESS in {TASK_DEADLINE_S}s"
        marks = writes[task_id]
        assert len(marks) == STATES
        seen = {index for _, _, index in polls}
        for j, written in enumerate(marks):
            first = next(answered for _, answered, index in polls if index >= j)
            delays.append(first - written)
        for j in range(STATES - 1):  # the last PROGRESS ends at SUCCESS, whose write time we do not see
            durations.append(marks[j + 1] - marks[j])
            transients += 1
            missed += j not in seen
        lateness.extend(answered - intended for intended, answered, _ in polls)

    latency = sum(lateness) / len(lateness)  # schedule slip + read time, as measured
    model_durations = polling.Durations("file", sum(durations) / len(durations), tuple(durations))
    p_miss = model_durations.p_miss(T)
    lo, hi = polling.proportion_band(p_miss, transients)
    measured_miss = missed / transients
    assert lo <= measured_miss <= hi, (f"miss rate {measured_miss:.3f} outside the model's band "
                                       f"[{lo:.3f}, {hi:.3f}] (model {p_miss:.3f}, n={transients})")

    mean_delay = sum(delays) / len(delays)
    lo, hi = polling.fixed_mean_band(T, latency, len(delays))
    assert lo <= mean_delay <= hi, (f"mean delay {mean_delay * 1000:.1f} ms outside the model's band "
                                    f"[{lo * 1000:.1f}, {hi * 1000:.1f}] ms (latency {latency * 1000:.1f} ms)")

    # The distribution, not only its mean: P(delay > T/2 + L) is 1/2 under the closed form.
    over = sum(d > T / 2 + latency for d in delays) / len(delays)
    lo, hi = polling.proportion_band(polling.fixed_p_over(T, T / 2 + latency, latency), len(delays))
    assert lo <= over <= hi, f"P(delay > T/2 + L) = {over:.3f} outside [{lo:.3f}, {hi:.3f}]"

    # The seeded simulation of the same scenario agrees with what was measured, too.
    sim = polling.simulate(polling.Strategy("fixed", T), polling.Scenario(
        model_durations, states=STATES, latency_s=latency, threshold_s=T / 2 + latency, tasks=2000))
    lo, hi = polling.proportion_band(sim.simulated["p_miss_transient"].value, transients)
    assert lo <= measured_miss <= hi
    # No delay can exceed one interval plus the worst slip/read of a poll, by construction of polling.
    assert max(delays) <= T + max(lateness) + 0.005
