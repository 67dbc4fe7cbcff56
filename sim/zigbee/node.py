"""One simulated Zigbee node: the OTA Upgrade client as the cluster spec describes it.

It queries (at boot, periodically, and after Image Notify), downloads with Image Block
or Image Page requests at its own pace, honours WAIT_FOR_DATA and the MinimumBlockPeriod
it is given, retries lost requests, checks the downloaded file like a bootloader would,
sends Upgrade End, and reboots into the new version at the upgrade time. Some nodes
sleep (they only hear the parent when they poll) and some power-cycle mid-transfer.

Image Notify handling follows Silicon Labs' OTA client plugin (simplicity_sdk,
protocol/zigbee/app/framework/plugin/ota-client/ota-client.c): unicast and broadcast
notifies are treated differently there, and a campaign depends on that difference.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ferry.sim.zigbee import wire

if TYPE_CHECKING:
    from ferry.sim.zigbee.clock import SimClock


class Uplink(Protocol):
    """The one thing a node needs of the network: a way to send a frame to the server.

    A protocol rather than ``network.Network`` so node and network do not import each
    other (tests/unit/test_architecture.py finds cycles)."""

    def to_server(self, node: SimNode, frame: bytes) -> None: ...


IDLE, DOWNLOAD, END, OFF = "idle", "download", "end", "off"


@dataclass
class NodeProfile:
    ieee: str
    manufacturer_code: int
    image_type: int
    file_version: int
    hardware_version: int | None = None
    max_data_size: int = 50
    block_period_ms: int = 0  # the node's own pace between block requests
    page_size: int = 0  # > 0: uses Image Page Request with this page size
    response_spacing_ms: int = 20
    sleepy: bool = False
    fast_poll_s: float = 0.25  # sleepy node polling its parent while it downloads
    slow_poll_s: float = 30.0  # ... and while idle (parent keeps a frame 7.68 s)
    reboot_at: float | None = None  # power-cycles once at this fraction of a download
    persist_offset: bool = False  # keeps the partial download across a power cycle
    query_interval_s: float = 600.0
    boot_time_s: float = 5.0
    response_timeout_s: float = 1.5
    max_retries: int = 10
    hops: int = 1


@dataclass
class NodeStats:
    requests: int = 0
    timeouts: int = 0
    waits: int = 0
    reboots: int = 0
    upgrades: int = 0
    bytes_received: int = 0
    invalid_images: int = 0


@dataclass
class _Download:
    version: int
    size: int
    buf: bytearray = field(default_factory=bytearray)
    page_end: int = 0


class SimNode:
    def __init__(self, profile: NodeProfile, net: Uplink, clock: SimClock,
                 rng: random.Random) -> None:
        self.p = profile
        self.net = net
        self.clock = clock
        self.rng = rng
        self.version = profile.file_version
        self.state = IDLE
        self.powered = True
        self.dl: _Download | None = None
        self.period_ms = profile.block_period_ms
        self.retries = 0
        self.query_retries = 0
        self.gen = 0  # bumps cancel pending timeouts and retries
        self.seq = rng.randrange(256)
        self.rebooted_once = False
        self.stats = NodeStats()
        self.last_image_sha256 = ""
        self.upgraded_at: float | None = None
        self.last_tx = -1e18

    @property
    def ieee(self) -> str:
        return self.p.ieee

    def poll_interval(self) -> float:
        """A sleepy node polls fast while it downloads or waits for an answer to what it
        just sent, and slowly otherwise (so it usually misses an unsolicited Notify)."""
        awaiting = self.clock.now() - self.last_tx < 10.0
        if self.state in (DOWNLOAD, END) or awaiting:
            return self.p.fast_poll_s
        return self.p.slow_poll_s

    def _timeout_s(self) -> float:
        base = self.p.response_timeout_s * self.p.hops
        return base + (4 * self.p.fast_poll_s if self.p.sleepy else 0.0)

    # ---- lifecycle ---------------------------------------------------------------

    def start(self, spread_s: float = 30.0) -> None:
        self.clock.call_later(self.rng.uniform(0, spread_s), self._query)
        self._schedule_periodic()

    def _schedule_periodic(self) -> None:
        def tick() -> None:
            if self.powered and self.state == IDLE:
                self._query()
            self._schedule_periodic()
        self.clock.call_later(self.p.query_interval_s * self.rng.uniform(0.8, 1.2), tick)

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFF
        return self.seq

    def _send(self, frame: bytes) -> None:
        self.stats.requests += 1
        self.last_tx = self.clock.now()
        self.net.to_server(self, frame)

    def _query(self) -> None:
        if not self.powered or self.state != IDLE:
            return
        self.gen += 1
        gen = self.gen
        self._send(wire.query_next_image(self._next_seq(), self.p.manufacturer_code,
                                         self.p.image_type, self.version,
                                         self.p.hardware_version))

        def retry() -> None:
            if self.gen == gen and self.state == IDLE and self.query_retries < 3:
                self.query_retries += 1
                self._query()
        self.clock.call_later(self._timeout_s() + 3.0, retry)

    def _power_cycle(self) -> None:
        self.stats.reboots += 1
        self.powered = False
        self.state = OFF
        self.gen += 1
        if not self.p.persist_offset:
            self.dl = None

        def boot() -> None:
            self.powered = True
            self.state = IDLE
            self.query_retries = 0
            self._query()
        self.clock.call_later(self.p.boot_time_s, boot)

    # ---- requests ----------------------------------------------------------------

    def _request(self) -> None:
        dl = self.dl
        if not self.powered or self.state != DOWNLOAD or dl is None:
            return
        self.gen += 1
        gen = self.gen
        off = len(dl.buf)
        if self.p.page_size:
            dl.page_end = min(off + self.p.page_size, dl.size)
            self._send(wire.image_page(self._next_seq(), self.p.manufacturer_code,
                                       self.p.image_type, dl.version, off,
                                       self.p.max_data_size, self.p.page_size,
                                       self.p.response_spacing_ms))
        else:
            self._send(wire.image_block(self._next_seq(), self.p.manufacturer_code,
                                        self.p.image_type, dl.version, off,
                                        self.p.max_data_size, self.period_ms or None))
        self._arm_timeout(gen)

    def _arm_timeout(self, gen: int) -> None:
        def expire() -> None:
            if self.gen != gen or self.state not in (DOWNLOAD, END) or not self.powered:
                return
            self.stats.timeouts += 1
            self.retries += 1
            if self.retries > self.p.max_retries:
                # Give up this attempt; keep the partial file (FileOffset) and ask later.
                self.state = IDLE
                self.retries = 0
                self.clock.call_later(self.rng.uniform(10, 60), self._query)
                return
            if self.state == DOWNLOAD:
                self._request()
            else:
                self._send_upgrade_end()
        self.clock.call_later(self._timeout_s(), expire)

    def _send_upgrade_end(self) -> None:
        dl = self.dl
        assert dl is not None
        self.gen += 1
        problem = wire.check_ota_file(bytes(dl.buf), self.p.manufacturer_code,
                                      self.p.image_type, dl.version)
        status = wire.ST_SUCCESS if not problem else wire.ST_INVALID_IMAGE
        self._send(wire.upgrade_end(self._next_seq(), status, self.p.manufacturer_code,
                                    self.p.image_type, dl.version))
        if problem:
            self.stats.invalid_images += 1
            self.dl = None
            self.state = IDLE
            self.clock.call_later(self.rng.uniform(10, 60), self._query)
            return
        self._arm_timeout(self.gen)

    # ---- frames in ---------------------------------------------------------------

    def receive(self, frame: bytes, *, broadcast: bool = False) -> None:
        if not self.powered:
            return
        name, f = wire.parse_from_server(frame)
        if name == "image_notify":
            self._on_notify(f, broadcast)
        elif name == "query_next_image_response":
            self._on_query_response(f)
        elif name == "image_block_response":
            self._on_block(f)
        elif name == "upgrade_end_response":
            self._on_upgrade_end_response(f)

    def _on_notify(self, f: dict[str, int], broadcast: bool) -> None:
        """Image Notify as Silicon Labs' client (ota-client.c, ``imageNotifyParse``)
        takes it: a unicast is always answered with a query; a broadcast is dropped
        when its payload type, jitter or length is invalid, when it names another
        manufacturer or image type, or the version the node already runs (so a mass
        re-install needs unicasts), and otherwise answered only if a random 1..100
        is within the query jitter. The query goes out at once (``SEND_QUERY_NOW``);
        only a node idle between queries listens."""
        if self.state != IDLE:
            return
        if broadcast:
            ptype, jitter = f["payload_type"], f["jitter"]
            if ptype > 3 or not 1 <= jitter <= 100:
                return
            if f["length"] != 2 + (0, 2, 4, 8)[ptype]:
                return
            if ptype >= 1 and f["mfr"] != self.p.manufacturer_code:
                return
            if ptype >= 2 and f["itype"] != self.p.image_type:
                return
            if ptype >= 3 and f["version"] == self.version:
                return
            if jitter < 100 and self.rng.randint(1, 100) > jitter:
                return
        self.query_retries = 0
        self._query()

    def _on_query_response(self, f: dict[str, int]) -> None:
        if self.state != IDLE:
            return
        self.gen += 1  # cancels the query retry
        if f["status"] != wire.ST_SUCCESS:
            return
        if (f["mfr"], f["itype"]) != (self.p.manufacturer_code, self.p.image_type):
            return
        dl = self.dl
        if dl is None or dl.version != f["version"] or dl.size != f["size"]:
            self.dl = _Download(f["version"], f["size"])
        self.state = DOWNLOAD
        self.retries = 0
        self._request()

    def _on_block(self, f: dict[str, object]) -> None:
        dl = self.dl
        if self.state != DOWNLOAD or dl is None:
            return
        status = f["status"]
        if status == wire.ST_WAIT_FOR_DATA:
            self.stats.waits += 1
            self.retries = 0
            self.gen += 1
            period = int(f["period_ms"])  # type: ignore[call-overload]
            self.period_ms = max(self.p.block_period_ms, period)
            delay = int(f["request_time"]) - int(f["current_time"])  # type: ignore[call-overload]
            wait = delay if delay > 0 else max(period / 1000.0, 0.05)
            self.clock.call_later(wait, self._request)
            return
        if status != wire.ST_SUCCESS:
            self.dl = None  # ABORT / NO_IMAGE_AVAILABLE: drop this download
            self.state = IDLE
            self.gen += 1
            self.clock.call_later(self.rng.uniform(30, 120), self._query)
            return
        if f["version"] != dl.version:
            return
        data = f["data"]
        assert isinstance(data, bytes)
        off = len(dl.buf)
        if f["offset"] != off:
            if self.p.page_size and int(f["offset"]) > off:  # type: ignore[call-overload]
                self._request()  # a block of this page was lost: ask again from the gap
            return
        dl.buf += data
        self.stats.bytes_received += len(data)
        self.retries = 0
        done = len(dl.buf)
        if (self.p.reboot_at is not None and not self.rebooted_once
                and done >= self.p.reboot_at * dl.size):
            self.rebooted_once = True
            self._power_cycle()
            return
        if done >= dl.size:
            self.state = END
            self.clock.call_later(0.01, self._send_upgrade_end)
            return
        if self.p.page_size:
            if done >= dl.page_end:
                self.clock.call_later(self.period_ms / 1000.0, self._request)
            else:
                self.gen += 1
                self._arm_timeout(self.gen)
            return
        self.gen += 1
        self.clock.call_later(self.period_ms / 1000.0, self._request)

    def _on_upgrade_end_response(self, f: dict[str, int]) -> None:
        dl = self.dl
        if self.state != END or dl is None or f["version"] != dl.version:
            return
        self.gen += 1
        if f["upgrade_time"] == 0xFFFFFFFF:
            self.state = IDLE  # wait for a later command; ask again on the next query
            return
        delay = 0 if f["upgrade_time"] == 0 else max(0, f["upgrade_time"] - f["current_time"])
        self.state = OFF
        self.clock.call_later(delay, self._apply)

    def _apply(self) -> None:
        dl = self.dl
        assert dl is not None
        self.last_image_sha256 = hashlib.sha256(dl.buf).hexdigest()
        self.version = dl.version
        self.dl = None
        self.stats.upgrades += 1
        self.upgraded_at = self.clock.now()
        self.powered = False

        def boot() -> None:
            self.powered = True
            self.state = IDLE
            self.query_retries = 0
            self._query()  # devices query once after booting a new image
        self.clock.call_later(self.p.boot_time_s, boot)
