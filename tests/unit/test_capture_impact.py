"""What a capture's measured facts cost in milliseconds (network/capture/assess.py)."""

from __future__ import annotations

import pytest


def test_retransmission_impact_is_the_quantile_of_the_waits_the_p99_update_falls_on() -> None:
    """A mixture of (1 - p) updates with no wait and p with one of the capture's waits: the P99
    update is a hit once p > 1 %, and then pays the (1 - 1 % / p) quantile of the waits."""
    from celerydiag.measure import percentile
    from celerydiag.network.capture.assess import retransmission_impact_ms

    waits = [0.2, 0.21, 0.4, 0.8]
    assert retransmission_impact_ms(waits, 0.004, 2) == 0.0  # 0.8 % of updates hit: the P99 pays nothing
    assert retransmission_impact_ms([], 0.5, 2) == 0.0
    hit = 1 - (1 - 0.05) ** 2  # 9.75 % of two-segment updates
    assert retransmission_impact_ms(waits, 0.05, 2) == pytest.approx(
        percentile([w * 1000 for w in waits], (1 - 0.01 / hit) * 100))
    assert retransmission_impact_ms(waits, 1.0, 1) == pytest.approx(percentile([w * 1000 for w in waits], 99))
    assert 200.0 <= retransmission_impact_ms(waits, 0.05, 2) <= 800.0
