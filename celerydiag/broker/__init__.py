"""Broker cause: publish latency with and without confirms, blocked connections, heartbeats,
backlog. ``probe`` is the doctor probe; ``amqp``, ``redis`` and ``api`` measure one transport each."""
