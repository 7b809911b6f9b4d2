"""Fixtures of the accuracy scenarios: the real local services (the integration conftest's own
fixtures, re-exported so a service that is down FAILS with its start command), the user's config
file, a stop file for the scenario app's tasks, and Redis key cleanup by prefix."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import amqp_url, mysql_url, pg_url, redis_url  # noqa: F401
from tests.scenarios.harness import UserConfig, unique

MAX_DELETED_KEYS = 10_000


@pytest.fixture
def user_config(tmp_path: Path) -> Callable[..., UserConfig]:
    """``user_config(broker_url=..., result_backend=..., ...)``: a fresh celeryconfig module with the
    scenario's own queue (``task_default_queue``), so its worker consumes nothing of anyone else's."""

    def make(**settings: Any) -> UserConfig:
        settings.setdefault("task_default_queue", unique("cdscn_q"))
        settings.setdefault("worker_hijack_root_logger", False)
        return UserConfig(tmp_path, **settings)

    return make


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:  # noqa: F811 (the re-exported fixture)
    """A ``global_keyprefix`` of the scenario's own; every key under it is deleted at teardown, so the
    serialization probe sees this scenario's metas only and nothing outlives the run."""
    import redis

    prefix = unique("cdscn") + ":"
    yield prefix
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        deleted = 0
        for key in client.scan_iter(match=f"{prefix}*", count=500):
            client.delete(key)
            deleted += 1
            if deleted >= MAX_DELETED_KEYS:
                break
    finally:
        client.close()

