"""The RabbitMQ management HTTP API, read-only and optional (``--rabbitmq-api URL``).

It knows what AMQP does not tell a client: which alarm is in effect and on which node, how many
connections the broker is blocking right now, and each queue's publish/deliver rates (so a
backlog becomes a wait in seconds). Stdlib urllib with a timeout; the credentials from the URL go
into an Authorization header and never into a message, log or finding.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from celerydiag.target import redact_url


class ApiError(Exception):
    """The API could not be read; the message is safe to print (no credentials)."""


@dataclass(frozen=True)
class QueueRates:
    messages: int
    consumers: int
    publish_per_s: float | None
    deliver_per_s: float | None


@dataclass(frozen=True)
class ApiFacts:
    alarms: tuple[str, ...] = ()  # e.g. "memory alarm on rabbit@host"
    connections: int = 0
    blocked_connections: int = 0  # state "blocked" or "blocking"
    queues: dict[str, QueueRates] = field(default_factory=dict)


def _split(api_url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(api_url if "://" in api_url else f"http://{api_url}")
    if parts.scheme not in ("http", "https"):
        raise ApiError(f"--rabbitmq-api must be an http(s) URL, got {redact_url(api_url)}")
    headers = {"Accept": "application/json"}
    if parts.username is not None:
        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return base, headers


def get(api_url: str, path: str, timeout_s: float) -> Any:
    """GET ``path`` (e.g. ``/api/nodes``) as JSON, or ApiError with one safe line."""
    from urllib.error import HTTPError, URLError
    from urllib.request import Request, urlopen

    base, headers = _split(api_url)
    url = base + path
    try:
        with urlopen(Request(url, headers=headers), timeout=timeout_s) as response:
            return json.loads(response.read().decode("utf-8"))
    except HTTPError as exc:
        hint = " (wrong user or password, or the user lacks the monitoring tag)" if exc.code == 401 else ""
        raise ApiError(f"{base}{path}: HTTP {exc.code}{hint}") from None
    except (URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ApiError(f"{base}{path}: {type(exc).__name__}: {reason}") from None


def read(api_url: str, vhost: str, queue_names: Iterable[str], timeout_s: float) -> ApiFacts:
    nodes = get(api_url, "/api/nodes", timeout_s) or []
    alarms = []
    for node in nodes:
        name = node.get("name", "?")
        if node.get("mem_alarm"):
            alarms.append(f"memory alarm on {name}")
        if node.get("disk_free_alarm"):
            alarms.append(f"disk alarm on {name}")
    connections = get(api_url, "/api/connections?columns=state", timeout_s) or []
    blocked = sum(1 for c in connections if c.get("state") in ("blocked", "blocking"))
    queues: dict[str, QueueRates] = {}
    for name in queue_names:
        try:
            data = get(api_url, f"/api/queues/{quote(vhost, safe='')}/{quote(name, safe='')}", timeout_s)
        except ApiError as exc:
            if "HTTP 404" in str(exc):
                continue  # not declared yet
            raise
        stats = data.get("message_stats") or {}
        queues[name] = QueueRates(
            messages=int(data.get("messages") or 0),
            consumers=int(data.get("consumers") or 0),
            publish_per_s=_rate(stats, "publish_details"),
            deliver_per_s=_rate(stats, "deliver_get_details"),
        )
    return ApiFacts(tuple(alarms), len(connections), blocked, queues)


def _rate(stats: dict[str, Any], key: str) -> float | None:
    details = stats.get(key)
    if not isinstance(details, dict) or details.get("rate") is None:
        return None
    return float(details["rate"])
