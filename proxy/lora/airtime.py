"""LoRa time on air and EU868 payload limits (RP002), per data rate.

The scheduler needs both: the payload limit fixes the fragment size, and the time on
air of each frame, divided by the sub-band's duty cycle, fixes how often it may send.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ferry.proxy.lora.errors import LoraError

LORAWAN_OVERHEAD = 13  # MHDR 1 + FHDR 7 (no FOpts) + FPort 1 + MIC 4
DATA_FRAGMENT_OVERHEAD = 3  # CID + Index&N


@dataclass(frozen=True)
class DataRate:
    dr: int
    sf: int
    bw_hz: int
    max_payload: int  # FRMPayload N without FOpts


EU868: dict[int, DataRate] = {
    0: DataRate(0, 12, 125_000, 51),
    1: DataRate(1, 11, 125_000, 51),
    2: DataRate(2, 10, 125_000, 51),
    3: DataRate(3, 9, 125_000, 115),
    4: DataRate(4, 8, 125_000, 242),
    5: DataRate(5, 7, 125_000, 242),
}

# The g3 sub-band 869.4-869.65 MHz (RX2 869.525 MHz, the usual multicast channel) allows
# 10 %; most of the others 1 %.
EU868_RX2_FREQUENCY = 869_525_000
EU868_RX2_DUTY_CYCLE = 0.10


def data_rate(dr: int) -> DataRate:
    try:
        return EU868[dr]
    except KeyError:
        raise LoraError(f"EU868 DR{dr} is not supported; use DR0..DR5") from None


def time_on_air(phy_payload: int, sf: int, bw_hz: int = 125_000, *, crc: bool = False,
                explicit_header: bool = True, preamble: int = 8, cr: int = 1) -> float:
    """Seconds on air (Semtech SX127x formula). Downlinks have no payload CRC."""
    t_sym = (1 << sf) / bw_hz
    de = 1 if sf >= 11 and bw_hz == 125_000 else 0
    ih = 0 if explicit_header else 1
    num = 8 * phy_payload - 4 * sf + 28 + 16 * int(crc) - 20 * ih
    n_payload = 8 + max(math.ceil(num / (4 * (sf - 2 * de))) * (cr + 4), 0)
    return (preamble + 4.25) * t_sym + n_payload * t_sym


def downlink_airtime(frm_payload: int, dr: int) -> float:
    rate = data_rate(dr)
    if frm_payload > rate.max_payload:
        raise LoraError(f"{frm_payload} bytes exceed DR{dr}'s limit of {rate.max_payload}")
    return time_on_air(LORAWAN_OVERHEAD + frm_payload, rate.sf, rate.bw_hz, crc=False)


def max_fragment_size(dr: int) -> int:
    return data_rate(dr).max_payload - DATA_FRAGMENT_OVERHEAD
