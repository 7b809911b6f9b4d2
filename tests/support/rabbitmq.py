"""Test-side control of the local RabbitMQ: rabbitmqctl, a short real memory alarm, a throwaway user.

Other engineers' tests share this broker, so what changes it is a context manager that restores
the previous state in ``finally`` (also on failure or Ctrl-C) and keeps the change short::

    with memory_alarm():           # watermark 'absolute 1' until the with-block ends
        ...
    with rabbitmq_user(name, password, tags="monitoring"):
        ...                        # the user exists (full permissions on vhost /) until the end
    with waiting_tasks(amqp_url, queue, 7) as channel:
        ...                        # a queue of ours holding 7 messages and no consumer, deleted after
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"rabbitmqctl {args[0]}: {done.stderr.strip()}"
    return done.stdout.strip()


def node_name() -> str:
    return rabbitmqctl("eval", "node().")


@contextmanager
def memory_alarm(within_s: float = 5) -> Iterator[None]:
    """A real memory alarm: the high watermark lowered to 1 byte, the previous one (relative
    ``0.4`` or ``{absolute,N}``) put back when the block ends, whatever happens in it."""
    previous = rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().")
    restore = (["set_vm_memory_high_watermark", "absolute", previous.strip("{}").split(",")[1]]
               if previous.startswith("{absolute") else ["set_vm_memory_high_watermark", previous])
    try:
        rabbitmqctl("set_vm_memory_high_watermark", "absolute", "1")
        deadline = time.monotonic() + within_s
        while rabbitmqctl("eval", "rabbit_alarm:get_alarms().") == "[]":
            assert time.monotonic() < deadline, f"no memory alarm {within_s} s after lowering the watermark"
            time.sleep(0.1)
        yield
    finally:
        rabbitmqctl(*restore)


@contextmanager
def rabbitmq_user(name: str, password: str, tags: str = "") -> Iterator[None]:
    """A user of our own (so a test can look for its password in output), deleted afterwards."""
    try:
        rabbitmqctl("add_user", name, password)
        rabbitmqctl("set_user_tags", name, *tags.split())
        rabbitmqctl("set_permissions", "-p", "/", name, ".*", ".*", ".*")
        yield
    finally:
        subprocess.run(["rabbitmqctl", "delete_user", name], capture_output=True, timeout=30)


@contextmanager
def waiting_tasks(amqp_url: str, queue: str, count: int) -> Iterator[Any]:
    """A queue of our own with ``count`` messages and no consumer (a backlog), with an x-expires
    safety net and deleted at the end; yields the open channel so a test can look at it again."""
    import amqp
    from kombu import Connection

    with Connection(amqp_url, connect_timeout=3) as conn:
        channel = conn.channel()
        channel.queue_declare(queue, durable=False, auto_delete=False, arguments={"x-expires": 120_000})
        try:
            for i in range(count):
                channel.basic_publish(amqp.Message(b"task %d" % i), "", queue)
            yield channel
        finally:
            channel.queue_delete(queue)
