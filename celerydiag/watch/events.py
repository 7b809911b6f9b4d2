"""Real tasks' queue wait from the app's task events (task-sent -> task-started).

What the event-based exporters measure, so one exporter covers both: a daemon thread holds an
event receiver on the target's broker (Celery's own ``app.events.Receiver``: an auto-delete
``celeryev.*`` queue on RabbitMQ, a fanout on Redis, removed when its connection closes) and pairs
each task's sent and started events. It sees only what the app emits: ``task-sent`` needs
``task_send_sent_event = True`` where tasks are sent, ``task-started`` needs workers started with
``-E`` (``worker_send_task_events``). The two timestamps come from two hosts' clocks: a skew
between them is in the number (NTP keeps it to milliseconds).

Bounded: at most MAX_PENDING sent tasks remembered (the oldest dropped), at most MAX_PER_INTERVAL
waits handed over per interval; a lost connection is retried every --timeout, never in a tight loop.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from typing import Any

from celerydiag.target import Target
from celerydiag.watch.sample import Sample

MAX_PENDING = 10_000
MAX_PER_INTERVAL = 10_000
EVENT_PREFIXES = ("broker_", "accept_content", "event_")


class EventListener:
    """A background event receiver; :meth:`drain` moves the waits seen since the last call."""

    def __init__(self, target: Target, timeout_s: float) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._sent: OrderedDict[str, float] = OrderedDict()
        self._waits: deque[float] = deque(maxlen=MAX_PER_INTERVAL)
        self._error: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if target.broker_scheme != "memory":  # nothing but our own canary runs on the embedded default
            self._thread = threading.Thread(target=self._run, name="celerydiag-watch-events", daemon=True)
            self._thread.start()

    def _on_sent(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._sent[str(event.get("uuid"))] = float(event.get("timestamp") or 0.0)
            while len(self._sent) > MAX_PENDING:
                self._sent.popitem(last=False)

    def _on_started(self, event: dict[str, Any]) -> None:
        with self._lock:
            sent = self._sent.pop(str(event.get("uuid")), None)
            if sent is not None and event.get("timestamp"):
                self._waits.append(max(0.0, (float(event["timestamp"]) - sent) * 1000.0))

    def _run(self) -> None:
        from celerydiag.access.app import fresh_app

        app = fresh_app(self.target, "celerydiag-watch-events", EVENT_PREFIXES, broker=True)
        app.conf.update(broker_connection_timeout=self.timeout_s, broker_connection_retry_on_startup=False)
        handlers = {"task-sent": self._on_sent, "task-started": self._on_started}
        while not self._stop.is_set():
            try:
                with app.connection_for_read() as conn:
                    conn.ensure_connection(max_retries=1, timeout=self.timeout_s)
                    receiver = app.events.Receiver(conn, handlers=handlers)
                    self._error = None
                    while not self._stop.is_set():
                        try:
                            receiver.capture(limit=None, timeout=1.0, wakeup=False)
                        except TimeoutError:  # socket.timeout: no event for a second; look at _stop
                            continue
            except Exception as exc:
                from celerydiag.errors import one_line

                self._error = self.target.redact(one_line(exc))
                self._stop.wait(self.timeout_s)
        app.close()

    def drain(self, sample: Sample) -> None:
        with self._lock:
            sample.queue_wait_ms = [round(v, 3) for v in self._waits]
            self._waits.clear()
        if self._error:
            sample.fail("events", self._error)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 1.5)
