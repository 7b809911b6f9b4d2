"""What raises a low AMQP heartbeat, on the real RabbitMQ (audit: capture assess, point 5 of issue 17).

py-amqp sends the lower of the two non-zero values in Tune-Ok, so a client's broker_heartbeat can
lower what the server proposes but never raise it; the capture's fix text must say which side to
change: the server's ``heartbeat`` in rabbitmq.conf when the server proposed the low value, the
client's broker_heartbeat when the client asked for less than the server proposed.
"""

from __future__ import annotations

import ast
from urllib.parse import urlsplit

import pytest

from celerydiag.network.capture.assess import _heartbeat_config

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]


def negotiated(amqp_url: str, client_heartbeat: int) -> tuple[int, int]:
    """(the server's proposal, the negotiated heartbeat) of one real connection."""
    import amqp

    u = urlsplit(amqp_url)
    conn = amqp.Connection(f"{u.hostname}:{u.port or 5672}", userid=u.username or "guest",
                           password=u.password or "guest", heartbeat=client_heartbeat, connect_timeout=5)
    conn.connect()
    try:
        return conn.server_heartbeat, conn.heartbeat
    finally:
        conn.close()


def test_a_client_heartbeat_lowers_but_never_raises_the_servers(amqp_url: str) -> None:
    server, _ = negotiated(amqp_url, 2)
    assert server > 2
    assert negotiated(amqp_url, 2) == (server, 2)  # the client's lower value wins
    assert negotiated(amqp_url, server * 5) == (server, server)  # a higher one is capped by the server's


def test_the_fix_names_the_side_that_set_the_low_value(amqp_url: str) -> None:
    server, low = negotiated(amqp_url, 2)
    client_side = _heartbeat_config(low, server)  # the client asked for less than the server proposed
    assert "broker_heartbeat = 30" in client_side and "your broker_heartbeat set the low value" in client_side
    server_side = _heartbeat_config(5, 5)  # the server proposed the low value
    assert [line for line in server_side.splitlines() if not line.startswith("#")] == []  # nothing to set here
    assert "broker_heartbeat cannot raise it" in server_side and "heartbeat = 60 in rabbitmq.conf" in server_side
    unknown = _heartbeat_config(2, None)  # the capture missed the Tune: both sides named
    assert "rabbitmq.conf" in unknown and "broker_heartbeat = 30" in unknown
    assert _heartbeat_config(30, 60) == "" and _heartbeat_config(None, None) == ""
    for text in (client_side, server_side, unknown):
        ast.parse(text)  # pasteable into a Python config as it is
