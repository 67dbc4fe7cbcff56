"""A zigpy radio whose air is this simulator's network: zigpy above, simulated nodes below.

A zigpy radio library (zigpy-znp's ``zigpy_znp/zigbee/application.py``, bellows,
zigpy-deconz) subclasses zigpy's ``ControllerApplication`` and supplies a few methods:
``connect``/``start_network`` to bring the coordinator up, ``send_packet`` to put a
``ZigbeePacket`` on the air (unicast by NWK address, or broadcast), and a call to
``packet_received`` for each frame that arrives. ``SimRadioApplication`` supplies the
same methods over ``network.Network``, so everything above them is zigpy's own code:
``request`` and ``broadcast`` building the packets, device lookup, the
``handle_message`` listener event, and zigpy's Ota cluster, which answers a node's
query itself unless the device is marked ``ota_in_progress``.

Every cluster 0x0019 frame that goes out is also read with zigpy's Ota cluster
schema (``zigpy.zcl``), the independent parser: a frame zigpy cannot read is counted
in ``bad_frames`` and never reaches a node. ZDO traffic (endpoint 0) is dropped: the
nodes are added as already interviewed, as a coordinator's database would have them.

Time is the asyncio loop's (``LoopClock``), since zigpy runs on one: the nodes keep
their simulated behaviour (retries, polling, boot time) in real seconds, so tests
give them small images and short boot times.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import zigpy.application
import zigpy.config as conf
import zigpy.endpoint
import zigpy.types as t
import zigpy.zdo.types as zdo_t
from zigpy.zcl import foundation
from zigpy.zcl.clusters.general import Ota

from ferry.sim.zigbee.network import Network, RadioModel
from ferry.sim.zigbee.node import NodeProfile

OTA_CLUSTER = 0x0019
ZIGBEE_EPOCH = 946_684_800


class LoopClock:
    """The simulator's clock interface on a running asyncio loop (Zigbee UTC seconds)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def now(self) -> float:
        return time.time() - ZIGBEE_EPOCH

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_later(max(0.0, delay), fn)


class SimRadioApplication(zigpy.application.ControllerApplication):
    """zigpy's application layer over ``Network``; see the module docstring."""

    net: Network
    bad_frames: list[str]
    sent_unicast: int
    sent_broadcast: int

    async def connect(self) -> None:
        self.state.node_info.nwk = t.NWK(0x0000)
        self.state.node_info.ieee = t.EUI64.convert("00:12:4b:00:00:00:00:01")
        self.state.node_info.logical_type = zdo_t.LogicalType.Coordinator

    async def disconnect(self) -> None:
        return None

    async def start_network(self) -> None:
        return None

    async def force_remove(self, dev: Any) -> None:
        return None

    async def add_endpoint(self, descriptor: Any) -> None:
        return None

    async def permit_ncp(self, time_s: int = 60) -> None:
        return None

    async def permit_with_link_key(self, node: Any, link_key: Any, time_s: int = 60) -> None:
        return None

    async def write_network_info(self, *, network_info: Any, node_info: Any) -> None:
        return None

    async def load_network_info(self, *, load_devices: bool = False) -> None:
        return None

    async def reset_network_info(self) -> None:
        return None

    async def send_packet(self, packet: t.ZigbeePacket) -> None:
        if packet.dst_ep == 0 or packet.profile_id == 0:
            return  # ZDO: the nodes are already interviewed
        data = packet.data.serialize()
        if packet.cluster_id == OTA_CLUSTER:
            problem = zigpy_reads(data)
            if problem:
                self.bad_frames.append(problem)
                return
        dst = packet.dst
        if dst is None:
            return
        if dst.addr_mode == t.AddrMode.Broadcast:
            self.sent_broadcast += 1
            self.net.broadcast(data)
            return
        device = self.get_device(nwk=t.NWK(int(dst.address)))  # type: ignore[arg-type]
        self.sent_unicast += 1
        self.net.send(str(device.ieee), data)

    def from_node(self, ieee: str, frame: bytes) -> None:
        """A frame a node sent, as the radio library hands it to zigpy."""
        device = self.get_device(ieee=t.EUI64.convert(ieee))
        self.packet_received(t.ZigbeePacket(
            src=t.AddrModeAddress(addr_mode=t.AddrMode.NWK, address=device.nwk),
            src_ep=t.uint8_t(1),
            dst=t.AddrModeAddress(addr_mode=t.AddrMode.NWK, address=t.NWK(0x0000)),
            dst_ep=t.uint8_t(1), tsn=t.uint8_t(frame[1]), profile_id=t.uint16_t(0x0104),
            cluster_id=t.uint16_t(OTA_CLUSTER), data=t.SerializableBytes(frame),
            lqi=t.uint8_t(255), rssi=t.int8s(-40)))


def zigpy_reads(frame: bytes) -> str:
    """Why zigpy's Ota cluster cannot read ``frame`` (a server-to-client command), or ""."""
    try:
        hdr, rest = foundation.ZCLHeader.deserialize(frame)
        if hdr.direction != foundation.Direction.Server_to_Client:
            return f"frame {frame.hex()} is not server-to-client"
        cmd = Ota.client_commands[hdr.command_id]
        _, left = cmd.schema.deserialize(rest)
    except (KeyError, ValueError) as err:
        return f"zigpy cannot read {frame.hex()}: {err}"
    if left:
        return f"zigpy left {len(left)} byte(s) unread in {frame.hex()}"
    return ""


def add_node(app: SimRadioApplication, ieee: str, nwk: int) -> None:
    """Register a node as an interviewed device with the OTA client on endpoint 1."""
    device = app.add_device(t.EUI64.convert(ieee), t.NWK(nwk))
    device.node_desc = zdo_t.NodeDescriptor(
        logical_type=zdo_t.LogicalType.EndDevice, manufacturer_code=0x1234,
        maximum_buffer_size=82, maximum_incoming_transfer_size=82,
        server_mask=0, maximum_outgoing_transfer_size=82, descriptor_capability_field=0,
        complex_descriptor_available=0, user_descriptor_available=0, reserved=0,
        aps_flags=0, frequency_band=zdo_t.NodeDescriptor.FrequencyBand.Freq2400MHz,
        mac_capability_flags=zdo_t.NodeDescriptor.MACCapabilityFlags.AllocateAddress)
    ep = device.add_endpoint(1)
    ep.profile_id = 0x0104
    ep.add_input_cluster(0x0000)
    ep.add_output_cluster(OTA_CLUSTER)
    ep.status = zigpy.endpoint.Status.ZDO_INIT


def make_network(profiles: list[NodeProfile], *, clock: LoopClock, loss: float = 0.0,
                 seed: int = 1) -> Network:
    net = Network(clock, RadioModel(loss=loss), seed=seed)  # type: ignore[arg-type]
    for p in profiles:
        net.add(p)
    return net


async def open_sim_app(net: Network, clock: LoopClock) -> SimRadioApplication:
    """A started application on the running loop, with every node of ``net`` known."""
    clock.bind(asyncio.get_running_loop())
    app = SimRadioApplication({conf.CONF_DEVICE: {conf.CONF_DEVICE_PATH: "/dev/null"},
                               conf.CONF_DATABASE: None,
                               conf.CONF_OTA: {conf.CONF_OTA_ENABLED: False}})
    app.net, app.bad_frames, app.sent_unicast, app.sent_broadcast = net, [], 0, 0
    await app.connect()
    for i, ieee in enumerate(net.nodes):
        add_node(app, ieee, 0x1000 + i)
    net.attach(app.from_node)
    return app
