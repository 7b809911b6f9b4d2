"""Serialization cause: the cost of encoding state payloads. ``harness`` measures (shared by the
probe and ``bench-serialize``); ``probe`` ranks the user's real stored metas."""
