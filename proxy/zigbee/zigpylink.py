"""ferry's OTA server on a coordinator that zigpy drives: the ZclLink and the Clock.

zigpy (the stack under Home Assistant's ZHA) speaks to the common coordinator radios
through one ``ControllerApplication`` API (zigpy-znp, bellows, zigpy-deconz...), which
gives ferry what Zigbee2MQTT does not: raw cluster 0x0019 frames in and out, and an
APS broadcast. So a rollout to many nodes is one Image Notify, and ferry's
``OtaServer`` serves the blocks itself.

zigpy has an OTA manager of its own, and its Ota cluster answers every Query Next
Image with NO_IMAGE_AVAILABLE unless the device is marked ``ota_in_progress``, the
flag zigpy's own ``update_firmware`` sets. ``ZigpyLink.claim`` sets it on the nodes
of a campaign and ``close`` gives them back, so the two servers never both answer.

Frames from nodes arrive through zigpy's ``handle_message`` listener event, which
zigpy raises for every packet from a known device before its own handlers run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

OTA_CLUSTER = 0x0019
HA_PROFILE = 0x0104
SRC_ENDPOINT = 1  # the coordinator's application endpoint
ZIGBEE_EPOCH = 946_684_800  # 2000-01-01T00:00:00Z, where Zigbee UTCTime counts from


def ieee_key(text: str) -> str:
    """An IEEE address as ferry and Zigbee2MQTT write it ("0x00124b0001020304"), from
    that form or zigpy's ("00:12:4b:00:01:02:03:04")."""
    digits = text.strip().lower().removeprefix("0x").replace(":", "")
    if len(digits) != 16 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"{text!r} is not an IEEE address (0x + 16 hex digits)")
    return "0x" + digits


def to_eui64(text: str) -> Any:
    import zigpy.types as t

    digits = ieee_key(text)[2:]
    return t.EUI64.convert(":".join(digits[i:i + 2] for i in range(0, 16, 2)))


def frame_tsn(frame: bytes) -> int:
    """The transaction sequence number of a ZCL frame (after a manufacturer code)."""
    return frame[3] if frame[0] & 0x04 else frame[1]


class LoopClock:
    """Seconds on the Zigbee UTC scale, and timers on the running asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def now(self) -> float:
        return time.time() - ZIGBEE_EPOCH

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self.loop.call_later(max(0.0, delay), fn)


class ZigpyLink:
    """Cluster 0x0019 frames over a zigpy ``ControllerApplication``, nodes by IEEE."""

    def __init__(self, app: Any, on_frame: Callable[[str, bytes], None]) -> None:
        self.app = app
        self.on_frame = on_frame
        self.sent = 0
        self.broadcasts = 0
        self.send_errors = 0
        self._claimed: list[Any] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        app.add_listener(self)

    # ---- zigpy listener ----------------------------------------------------------

    def handle_message(self, device: Any, profile: int, cluster: int, src_ep: int,
                       dst_ep: int, message: bytes) -> None:
        if cluster == OTA_CLUSTER:
            self.on_frame(ieee_key(str(device.ieee)), bytes(message))

    # ---- ZclLink / BroadcastLink -------------------------------------------------

    def send(self, node: str, frame: bytes) -> None:
        device = self.device(node)
        if device is None:
            log.warning("zigbee ota: %s is not in the coordinator's network; frame dropped",
                        node)
            return
        self.sent += 1
        self._spawn(self.app.request(device, HA_PROFILE, OTA_CLUSTER, SRC_ENDPOINT,
                                     ota_endpoint(device), frame_tsn(frame), frame,
                                     expect_reply=False))

    def broadcast(self, frame: bytes) -> None:
        import zigpy.types as t

        self.broadcasts += 1
        self._spawn(self.app.broadcast(HA_PROFILE, OTA_CLUSTER, SRC_ENDPOINT, 0xFF, 0, 0,
                                       frame_tsn(frame), frame,
                                       broadcast_address=t.BroadcastAddress.ALL_DEVICES))

    # ---- nodes -------------------------------------------------------------------

    def device(self, node: str) -> Any | None:
        try:
            return self.app.get_device(ieee=to_eui64(node))
        except (KeyError, ValueError):
            return None

    def claim(self, nodes: list[str]) -> None:
        """Keep zigpy's own OTA handling away from these nodes until ``close``."""
        for node in nodes:
            device = self.device(node)
            if device is not None and not device.ota_in_progress:
                device.ota_in_progress = True
                self._claimed.append(device)

    async def close(self) -> None:
        """Let queued sends finish, stop listening, and give the nodes back to zigpy."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5.0)
        self.app.remove_listener(self)
        for device in self._claimed:
            device.ota_in_progress = False
        self._claimed.clear()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The OTA exchange is client-driven: a node whose frame was lost asks again.
            self.send_errors += 1
            log.debug("zigbee ota: send failed: %s", task.exception())


def ota_client(device: Any) -> tuple[int, Any] | None:
    """(endpoint id, cluster) of the node's OTA client (an output cluster), or None."""
    for ep_id, ep in getattr(device, "endpoints", {}).items():
        cluster = getattr(ep, "out_clusters", {}).get(OTA_CLUSTER) if ep_id else None
        if cluster is not None:
            return int(ep_id), cluster
    return None


def ota_endpoint(device: Any) -> int:
    """The endpoint of the node's OTA client, else 1."""
    found = ota_client(device)
    return found[0] if found is not None else 1


def ota_nodes(app: Any) -> list[Any]:
    """The devices of the network that have an OTA client cluster."""
    return [d for d in app.devices.values() if ota_client(d) is not None]
