"""The seam between ferry's FUOTA logic and a LoRaWAN network server.

ferry never talks to a concentrator itself: a network server owns the MAC layer (class A
receive windows, frame counters, encryption, gateway choice). FUOTA needs only four
things from it, so the seam is that small. The real adapter is ChirpStack's MQTT
integration plus its REST API (``chirpstack.py``); the simulator (``ferry.sim.lora``)
provides the same methods for tests and the bench.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Uplink:
    dev_eui: str  # lower-case hex, 16 digits
    fport: int
    payload: bytes
    received_at: float  # unix seconds at the network's reception


class UplinkLike(Protocol):
    """What the campaign reads from an uplink (the simulator has its own class)."""

    @property
    def dev_eui(self) -> str: ...

    @property
    def fport(self) -> int: ...

    @property
    def payload(self) -> bytes: ...

    @property
    def received_at(self) -> float: ...


@dataclass(frozen=True)
class MulticastGroup:
    group_id: str  # the network server's name for it (ChirpStack: a UUID)
    mc_addr: int
    mc_app_s_key: bytes
    mc_net_s_key: bytes
    dr: int
    frequency_hz: int


class NetworkServer(Protocol):
    def send_unicast(self, dev_eui: str, fport: int, payload: bytes) -> None:
        """Queue a class A downlink; it goes out after the node's next uplink."""

    def configure_multicast(self, group: MulticastGroup, dev_euis: list[str]) -> None:
        """Make the server's multicast group carry these keys, DR and frequency."""

    def send_multicast(self, group_id: str, fport: int, payload: bytes) -> None:
        """Queue one downlink to the multicast group (class C, sent as soon as allowed)."""

    def receive(self, timeout: float) -> UplinkLike | None:
        """The next uplink, or None after `timeout` seconds of the caller's clock."""

    def close(self) -> None: ...


class Clock(Protocol):
    """Unix time and sleeping; the simulator's clock jumps instead of waiting."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        import time

        return time.time()

    def sleep(self, seconds: float) -> None:
        import time

        if seconds > 0:
            time.sleep(seconds)
