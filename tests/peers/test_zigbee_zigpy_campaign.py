"""A Zigbee rollout as one campaign: one broadcast Image Notify through zigpy.

The peer is zigpy (PyPI; the stack under Home Assistant's ZHA): its
``ControllerApplication`` builds every packet ferry sends (``request``, ``broadcast``),
routes every frame from a node to ferry's listener, and its Ota cluster would answer
the nodes itself if ferry did not claim them. Every OTA frame is also read with
zigpy's own Ota schema (``bad_frames`` must stay empty). Below zigpy, the radio is
sim/zigbee's network, and the nodes follow Silicon Labs' OTA client in how they take
a broadcast notify. Never skipped: .ci/deps/zigbee.pip installs zigpy.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ferry.proxy.transport import Target
from ferry.proxy.zigbee import otafile
from ferry.proxy.zigbee.transport import create as create_zigbee
from ferry.proxy.zigbee.zigpytransport import ZigpyOptions, ZigpyTransport
from ferry.sim.zigbee.network import Network
from ferry.sim.zigbee.node import NodeProfile
from ferry.sim.zigbee.zigpy_radio import (
    LoopClock,
    SimRadioApplication,
    make_network,
    open_sim_app,
    zigpy_reads,
)

MFR, ITYPE, OLD, NEW = 0x1234, 0x0042, 0x00000100, 0x00000200


def image(version: int = NEW, mfr: int = MFR, itype: int = ITYPE) -> bytes:
    hdr = otafile.OtaHeader(mfr, itype, version, header_string=b"ferry campaign")
    return otafile.build_simple(hdr, bytes(range(256)) * 3).serialize()


def profile(n: int, **kw: Any) -> NodeProfile:
    base: dict[str, Any] = dict(ieee=f"00:0d:6f:00:00:00:00:{n:02x}", manufacturer_code=MFR,
                                image_type=ITYPE, file_version=OLD, boot_time_s=0.2,
                                response_timeout_s=0.5, response_spacing_ms=5)
    base.update(kw)
    return NodeProfile(**base)


class Rig:
    """A simulated network and the opener ferry's transport uses to reach it."""

    def __init__(self, profiles: list[NodeProfile], **opts: Any) -> None:
        self.clock = LoopClock()
        self.net: Network = make_network(profiles, clock=self.clock, seed=7)
        self.apps: list[SimRadioApplication] = []
        options = dict(radio="sim", port="-", database="-", settle_s=3.0, renotify_s=10.0,
                       campaign_timeout_s=30.0, poll_s=0.1)
        options.update(opts)
        self.transport = ZigpyTransport(self.opener, ZigpyOptions(**options))

    @contextlib.asynccontextmanager
    async def opener(self) -> AsyncIterator[Any]:
        app = await open_sim_app(self.net, self.clock)
        self.apps.append(app)
        try:
            yield app
        finally:
            await app.shutdown(db=False)

    def node(self, n: int) -> Any:
        return self.net.nodes[f"00:0d:6f:00:00:00:00:{n:02x}"]

    def flash(self, address: str = "*", data: bytes | None = None, **options: str) -> Any:
        target = Target(name="sensors", transport="zigbee", address=address,
                        hardware_id=f"0x{MFR:04X}:0x{ITYPE:04X}", options=options)
        seen: list[tuple[int, int, str]] = []
        res = self.transport.flash(target, io.BytesIO(data or image()),
                                   progress=lambda d, t, w: seen.append((d, t, w)))
        res.progress = seen
        return res


def test_a_population_is_updated_by_one_broadcast_notify() -> None:
    rig = Rig([profile(1), profile(2), profile(3), profile(4),
               profile(5, manufacturer_code=0x5678)])
    res = rig.flash()
    assert res.ok, res.message
    app = rig.apps[-1]
    assert app.bad_frames == []
    assert app.sent_broadcast == 1  # the one Image Notify
    assert res.detail["notify"] == "1 broadcast, 0 unicast"
    for n in (1, 2, 3, 4):
        assert rig.node(n).version == NEW
        assert res.detail[f"node.0x000d6f00000000{n:02x}"] == "ok"
    # Another manufacturer's node ignored the typed broadcast and was never served.
    assert rig.node(5).version == OLD and rig.node(5).stats.requests == 0
    assert res.detail["node.0x000d6f0000000005"].startswith("skipped: did not ask")
    assert "4 of 5 node(s) updated, 1 skipped, 0 failed" in res.message
    assert "one campaign" in res.message
    # zigpy's own OTA handling is given the nodes back
    assert not any(d.ota_in_progress for d in app.devices.values())
    assert res.progress and res.progress[-1][0] == 4 * len(image())


def test_a_rollout_to_some_nodes_serves_only_those() -> None:
    rig = Rig([profile(1), profile(2), profile(3)])
    res = rig.flash(devices="0x000d6f0000000001,0x000d6f0000000003")
    assert res.ok, res.message
    assert rig.node(1).version == NEW and rig.node(3).version == NEW
    # node 2 heard the broadcast and asked, and ferry told it no image is for it
    assert rig.node(2).version == OLD and rig.node(2).stats.requests >= 1
    assert "node.0x000d6f0000000002" not in res.detail
    assert rig.apps[-1].sent_broadcast == 1 and rig.apps[-1].bad_frames == []


def test_one_node_is_notified_by_unicast() -> None:
    rig = Rig([profile(1), profile(2)])
    res = rig.flash("0x000d6f0000000002")
    assert res.ok and res.version == f"0x{NEW:08X}", res.message
    assert rig.apps[-1].sent_broadcast == 0
    assert res.detail["notify"] == "0 broadcast, 1 unicast"
    assert rig.node(2).version == NEW and rig.node(1).version == OLD
    assert rig.node(1).stats.requests == 0


def test_a_node_on_the_version_already_is_skipped() -> None:
    rig = Rig([profile(1, file_version=NEW)])
    res = rig.flash("00:0d:6f:00:00:00:00:01")
    assert res.ok and res.skipped, res.message
    assert "already runs" in res.message
    assert rig.node(1).stats.upgrades == 0


def test_a_silent_named_node_fails_after_unicast_retries_and_the_rest_finish() -> None:
    rig = Rig([profile(1), profile(2)], campaign_timeout_s=5.0, renotify_s=1.5)
    rig.node(2).powered = False  # off the network for the whole campaign
    res = rig.flash(devices="0x000d6f0000000001,00:0d:6f:00:00:00:00:02")
    assert not res.ok
    assert res.detail["node.0x000d6f0000000001"] == "ok"
    assert res.detail["node.0x000d6f0000000002"].startswith(
        "failed: no answer to the image notify")
    assert "1 of 2 node(s) updated, 0 skipped, 1 failed" in res.message
    unicast = int(res.detail["notify"].split(", ")[1].split()[0])
    assert unicast >= 1  # the silent node was asked again, by unicast


def test_a_node_unknown_to_the_coordinator_is_refused() -> None:
    rig = Rig([profile(1)])
    res = rig.flash(devices="0x000d6f0000000009")
    assert not res.ok
    assert "0x000d6f0000000009 not in the coordinator's network" in res.message
    assert rig.apps[-1].sent_broadcast == 0


def test_a_wrong_image_is_refused_before_the_radio_is_opened() -> None:
    rig = Rig([profile(1)])
    res = rig.flash(data=image(mfr=0x9999))
    assert not res.ok and "manufacturer" in res.message
    assert rig.apps == []


def test_without_the_claim_zigpy_itself_would_answer_the_nodes() -> None:
    """Why ZigpyLink.claim exists: zigpy's Ota cluster answers an unclaimed node's
    query with NO_IMAGE_AVAILABLE (here over the same simulated air)."""
    import asyncio

    rig = Rig([profile(1)])

    async def main() -> list[bytes]:
        async with rig.opener():
            got: list[bytes] = []
            node = rig.node(1)
            real = node.receive
            node.receive = lambda frame, **kw: (got.append(frame), real(frame, **kw))
            node._query()
            await asyncio.sleep(1.0)
            return got

    got = asyncio.run(main())
    assert got and got[0][2] == 0x02 and got[0][3] == 0x98  # Query Next Image Rsp, NO_IMAGE


def test_zigpy_reads_what_ferry_sends_and_rejects_garbage() -> None:
    assert zigpy_reads(bytes.fromhex("19010003643412420000020000")) == ""
    assert "unread" in zigpy_reads(bytes.fromhex("1901000364341242000002000000"))
    assert zigpy_reads(bytes.fromhex("190100")) != ""


def test_the_adapter_options_say_what_is_missing() -> None:
    from ferry.proxy.zigbee.errors import AdapterError

    with pytest.raises(AdapterError, match="radio = one of"):
        create_zigbee({"adapter": "zigpy"})
    with pytest.raises(AdapterError, match="needs port"):
        create_zigbee({"adapter": "zigpy", "radio": "znp"})
    with pytest.raises(AdapterError, match="needs database"):
        create_zigbee({"adapter": "zigpy", "radio": "znp", "port": "/dev/ttyUSB0"})
    t = create_zigbee({"adapter": "zigpy", "radio": "znp", "port": "/dev/ttyUSB0",
                       "database": "/tmp/zigbee.db"})
    res = t.flash(Target("n", "zigbee", "*", f"0x{MFR:04X}:0x{ITYPE:04X}"),
                  io.BytesIO(image()), progress=lambda *a: None)
    assert not res.ok and "pip install zigpy-znp" in res.message
