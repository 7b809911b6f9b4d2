"""Test-side control of the local RabbitMQ: rabbitmqctl, a short real memory alarm, a throwaway user.

Other engineers' tests share this broker, so what changes it is a context manager that restores
the previous state in ``finally`` (also on failure or Ctrl-C) and keeps the change short::

    with memory_alarm():           # watermark 'absolute 1' until the with-block ends
        ...
    with rabbitmq_user(name, password, tags="monitoring"):
        ...                        # the user exists (full permissions on vhost /) until the end
    with waiting_tasks(amqp_url, queue, 7) as channel:
        ...                        # a queue of ours holding 7 messages and no consumer, deleted after

A fault that holds the whole server (a memory alarm for a test's full run) belongs on a node of the
test's own instead, which nobody else uses::

    with private_rabbitmq(tmp_path) as node:   # own name, ports, data dir, cookie; stopped by its pid
        node.set_memory_alarm()
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
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


# ---- a private RabbitMQ node: for faults that must not touch the shared broker ------------------

RABBITMQ_LIB = "/usr/lib/rabbitmq/bin"  # the Debian package's scripts (/usr/sbin ones su to rabbitmq)
NODE_START_S = 60.0  # a cold node boots in ~5-10 s here; generous for a loaded machine
NODE_STOP_S = 15.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateNode:
    """A RabbitMQ node of our own: its own name, AMQP and distribution ports (loopback only), data
    dir, config, plugins (none: no management listener on 15672) and Erlang cookie, all under
    ``base``; nothing of the shared node (rabbit@localhost on 5672) is read or changed. It shares
    only the machine's epmd (names are distinct). ``url`` is its guest URL."""

    def __init__(self, base: Any) -> None:
        from pathlib import Path

        self.base = Path(base)
        self.name = f"celerydiag-test-{os.getpid()}-{uuid.uuid4().hex[:6]}@localhost"
        self.port = _free_port()
        self.dist_port = _free_port()
        while self.dist_port == self.port:
            self.dist_port = _free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: Any = None
        home = self.base / "home"
        for sub in ("home", "mnesia", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex)
        cookie.chmod(0o400)
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n")
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq-env.conf").write_text("")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_BASE": str(self.base),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def ctl(self, *args: str) -> str:
        """rabbitmqctl against this node only (-n NAME, this node's cookie)."""
        done = subprocess.run([f"{RABBITMQ_LIB}/rabbitmqctl", "-n", self.name, *args], env=self.env,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"rabbitmqctl -n {self.name} {args[0]}: {done.stderr.strip()[-500:]}"
        return done.stdout.strip()

    def start(self) -> None:
        self._out = open(self.base / "server.out", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([f"{RABBITMQ_LIB}/rabbitmq-server"], env=self.env, cwd=self.base,
                                     stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # its own group: stopped by its pid
        deadline = time.monotonic() + NODE_START_S
        while not self._answers():
            assert self.proc.poll() is None, f"private RabbitMQ exited {self.proc.returncode}: {self._tail()}"
            assert time.monotonic() < deadline, f"private RabbitMQ not up in {NODE_START_S:.0f} s: {self._tail()}"
            time.sleep(0.25)

    def _answers(self) -> bool:
        from kombu import Connection

        try:
            with Connection(self.url, connect_timeout=1, transport_options={"read_timeout": 1}) as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, timeout=1)
            return True
        except Exception:
            return False

    def _tail(self) -> str:
        try:
            return (self.base / "server.out").read_text(errors="replace")[-800:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the node's process group (rabbitmq-server's shell and beam.smp under it),
        SIGKILL if it is still there after NODE_STOP_S."""
        import signal

        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group: beam.smp too, even if the shell is gone
            self.proc.wait(NODE_STOP_S)
            for _ in range(int(NODE_STOP_S / 0.1)):  # beam.smp outlives its shell for a moment
                os.killpg(self.proc.pid, 0)
                time.sleep(0.1)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(NODE_STOP_S)
        except ProcessLookupError:  # the whole group has ended
            pass
        finally:
            self._out.close()

    def set_memory_alarm(self, on: bool = True, within_s: float = 10) -> None:
        """Lower this node's watermark to 1 byte (``on``) or put RabbitMQ's default 0.4 back, and
        wait until its memory alarm is on (or off)."""
        self.ctl("set_vm_memory_high_watermark", *(("absolute", "1") if on else ("0.4",)))
        deadline = time.monotonic() + within_s
        while (self.ctl("eval", "rabbit_alarm:get_alarms().") == "[]") == on:
            assert time.monotonic() < deadline, f"memory alarm not {'on' if on else 'off'} after {within_s} s"
            time.sleep(0.1)

    @contextmanager
    def memory_alarm(self) -> Iterator[None]:
        """This node's memory alarm on for the block, off again after it (whatever happens in it)."""
        try:
            self.set_memory_alarm(True)
            yield
        finally:
            if self.proc is not None and self.proc.poll() is None:
                self.set_memory_alarm(False)

    def ours_left(self, within_s: float = 10.0) -> list[str]:
        """celerydiag's queues still on this node after up to ``within_s`` (an exclusive queue
        goes when RabbitMQ notices its connection closed, which takes a moment)."""
        deadline = time.monotonic() + within_s
        while True:
            left = [q for q in self.queues() if "celerydiag" in q]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.5)

    def expiring(self, names: list[str], within_ms: int = 120_000) -> bool:
        """Every one of ``names`` carries an ``x-expires`` of at most ``within_ms``: RabbitMQ drops
        it by itself, so a cleanup cut by a signal on a loaded machine still leaves nothing for long."""
        out = self.ctl("list_queues", "-q", "--no-table-headers", "name", "arguments")
        args = {line.split(None, 1)[0]: line.split(None, 1)[1] if len(line.split(None, 1)) > 1 else ""
                for line in out.splitlines() if line.strip()}
        found = [re.search(r"x-expires.*?(\d+)", args.get(name, "")) for name in names]
        return all(m is not None and int(m.group(1)) <= within_ms for m in found)

    def delete(self, names: list[str]) -> None:
        for name in names:
            self.ctl("delete_queue", name)

    def queues(self) -> list[str]:
        """Names of the queues on this node (vhost /)."""
        out = self.ctl("list_queues", "-q", "--no-table-headers", "name")
        return [line.strip() for line in out.splitlines() if line.strip()]


@contextmanager
def private_rabbitmq(base: Any) -> Iterator[PrivateNode]:
    """A private RabbitMQ node under the directory ``base``, started here and stopped by its pid at
    the end (also on failure or Ctrl-C)::

        with private_rabbitmq(tmp_path) as node:
            node.set_memory_alarm()        # only this node: the shared broker is untouched
            run_cli("doctor", "--broker", node.url, ...)
    """
    node = PrivateNode(base)
    try:
        node.start()
        yield node
    finally:
        node.stop()
