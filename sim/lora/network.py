"""A simulated network server, radio channel and clock for FUOTA.

It has the methods ferry's NetworkServer seam asks for (structurally: nothing of
ferry.proxy is imported). Time is a discrete-event simulation: ``receive`` runs the
event queue forward to the next uplink or the timeout, so a 30-minute duty-cycled
broadcast runs in well under a second.

Channel models: independent loss with probability p, and Gilbert-Elliott burst loss
(a good and a bad state with their own loss; bursts last 1/p_bg frames on average).
Class A unicast downlinks wait for the node's next uplink, modelled as a uniform delay
up to the uplink period; they can be lost too, which exercises ferry's resends.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from ferry.sim.lora.node import Node


class SimClock:
    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.t += seconds


class Channel:
    """Decides per frame whether one node hears it."""

    def lost(self, rng: random.Random) -> bool:
        raise NotImplementedError


@dataclass
class Bernoulli(Channel):
    p: float

    def lost(self, rng: random.Random) -> bool:
        return rng.random() < self.p


@dataclass
class GilbertElliott(Channel):
    p_gb: float  # good -> bad per frame
    p_bg: float  # bad -> good per frame
    loss_good: float = 0.0
    loss_bad: float = 1.0
    bad: bool = False

    def lost(self, rng: random.Random) -> bool:
        if self.bad:
            self.bad = rng.random() >= self.p_bg
        else:
            self.bad = rng.random() < self.p_gb
        return rng.random() < (self.loss_bad if self.bad else self.loss_good)

    @property
    def mean_loss(self) -> float:
        pi_bad = self.p_gb / (self.p_gb + self.p_bg)
        return pi_bad * self.loss_bad + (1 - pi_bad) * self.loss_good


@dataclass
class SimUplink:
    dev_eui: str
    fport: int
    payload: bytes
    received_at: float
    node: Node | None = None  # set on a node's repeated FragDataBlockReceivedReq

    def wanted(self) -> bool:
        """A resend the node has stopped (its FragDataBlockReceivedAns arrived) never goes."""
        if self.node is None:
            return True
        return self.node.block_req_wanted(self.payload[1] & 3)


@dataclass
class _Down:
    node: Node
    port: int
    payload: bytes


@dataclass
class _Group:
    addr: int
    app_s_key: bytes
    members: list[str]
    sent: int = 0


@dataclass
class Stats:
    unicast: int = 0
    multicast: int = 0
    uplinks: int = 0
    unicast_lost: int = 0


@dataclass
class SimNetwork:
    clock: SimClock
    nodes: dict[str, Node]
    channels: dict[str, Channel] = field(default_factory=dict)
    uplink_period: float = 60.0
    unicast_loss: float = 0.0
    seed: int = 0
    rng: random.Random = field(init=False)
    groups: dict[str, _Group] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    trace: list[tuple[float, str, str, int, bytes]] = field(default_factory=list)
    keep_trace: bool = False
    _queue: list[tuple[float, int, SimUplink | _Down]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.nodes = {k.lower(): v for k, v in self.nodes.items()}

    # -- events -------------------------------------------------------------------

    def _at(self, t: float, item: SimUplink | _Down) -> None:
        heapq.heappush(self._queue, (t, next(self._seq), item))

    def _deliver(self, node: Node, port: int, payload: bytes, at: float) -> None:
        for delay, uport, up in node.downlink(port, payload, at):
            t = at + delay
            repeat = node if uport == 201 and up[:1] == b"\x04" else None
            self._at(t, SimUplink(node.dev_eui.lower(), uport, up, t, repeat))

    # -- the NetworkServer methods --------------------------------------------------

    def send_unicast(self, dev_eui: str, fport: int, payload: bytes) -> None:
        eui = dev_eui.lower()
        self.stats.unicast += 1
        if self.keep_trace:
            self.trace.append((self.clock.now(), "unicast", eui, fport, payload))
        node = self.nodes.get(eui)
        if node is None:
            return
        if self.rng.random() < self.unicast_loss:
            self.stats.unicast_lost += 1
            return
        t = self.clock.now() + self.rng.uniform(0.0, self.uplink_period)
        self._at(t, _Down(node, fport, payload))

    def configure_multicast(self, group: Any, dev_euis: list[str]) -> None:
        self.groups[group.group_id] = _Group(group.mc_addr, group.mc_app_s_key,
                                             [e.lower() for e in dev_euis])

    def send_multicast(self, group_id: str, fport: int, payload: bytes) -> None:
        g = self.groups[group_id]
        g.sent += 1
        self.stats.multicast += 1
        if self.keep_trace:
            self.trace.append((self.clock.now(), "multicast", group_id, fport, payload))
        now = self.clock.now()
        for eui in g.members:
            node = self.nodes.get(eui)
            if node is None:
                continue
            gid = next((i for i, mg in node.groups.items()
                        if mg.addr == g.addr and mg.app_s_key == g.app_s_key), None)
            if gid is None or not node.listening(gid, now):
                continue  # wrong keys, not set up, or outside its class C window
            ch = self.channels.get(eui)
            if ch is not None and ch.lost(self.rng):
                continue
            self._deliver(node, fport, payload, now)

    def receive(self, timeout: float) -> SimUplink | None:
        deadline = self.clock.now() + max(timeout, 0.0)
        while self._queue and self._queue[0][0] <= deadline:
            t, _seq, item = heapq.heappop(self._queue)
            self.clock.t = max(self.clock.t, t)
            if isinstance(item, SimUplink):
                if not item.wanted():
                    continue
                self.stats.uplinks += 1
                return item
            self._deliver(item.node, item.port, item.payload, t)
        self.clock.t = max(self.clock.t, deadline)
        return None

    def close(self) -> None:
        self._queue.clear()
