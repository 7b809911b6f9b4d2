"""Retransmission impact from the capture's own retransmission waits, checked against tshark.

The loss fixture (fixtures/pcaps/make_amqp_loss.py: nftables in a network namespace dropping ~10 %
of an AMQP client's packets each way) holds real RTO and fast retransmissions. Each wait we
measure (first transmission -> retransmission) must be tshark's ``tcp.analysis.rto`` for the
same frame, and the finding's impact must be computed from those waits, not a constant.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from celerydiag.network.capture import analyse
from celerydiag.network.capture.assess import retransmission_impact_ms
from tests.support.tshark import tshark

pytestmark = [pytest.mark.capture]

LOSS = Path(__file__).resolve().parents[2] / "fixtures" / "pcaps" / "amqp_loss.pcap"


def _tshark_rto_ms() -> list[float]:
    proc = subprocess.run([tshark(), "-2", "-n", "-r", str(LOSS), "-Y", "tcp.analysis.rto", "-T", "fields",
                           "-e", "tcp.analysis.rto"], capture_output=True, text=True, timeout=120, check=True)
    return sorted(float(v) * 1000.0 for v in proc.stdout.split())


def test_retransmission_waits_are_tsharks_rto_and_drive_the_impact() -> None:
    report = analyse(str(LOSS))
    ours = sorted(d * 1000.0 for c in report.connections for d in c.retransmission_delays_s)
    reference = _tshark_rto_ms()
    assert len(reference) >= 10
    assert ours == pytest.approx(reference, abs=0.01)  # 10 µs: the pcap's timestamp resolution is 1 µs
    [finding] = [f for f in report.findings if f.id == "network.retransmissions"]
    ev = finding.evidence
    spurious_free = ev["retransmissions_count"] - ev["spurious_retransmissions_count"]
    expected = retransmission_impact_ms(
        [d / 1000.0 for d in ours], spurious_free / ev["data_segments_count"], ev["segments_per_update_count"])
    assert finding.impact_ms == pytest.approx(expected)
    assert min(reference) <= finding.impact_ms <= max(reference)  # one of the waits seen, not 200 ms by fiat
    assert finding.impact_ms != pytest.approx(200.0, abs=1.0)
    assert ev["retransmission_delay_ms"]["max"] == pytest.approx(max(reference), abs=0.01)
