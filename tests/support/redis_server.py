"""A redis-server of a test's own on a free loopback port, for faults and counters that are
server-wide (an eviction policy, INFO commandstats): never the shared one, stopped by its pid."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.watch import free_port


@contextmanager
def private_redis(*extra: str) -> Iterator[str]:
    """Start it (``extra``: more redis-server arguments), wait until it answers PING, yield its URL."""
    import redis

    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (scripts/system-packages.sh installs it)"
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
