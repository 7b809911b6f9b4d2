"""RabbitMQ measurements through kombu and py-amqp, the stack Celery's own producer uses.

Everything here talks to the broker the way ``app.connection_for_write()`` does: a kombu
``Connection`` built from the target's URL, ``broker_transport_options``, ``broker_use_ssl`` and
``broker_login_method``, of which we override only what the experiment needs (``confirm_publish``,
read/write timeouts, the blocked callbacks). So what we measure is what the user's producer gets.

Load and cleanup: one scratch queue of our own (exclusive, auto-delete, with an ``x-expires``
safety net), bounded message counts on a fixed schedule, and user queues only ever read with a
passive declare. The exclusive queue dies with our connection, whatever happens to us.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from celerydiag import measure
from celerydiag.errors import quietly
from celerydiag.measure import ms

BODY_BYTES = 512  # about a small Celery task message (headers + JSON body)
WARMUP = 5  # unscheduled operations before each series: primes confirm.select and sizes the interval
MIN_INTERVAL_S = 0.002


@dataclass
class BlockedWatch:
    """Records RabbitMQ's ``connection.blocked``/``unblocked`` notifications (memory/disk alarm)."""

    events: list[tuple[str, str, float]] = field(default_factory=list)

    def on_blocked(self, reason: str = "") -> None:
        self.events.append(("blocked", reason or "", time.monotonic()))

    def on_unblocked(self) -> None:
        self.events.append(("unblocked", "", time.monotonic()))

    @property
    def blocked(self) -> bool:
        return bool(self.events) and self.events[-1][0] == "blocked"

    @property
    def ever_blocked(self) -> bool:
        return any(kind == "blocked" for kind, _, _ in self.events)

    @property
    def reason(self) -> str:
        reasons = [r for kind, r, _ in self.events if kind == "blocked" and r]
        return reasons[-1] if reasons else ""


def decode_blocked_reason(raw: Any, watch: BlockedWatch) -> None:
    """py-amqp 5.4 declares ``connection.blocked`` without arguments, so its callback always
    says "connection blocked, see broker logs". The frame carries the broker's reason ("low on
    memory", "low on disk") as a shortstr; declaring it on this connection object gets it to us.
    Private attributes of py-amqp: if they change, we fall back to the plain callback."""
    try:
        from amqp import spec

        blocked = spec.Connection.Blocked
        raw._METHODS = {**raw._METHODS, blocked: spec.method(blocked, "s")}
        raw._callbacks[blocked] = watch.on_blocked
        raw.on_unblocked = watch.on_unblocked
    except Exception:  # pragma: no cover - depends on py-amqp internals
        pass


def connection(target: Any, timeout_s: float, *, confirm: bool, watch: BlockedWatch | None = None,
               heartbeat: float | None = None) -> Any:
    """An unconnected kombu Connection configured like the app's producer connection."""
    from kombu import Connection

    conf = target.conf
    options = dict(conf.broker_transport_options or {})
    options.update(confirm_publish=confirm, read_timeout=timeout_s, write_timeout=timeout_s)
    if watch is not None:
        options.update(on_blocked=watch.on_blocked, on_unblocked=watch.on_unblocked)
    return Connection(target.broker_url, connect_timeout=timeout_s, heartbeat=heartbeat or 0,
                      ssl=conf.broker_use_ssl, login_method=conf.broker_login_method,
                      transport_options=options)


def connect(conn: Any, watch: BlockedWatch | None = None) -> float:
    """Connect (TCP, TLS, AMQP handshake) and return how long it took, in ms."""
    started = time.perf_counter()
    conn.connect()
    elapsed = ms(time.perf_counter() - started)
    if watch is not None:
        decode_blocked_reason(conn.connection, watch)
    return elapsed


def drop(conn: Any, hard: bool = False) -> None:
    """Close the connection. ``hard`` skips the Close/Close-Ok handshake, for a broker that
    stopped reading our socket (blocked): it would never answer. Bounded by the read timeout."""
    raw = getattr(conn, "_connection", None)
    try:
        if hard and raw is not None:
            raw.collect()
        conn.release()
    except Exception:
        if raw is not None:
            quietly(raw.collect)


class PublishersBlocked(Exception):
    """RabbitMQ sent ``connection.blocked``: it stopped reading this connection's socket."""


def blocks_publishers(target: Any, timeout_s: float, queue: str) -> str | None:
    """Whether the broker blocks publishers (a memory or disk alarm), found with one transient
    confirmed publish to ``queue`` (unrouted: nothing is stored) on a connection of its own:
    returns the broker's reason ("low on memory"), or why the ack did not come within
    ``timeout_s``, or None when it was acked. It returns as soon as RabbitMQ says
    ``connection.blocked``, and drops the connection without the close handshake a blocked
    broker would never answer."""
    watch = BlockedWatch()
    conn = connection(target, timeout_s, confirm=True, watch=watch)
    try:
        connect(conn, watch)

        def stop(reason: str = "") -> None:
            watch.on_blocked(reason)
            raise PublishersBlocked(reason)

        try:  # where decode_blocked_reason put the watch: raising there ends the wait at once
            from amqp import spec

            conn.connection._callbacks[spec.Connection.Blocked] = stop
        except Exception:  # pragma: no cover - py-amqp internals changed: the timeout still ends it
            pass
        op = publisher(conn.default_channel, queue, persistent=False, confirm_timeout=timeout_s)
        try:
            op(-1)
            return None
        except PublishersBlocked:
            return watch.reason or "connection blocked"
        except Exception as exc:
            if _is_connection_error(exc) and not isinstance(exc, TimeoutError):
                raise
            return watch.reason or f"a publish got no ack within {timeout_s:g} s"
    finally:
        drop(conn, hard=True)


@dataclass(frozen=True)
class Handshake:
    connect_ms: float
    server_heartbeat_s: int
    negotiated_heartbeat_s: float


def handshake(target: Any, timeout_s: float, heartbeat: float) -> Handshake:
    """One short-lived connection offering the worker's ``broker_heartbeat``: connect time and
    what the broker proposes and the negotiation yields (py-amqp: either side 0 → the other, else
    the smaller; our 0 vetoes). Closed at once, so it never needs heartbeat ticks."""
    conn = connection(target, timeout_s, confirm=False, heartbeat=heartbeat)
    try:
        took = connect(conn)
        raw = conn.connection
        return Handshake(took, int(raw.server_heartbeat or 0), float(raw.heartbeat or 0))
    finally:
        drop(conn)


def body(seq: int) -> bytes:
    head = b'{"celerydiag":%d,"pad":"' % seq
    return head + b"x" * max(0, BODY_BYTES - len(head) - 2) + b'"}'


def seq_of(payload: Any) -> int:
    data = payload if isinstance(payload, bytes) else str(payload).encode()
    try:
        return int(data.split(b":", 1)[1].split(b",", 1)[0])
    except (IndexError, ValueError):
        return -1


def declare_scratch(channel: Any, name: str, expires_ms: int) -> bool:
    """Our own queue: exclusive + auto-delete (gone with our connection) and ``x-expires`` (gone
    even if RabbitMQ keeps it). Durable when the broker allows it, so persistent messages take
    the same disk path as on Celery's durable task queues. Returns whether it is durable."""
    args = {"x-expires": int(expires_ms)}
    try:
        channel.queue_declare(name, durable=True, exclusive=True, auto_delete=True, arguments=args)
        return True
    except Exception as exc:  # a broker that refuses durable exclusive queues (RabbitMQ 4 policy)
        if _is_connection_error(exc):
            raise
        return False


def _is_connection_error(exc: BaseException) -> bool:
    from amqp.exceptions import ConnectionError as AmqpConnectionError

    return isinstance(exc, (OSError, AmqpConnectionError))


def interval_for(op: Callable[[int], Any], floor_s: float = MIN_INTERVAL_S) -> float:
    """measure.interval_for with WARMUP calls, which also prime confirm.select on the channel."""
    return measure.interval_for(op, floor_s, WARMUP)


def publisher(channel: Any, queue: str, *, persistent: bool, confirm_timeout: float | None = None
              ) -> Callable[[int], Any]:
    """``op(seq)`` publishing one message to our queue through the default exchange. On a
    connection built with ``confirm_publish=True`` py-amqp waits for the broker's ack inside."""
    from amqp import Message

    mode = 2 if persistent else 1
    kwargs: dict[str, Any] = {}
    if confirm_timeout is not None:
        kwargs["confirm_timeout"] = confirm_timeout

    def op(seq: int) -> Any:
        message = Message(body(seq), delivery_mode=mode, content_type="application/json")
        return channel.basic_publish(message, exchange="", routing_key=queue, **kwargs)

    return op


class Consumer:
    """Publish→consume round trips on one connection: the consumer is registered before we
    publish, so delivery starts as soon as RabbitMQ routes the message, as for an idle worker."""

    def __init__(self, raw: Any, channel: Any, queue: str, timeout_s: float) -> None:
        self.raw = raw
        self.timeout_s = timeout_s
        self.seen: set[int] = set()
        self.channel = channel
        self.tag = channel.basic_consume(queue, no_ack=True, callback=self._on_message)

    def _on_message(self, message: Any) -> None:
        self.seen.add(seq_of(message.body))

    def wait_for(self, seq: int) -> None:
        deadline = time.monotonic() + self.timeout_s
        while seq not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"message {seq} not delivered within {self.timeout_s:g} s")
            self.raw.drain_events(timeout=left)

    def cancel(self) -> None:
        quietly(self.channel.basic_cancel, self.tag)


@dataclass(frozen=True)
class QueueState:
    name: str
    declared: bool
    messages: int = 0
    consumers: int = 0


def passive_states(conn: Any, names: Iterable[str]) -> list[QueueState]:
    """Depth and consumers of user queues, read with ``passive=True`` only: never declares,
    purges or changes them. A missing queue is "not declared yet", and costs us a channel
    (RabbitMQ closes the channel on NOT_FOUND), so each check gets its own."""
    from amqp.exceptions import NotFound

    out = []
    for name in names:
        channel = conn.channel()
        try:
            _, messages, consumers = channel.queue_declare(name, passive=True)
            out.append(QueueState(name, True, int(messages), int(consumers)))
        except NotFound:
            out.append(QueueState(name, False))
        finally:
            quietly(channel.close)
    return out
