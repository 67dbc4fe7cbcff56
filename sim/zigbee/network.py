"""A shared 2.4 GHz channel between the gateway's coordinator and the nodes.

Every frame occupies the one channel for its airtime (250 kbit/s, PHY+MAC+NWK+APS
overhead and a MAC ACK per hop), hop by hop, so a population competes for air the way
it does in a real network. Frames are lost end-to-end with probability ``loss``; a
sleepy node hears a frame only when it next polls its parent, which drops frames it
holds longer than 7.68 s. ``send(node, frame)`` has the shape of ferry's ZclLink,
and ``broadcast(frame)`` of its BroadcastLink.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from ferry.sim.zigbee.clock import SimClock
from ferry.sim.zigbee.node import NodeProfile, SimNode

PHY_BYTES = 6  # preamble, SFD, length
MAC_BYTES = 11  # frame control, seq, PAN, short addresses, FCS
NWK_BYTES = 8
APS_BYTES = 8
ACK_BYTES = 11  # MAC ACK (5 bytes + PHY 6)
OVERHEAD = PHY_BYTES + MAC_BYTES + NWK_BYTES + APS_BYTES


@dataclass
class RadioModel:
    loss: float = 0.0
    bitrate: int = 250_000
    turnaround_s: float = 0.0015  # CSMA backoff + RX/TX turnaround + ACK wait per hop
    hop_delay_s: tuple[float, float] = (0.002, 0.015)  # stack processing per hop
    parent_buffer_s: float = 7.68


@dataclass
class NetStats:
    frames: int = 0
    lost: int = 0
    dropped_by_parent: int = 0
    bytes_on_air: int = 0


class Network:
    def __init__(self, clock: SimClock, radio: RadioModel, seed: int = 1) -> None:
        self.clock = clock
        self.radio = radio
        self.rng = random.Random(seed)
        self.nodes: dict[str, SimNode] = {}
        self.server: Callable[[str, bytes], None] | None = None
        self.channel_free_at = 0.0
        self.stats = NetStats()

    def add(self, profile: NodeProfile) -> SimNode:
        node = SimNode(profile, self, self.clock, random.Random(self.rng.random()))
        self.nodes[profile.ieee] = node
        return node

    def attach(self, handler: Callable[[str, bytes], None] | None) -> None:
        """Where frames from nodes go (ferry's OtaServer.handle_frame, or None: lost)."""
        self.server = handler

    def start(self, spread_s: float = 30.0) -> None:
        for node in self.nodes.values():
            node.start(spread_s)

    def _air(self, nbytes: int, hops: int) -> float:
        """Occupy the channel for ``hops`` transmissions; the time the last one ends."""
        t = self.clock.now()
        r = self.radio
        per_hop = (nbytes + OVERHEAD + ACK_BYTES) * 8 / r.bitrate + r.turnaround_s
        for _ in range(hops):
            start = max(t, self.channel_free_at)
            self.channel_free_at = start + per_hop
            t = start + per_hop + self.rng.uniform(*r.hop_delay_s)
        self.stats.frames += 1
        self.stats.bytes_on_air += (nbytes + OVERHEAD + ACK_BYTES) * hops
        return t

    def _lost(self) -> bool:
        if self.rng.random() < self.radio.loss:
            self.stats.lost += 1
            return True
        return False

    def to_server(self, node: SimNode, frame: bytes) -> None:
        arrive = self._air(len(frame), node.p.hops)
        if self._lost():
            return
        ieee = node.ieee

        def deliver() -> None:
            if self.server is not None:
                self.server(ieee, frame)
        self.clock.call_later(arrive - self.clock.now(), deliver)

    def send(self, node_id: str, frame: bytes) -> None:
        node = self.nodes.get(node_id)
        if node is None:
            return
        arrive = self._air(len(frame), node.p.hops)
        if self._lost():
            return
        wait = self._parent_wait(node)
        if wait is None:
            return
        self.clock.call_later(arrive + wait - self.clock.now(), lambda: node.receive(frame))

    def _parent_wait(self, node: SimNode) -> float | None:
        """How long the node's parent holds a frame until the node polls for it (0 for
        a node that is always listening); None when it gives up first (7.68 s)."""
        if not node.p.sleepy:
            return 0.0
        wait = self.rng.uniform(0, node.poll_interval())
        if wait > self.radio.parent_buffer_s:
            self.stats.dropped_by_parent += 1
            return None
        return wait

    def broadcast(self, frame: bytes) -> None:
        """One frame to every node (APS broadcast to 0xFFFF).

        The coordinator sends it once and every router relays it once, so it costs
        the air of one frame per hop of the deepest node, not one per node. Each node
        still loses it on its own, and a sleepy node gets it only if its parent still
        holds it when it polls (the same 7.68 s as a unicast).
        """
        if not self.nodes:
            return
        depth = max(n.p.hops for n in self.nodes.values())
        self._air(len(frame), depth)
        for node in self.nodes.values():
            if self._lost():
                continue
            wait = self._parent_wait(node)
            if wait is None:
                continue

            def deliver(node: SimNode = node) -> None:
                node.receive(frame, broadcast=True)
            self.clock.call_later(
                self.rng.uniform(*self.radio.hop_delay_s) * node.p.hops + wait, deliver)
