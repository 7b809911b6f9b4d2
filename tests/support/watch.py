"""A `celerydiag watch` subprocess whose JSON lines a test reads as they come, never left running.

    with watching(cli_argv, "--broker", url, "--prometheus", f"127.0.0.1:{port}") as w:
        first = w.next_where(lambda d: d["canary"] == "ok", within_s=60)
        err, took = w.stop(signal.SIGTERM)          # the exit code is w.proc.returncode

Lines are read by a daemon thread into a queue, so a test waits on a condition with a bound
instead of blocking on a pipe; ``stop`` sends the signal and collects the rest of the output.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int, timeout_s: float = 5.0) -> str:
    """GET /metrics of a watch's exporter on loopback."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as response:
        return str(response.read().decode())


class Watching:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.rest: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)

    @property
    def scratch(self) -> str:
        """The prefix of every name watch creates, as it announces it on stderr ("task ids and
        tables celerydiag-wXXXXXXXX-*"); its queues are celerydiag.probe.wXXXXXXXX-s<N>."""
        found = re.search(r"tables (celerydiag-w[0-9a-f]+)-\*", "".join(self.err))
        assert found, "".join(self.err)
        return found.group(1)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                self.rest.append(line)

    def next_where(self, check: Callable[[dict[str, Any]], bool], within_s: float) -> dict[str, Any]:
        """The next interval's line for which ``check`` holds, waiting at most ``within_s``."""
        deadline = time.monotonic() + within_s
        while True:
            left = deadline - time.monotonic()
            assert left > 0 and self.proc.poll() is None, (
                f"no matching interval within {within_s:g} s (exit {self.proc.poll()}); last: "
                f"{self.seen[-2:]}")
            try:
                doc = self.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            self.seen.append(doc)
            if check(doc):
                return doc

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> tuple[str, float]:
        """Send ``sig``, wait for the exit: (stderr, seconds from the signal to the exit)."""
        sent = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(timeout_s)
        took = time.monotonic() - sent
        for reader in self._readers:
            reader.join(5)
        return "".join(self.err), took


@contextmanager
def watching(argv: Sequence[str], **popen: Any) -> Iterator[Watching]:
    """``celerydiag watch ... -f json`` started with text pipes; killed if the block fails."""
    proc = subprocess.Popen([*argv, "-f", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)
    try:
        yield Watching(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
