"""TS003 Application Layer Clock Synchronization v1 (FPort 202).

Class C multicast sessions start at a GPS-epoch second; a node whose clock is off by
more than a second or two misses the first fragments. So before a session the server
asks each node to resynchronise (ForceDeviceResyncReq) and answers every AppTimeReq
with the correction measured against the network's reception time.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ferry.proxy.lora.package import PackageVersionAns, parse_commands

PORT = 202
PACKAGE_IDENTIFIER = 1
PACKAGE_VERSION = 1

CID_APP_TIME = 0x01
CID_DEVICE_APP_TIME_PERIODICITY = 0x02
CID_FORCE_DEVICE_RESYNC = 0x03

GPS_EPOCH_UNIX = 315964800  # 1980-01-06T00:00:00Z
LEAP_SECONDS = 18  # GPS - UTC since 2017-01-01


def unix_to_gps(unix: float) -> float:
    return unix - GPS_EPOCH_UNIX + LEAP_SECONDS


def gps_to_unix(gps: float) -> float:
    return gps + GPS_EPOCH_UNIX - LEAP_SECONDS


@dataclass(frozen=True)
class AppTimeReq:
    device_time: int  # GPS seconds, mod 2^32
    token: int
    ans_required: bool


@dataclass(frozen=True)
class PeriodicityAns:
    not_supported: bool
    device_time: int


Uplink = AppTimeReq | PeriodicityAns | PackageVersionAns


def app_time_ans(correction: int, token: int) -> bytes:
    return struct.pack("<BiB", CID_APP_TIME, correction, token & 0x0F)


def answer(req: AppTimeReq, server_gps_at_rx: float) -> bytes:
    """AppTimeAns: how far the node's clock is behind the network's reception time."""
    correction = round(server_gps_at_rx) - req.device_time
    return app_time_ans(correction, req.token)


def device_app_time_periodicity_req(periodicity: int) -> bytes:
    return bytes([CID_DEVICE_APP_TIME_PERIODICITY, periodicity & 0x0F])


def force_device_resync_req(nb_transmissions: int = 1) -> bytes:
    if not 1 <= nb_transmissions <= 7:
        raise ValueError("NbTransmissions is 3 bits (1..7)")
    return bytes([CID_FORCE_DEVICE_RESYNC, nb_transmissions])


def _app_time_req(p: bytes, i: int) -> tuple[AppTimeReq, int]:
    t, param = struct.unpack_from("<IB", p, i + 1)
    return AppTimeReq(t, param & 0x0F, bool(param & 0x10)), 6


def _periodicity_ans(p: bytes, i: int) -> tuple[PeriodicityAns, int]:
    status, t = struct.unpack_from("<BI", p, i + 1)
    return PeriodicityAns(bool(status & 1), t), 6


def parse_uplink(payload: bytes) -> list[Uplink]:
    return parse_commands(payload, {CID_APP_TIME: _app_time_req,
                                    CID_DEVICE_APP_TIME_PERIODICITY: _periodicity_ans}, "TS003")
