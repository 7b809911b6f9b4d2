"""The RabbitMQ management HTTP API, read-only and optional (``--rabbitmq-api URL``).

It knows what AMQP does not tell a client: which alarm is in effect and on which node, how many
connections the broker is blocking right now, and each queue's publish/deliver rates (so a
backlog becomes a wait in seconds). Stdlib urllib with a timeout; the credentials from the URL go
into an Authorization header and never into a message, log or finding.

Freshness (measured on RabbitMQ 3.10): ``/api/health/checks/alarms`` asks the alarm handler and
sees an alarm at once; ``/api/nodes``' ``mem_alarm``, connection states and queue counters are
statistics the node emits every ``collect_statistics_interval`` (5 s by default; a memory alarm
took 6.5 s to show there). So alarms come from the health check (3.8.10+) with ``/api/nodes`` as
the fallback, and connection/queue facts may be a few seconds old, and absent on a brand-new
connection or queue (no statistics yet).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from celerydiag.target import redact_url


class ApiError(Exception):
    """The API could not be read; the message is safe to print (no credentials)."""


@dataclass(frozen=True)
class QueueRates:
    messages: int | None  # None: the queue has no statistics yet (declared moments ago)
    consumers: int | None
    publish_per_s: float | None
    deliver_per_s: float | None


@dataclass(frozen=True)
class ApiFacts:
    alarms: tuple[str, ...] = ()  # e.g. "memory alarm on rabbit@host"
    connections: int = 0
    blocked_connections: int = 0  # state "blocked" or "blocking"
    flow_connections: int = 0  # state "flow": publishers throttled by credit flow, a few times a second
    queues: dict[str, QueueRates] = field(default_factory=dict)


def _split(api_url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(api_url if "://" in api_url else f"http://{api_url}")
    if parts.scheme not in ("http", "https"):
        raise ApiError(f"--rabbitmq-api must be an http(s) URL, got {redact_url(api_url)}")
    try:
        port = parts.port
    except ValueError:  # the message would quote the text after the host, maybe part of a password
        raise ApiError("--rabbitmq-api has an invalid port (percent-encode / # ? @ in the password: %2F %23 "
                       "%3F %40)") from None
    headers = {"Accept": "application/json"}
    if parts.username is not None:
        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if port:
        netloc += f":{port}"
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return base, headers


def get(api_url: str, path: str, timeout_s: float, answers: tuple[int, ...] = ()) -> Any:
    """GET ``path`` (e.g. ``/api/nodes``) as JSON, or ApiError with one safe line. ``answers``:
    HTTP error codes whose JSON body is the answer (a failed health check is a 503)."""
    from urllib.error import HTTPError, URLError
    from urllib.request import Request, urlopen

    base, headers = _split(api_url)
    url = base + path
    try:
        with urlopen(Request(url, headers=headers), timeout=timeout_s) as response:
            return json.loads(response.read().decode("utf-8"))
    except HTTPError as exc:
        if exc.code in answers:
            try:
                return json.loads(exc.read().decode("utf-8"))
            except (OSError, ValueError):
                pass
        hint = " (wrong user or password, or the user lacks the monitoring tag)" if exc.code == 401 else ""
        raise ApiError(f"{base}{path}: HTTP {exc.code}{hint}") from None
    except (URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ApiError(f"{base}{path}: {type(exc).__name__}: {reason}") from None


def read(api_url: str, vhost: str, queue_names: Iterable[str], timeout_s: float) -> ApiFacts:
    alarms = live_alarms(api_url, timeout_s)
    for node in get(api_url, "/api/nodes", timeout_s) or []:
        name = node.get("name", "?")
        if node.get("mem_alarm"):
            alarms.append(f"memory alarm on {name}")
        if node.get("disk_free_alarm"):
            alarms.append(f"disk alarm on {name}")
    connections = get(api_url, "/api/connections?columns=state", timeout_s) or []
    # a connection opening or closing has no columns yet: RabbitMQ sends it as [] (an empty proplist)
    states = [c.get("state") for c in connections if isinstance(c, dict)]
    blocked = sum(1 for state in states if state in ("blocked", "blocking"))
    queues: dict[str, QueueRates] = {}
    deadline = time.monotonic() + 2 * timeout_s  # up to MAX_QUEUES reads: a slowing API stops them
    for name in queue_names:
        if time.monotonic() > deadline:
            break
        try:
            data = get(api_url, f"/api/queues/{quote(vhost, safe='')}/{quote(name, safe='')}", timeout_s)
        except ApiError as exc:
            if "HTTP 404" in str(exc):
                continue  # not declared yet
            raise
        stats = data.get("message_stats") or {}
        queues[name] = QueueRates(
            messages=_int(data.get("messages")),
            consumers=_int(data.get("consumers")),
            publish_per_s=_rate(stats, "publish_details"),
            deliver_per_s=_rate(stats, "deliver_get_details"),
        )
    return ApiFacts(tuple(dict.fromkeys(alarms)), len(connections), blocked, states.count("flow"), queues)


def live_alarms(api_url: str, timeout_s: float) -> list[str]:
    """The alarms in effect now, from the health check (a 503 whose body lists them); [] on a
    RabbitMQ older than 3.8.10, which has no such endpoint (``/api/nodes`` then tells, later)."""
    try:
        answer = get(api_url, "/api/health/checks/alarms", timeout_s, answers=(503,))
    except ApiError as exc:
        if "HTTP 404" in str(exc):
            return []
        raise
    alarms = answer.get("alarms") if isinstance(answer, dict) else None
    return [f"{a.get('resource', '?')} alarm on {a.get('node', '?')}" for a in alarms or () if isinstance(a, dict)]


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _rate(stats: dict[str, Any], key: str) -> float | None:
    details = stats.get(key)
    if not isinstance(details, dict) or details.get("rate") is None:
        return None
    return float(details["rate"])
