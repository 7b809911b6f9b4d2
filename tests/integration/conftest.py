"""The real local services the integration tests run against, one session fixture each.

URLs come from the environment, with the machine's loopback defaults (Celery's TEST_BROKER habit):

  CELERYDIAG_TEST_AMQP   amqp://guest:guest@127.0.0.1:5672//
  CELERYDIAG_TEST_REDIS  redis://127.0.0.1:6379/15
  CELERYDIAG_TEST_PG     postgresql+psycopg://postgres@127.0.0.1:5432/test    (a SQLAlchemy URL)
  CELERYDIAG_TEST_MYSQL  mysql+pymysql://root@127.0.0.1:3306/test             (a SQLAlchemy URL)

Fixtures (session scope; each connects once with a 2 s timeout and returns the URL):

  amqp_url    the RabbitMQ broker URL, e.g. for --broker
  redis_url   the Redis URL (db 15), usable as --broker or --backend
  pg_url      SQLAlchemy URL of PostgreSQL; Celery's backend URL is "db+" + pg_url
  mysql_url   SQLAlchemy URL of MariaDB; Celery's backend URL is "db+" + mysql_url
  scratch     (function scope) a unique name prefix ``celerydiag-test-<8 hex>`` for what a test creates
  closed_port (function scope) a loopback port nothing listens on: connections are refused
  silent_port (function scope) a loopback port that accepts connections and never answers
  private_rabbitmq_node  (session) a RabbitMQ node of the session's own (tests/support/rabbitmq.py
              PrivateNode: own name, ports, data dir, cookie), for server-wide faults such as a
              memory alarm; started once (~5-15 s), stopped by its pid at the end

A service that is down makes every test using it FAIL with the command that starts it: a skip
would turn a broken machine into a green run. ``pytest --no-services`` deselects integration
tests on purpose instead (see tests/conftest.py).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from celerydiag.target import redact_url

CONNECT_TIMEOUT_S = 2.0

AMQP_URL = os.environ.get("CELERYDIAG_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("CELERYDIAG_TEST_REDIS", "redis://127.0.0.1:6379/15")
PG_URL = os.environ.get("CELERYDIAG_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("CELERYDIAG_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")

# How to start each one (the commands scripts/services.sh runs; `make services` runs them all).
START = {
    "RabbitMQ": "rabbitmq-server -detached",
    "Redis": "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no",
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -1) main start",
    "MariaDB": "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
}


def _require(name: str, url: str, env_var: str, connect: Callable[[str], None]) -> str:
    try:
        connect(url)
    except Exception as exc:  # any failure to reach it is the same message to the developer
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        pytest.fail(
            f"{name} at {redact_url(url)} is not reachable ({type(exc).__name__}: {first}). "
            f"Start it with `make services` or `{START[name]}`, or point {env_var} at a running one.",
            pytrace=False,
        )
    return url


def _amqp(url: str) -> None:
    from kombu import Connection

    with Connection(url, connect_timeout=CONNECT_TIMEOUT_S,
                    transport_options={"read_timeout": CONNECT_TIMEOUT_S}) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=CONNECT_TIMEOUT_S)


def _redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=CONNECT_TIMEOUT_S,
                                  socket_connect_timeout=CONNECT_TIMEOUT_S)
    try:
        client.ping()
    finally:
        client.close()


def _sql(url: str) -> None:
    from celerydiag.access.reach import ping_database

    ping_database(url, CONNECT_TIMEOUT_S)


@pytest.fixture(scope="session")
def amqp_url() -> str:
    return _require("RabbitMQ", AMQP_URL, "CELERYDIAG_TEST_AMQP", _amqp)


@pytest.fixture(scope="session")
def redis_url() -> str:
    return _require("Redis", REDIS_URL, "CELERYDIAG_TEST_REDIS", _redis)


@pytest.fixture(scope="session")
def pg_url() -> str:
    return _require("PostgreSQL", PG_URL, "CELERYDIAG_TEST_PG", _sql)


@pytest.fixture(scope="session")
def mysql_url() -> str:
    return _require("MariaDB", MYSQL_URL, "CELERYDIAG_TEST_MYSQL", _sql)


@pytest.fixture
def scratch() -> str:
    """A prefix no other test (or user) uses: name every queue, key and table after it."""
    return f"celerydiag-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def closed_port() -> int:
    """A loopback port that refuses connections (bound to learn a free number, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that completes the TCP handshake (the kernel does, from the backlog) and then never
    says a word: the half-dead server that hangs clients without timeouts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


@pytest.fixture(scope="session")
def private_rabbitmq_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import time

    from tests.support.rabbitmq import private_rabbitmq

    started = time.monotonic()
    with private_rabbitmq(tmp_path_factory.mktemp("rabbitmq")) as node:
        print(f"private RabbitMQ {node.name} on 127.0.0.1:{node.port} up in {time.monotonic() - started:.1f} s")
        yield node
