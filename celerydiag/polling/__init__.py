"""Polling cause: how late, and how often never, a client's polling sees a state change.
``model`` is the model (shared by the probe and ``poll-model``), ``observe`` watches a real task."""
