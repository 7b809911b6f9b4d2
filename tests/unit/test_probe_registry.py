"""The probe registry is the Cause enum: each cause's probe lives in celerydiag/<cause>/probe.py,
and the enum's order is the run order (config first, e2e last, host just before e2e so it never
reports e2e's own worker)."""

from __future__ import annotations

from celerydiag.findings import Cause
from celerydiag.probe import probe_classes, probe_names


def test_one_probe_per_cause_in_the_enums_order() -> None:
    classes = probe_classes()
    assert [cls.cause for cls in classes] == list(Cause)
    assert all(cls.__module__ == f"celerydiag.{cls.cause.value}.probe" for cls in classes)
    assert probe_names() == tuple(c.value for c in Cause)


def test_config_first_host_before_e2e_and_e2e_last() -> None:
    names = probe_names()
    assert names[0] == "config" and names[-1] == "e2e" and names[-2] == "host"
    assert names == ("config", "broker", "backend", "polling", "serialization", "network", "host", "e2e")


def test_host_is_no_static_probe() -> None:
    """doctor --static runs only static probes: the host probe samples for --duration seconds."""
    assert [cls.name for cls in probe_classes() if cls.static] == ["config", "polling"]
