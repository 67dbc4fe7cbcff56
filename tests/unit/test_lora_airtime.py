"""Time on air and payload limits against the EU868 table in the reference notes."""

from __future__ import annotations

import pytest

from ferry.proxy.lora import airtime, scheduler
from ferry.proxy.lora.errors import ImageTooLarge, LoraError


@pytest.mark.parametrize(("dr", "ms", "frag"), [
    (0, 2793, 48), (1, 1479, 48), (2, 698, 48), (3, 677, 112), (4, 697, 239), (5, 394, 239)])
def test_full_frame_downlink_airtime(dr, ms, frag):
    n = airtime.data_rate(dr).max_payload
    assert abs(airtime.downlink_airtime(n, dr) * 1000 - ms) < 1.0
    assert airtime.max_fragment_size(dr) == frag


def test_uplink_crc_and_small_frames():
    # SF7 125 kHz, 13 + 10 bytes with CRC: 8 + ceil((184-28+28+16)/28)*5 = 8 + 8*5 = 48 symbols
    t = airtime.time_on_air(23, 7, crc=True)
    assert abs(t - (12.25 + 48) * 1.024e-3) < 1e-9


def test_payload_limit_enforced():
    with pytest.raises(LoraError, match="limit"):
        airtime.downlink_airtime(52, 0)
    with pytest.raises(LoraError, match=r"DR0\.\.DR5"):
        airtime.data_rate(6)


def test_plan_100k_dr5():
    p = scheduler.plan(100 * 1024, 5, 0.10)
    assert (p.frag_size, p.m, p.padding) == (239, 429, 429 * 239 - 102400)
    # least n with 0.9 n - 1.645 sqrt(0.09 n) >= 429 + 2 is 492 -> R = 63
    assert p.redundancy == 63
    assert scheduler.plan(100 * 1024, 3, 0.0).frag_size == 112
    with pytest.raises(ImageTooLarge):
        scheduler.plan(16383 * 48, 0, 0.1)


def test_duty_cycle_off_time():
    class Clock:
        t = 100.0

        def now(self):
            return self.t

        def sleep(self, s):
            self.t += s

    dc = scheduler.DutyCycle(0.10, Clock())
    dc.record(0.3945)
    assert abs(dc.next_free - (100.0 + 3.945)) < 1e-9
    dc.record(0.3945)  # sent early: counted from when the band was free
    assert abs(dc.next_free - (100.0 + 2 * 3.945)) < 1e-9


def test_top_up_and_loss():
    assert scheduler.top_up_for(0, 0.2) == 0
    assert scheduler.top_up_for(10, 0.2) >= 13
    # M = 100; last fragment heard N = 150 (an index), 20 data fragments lost
    assert scheduler.loss_from_status(100, 150, 20) == pytest.approx(0.2)
    # only up to N = 50 heard so far: 10 of those 50 lost
    assert scheduler.loss_from_status(100, 50, 10) == pytest.approx(0.2)
    assert scheduler.loss_from_status(100, 0, 0) == 0.0
