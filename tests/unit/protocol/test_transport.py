"""Polling backoff and tracked sends (raven_hpc.protocol.transport)."""
from __future__ import annotations

import numpy as np
import pytest

from raven_hpc.protocol.transport import Backoff


def test_backoff_sleeps_only_after_spins_and_is_capped():
    b = Backoff(1e-5, 4e-5, spins=3)
    for _ in range(3):
        b.idle()
    assert b.slept_s == 0.0
    for _ in range(5):
        b.idle()
    assert b.slept_s == pytest.approx(1e-5 + 2e-5 + 4e-5 * 3)
    b.busy()
    b.idle()
    assert b.slept_s == pytest.approx(1e-5 + 2e-5 + 4e-5 * 3)
    # Waiting for short work, the sleep is capped at a fraction of it.
    c = Backoff(1e-5, 1e-3, spins=0, latency_fraction=0.05)
    c.cap_for(4e-4)
    for _ in range(10):
        c.idle()
    assert c.cap_s == pytest.approx(2e-5)
    assert c.slept_s == pytest.approx(1e-5 + 2e-5 * 9)


def test_outbox_drives_progress_only_for_fresh_large_sends():
    """``transferring(fresh_s)``: a large send counts only in its first
    ``fresh_s`` seconds (a peer busy computing cannot take it sooner, and
    spinning for it would only take CPU from the ranks beside us); small
    sends (no buffer kept alive) never count; completed sends leave."""
    import time as _time

    from raven_hpc.protocol.transport import Outbox

    class Req:
        def __init__(self):
            self.done = False

        def Test(self):
            return self.done

    box = Outbox()
    small, large = Req(), Req()
    box.add(small)
    assert not box.transferring() and not box.transferring(fresh_s=1.0)
    buf = np.zeros(4)
    box.add(large, buf)
    assert box.transferring() and box.transferring(fresh_s=1.0) and box.holds(buf)
    _time.sleep(0.02)
    assert box.transferring() and not box.transferring(fresh_s=0.01)
    large.done = small.done = True
    assert box.progress() == 0 and not box.transferring() and not box.holds(buf)
