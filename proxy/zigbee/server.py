"""The OTA server side of cluster 0x0019, serving images to a population of nodes.

The server talks to a ``ZclLink`` ("send these ZCL bytes to node X"), never to a
radio, and keeps time through a ``Clock``: a coordinator adapter (zigpy, a serial
NCP...) supplies real ones, the simulator supplies a discrete-event clock, so the same
code is measured in simulated seconds.

Policy: a node is offered an image only when manufacturer code and image type match,
the hardware version is inside the image's range (when it has one), a device-specific
file names this node, and the file version is newer than the node's (or ``force``).

Pacing: every block goes out no sooner than ``min_block_period_ms`` after the node's
previous one; a node that asks too early, or while ``max_concurrent`` other nodes are
downloading, or while the gateway is busy, gets WAIT_FOR_DATA with a request time and
the MinimumBlockPeriod it should keep. One image object is shared by every session.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

from ferry.proxy.zigbee import zcl
from ferry.proxy.zigbee.errors import ZclError
from ferry.proxy.zigbee.otafile import IMAGE_TYPE_WILDCARD, OtaHeader, parse_header
from ferry.proxy.zigbee.progress import (
    DONE,
    DOWNLOADING,
    FAILED,
    FINAL_STATES,
    IDLE,
    OFFERED,
    SKIPPED,
    UPGRADING,
    MemoryProgressStore,
    NodeProgress,
    ProgressStore,
)

log = logging.getLogger(__name__)


class ZclLink(Protocol):
    """A ZCL link to the nodes: cluster 0x0019 frames in and out, addressed by node id."""

    def send(self, node: str, frame: bytes) -> None: ...


class BroadcastLink(ZclLink, Protocol):
    """A link that can also reach every node with one frame (APS broadcast to 0xFFFF)."""

    def broadcast(self, frame: bytes) -> None: ...


class Clock(Protocol):
    """Seconds on the Zigbee UTC scale (since 2000-01-01), and a way to act later."""

    def now(self) -> float: ...

    def call_later(self, delay: float, fn: Callable[[], None]) -> None: ...


class ServedImage:
    """One OTA file, read on demand so many sessions share one copy of the bytes."""

    def __init__(self, data: bytes | None = None, *, path: str | Path | None = None) -> None:
        if (data is None) == (path is None):
            raise ValueError("give the image bytes or a path, not both")
        self._data = data
        self._path = Path(path) if path is not None else None
        head = data[:4096] if data is not None else self._read(0, 4096)
        self.header: OtaHeader = parse_header(head)
        self.size = self.header.total_image_size

    def _read(self, offset: int, n: int) -> bytes:
        assert self._path is not None
        with self._path.open("rb") as fh:
            fh.seek(offset)
            return fh.read(n)

    def read(self, offset: int, n: int) -> bytes:
        n = max(0, min(n, self.size - offset))
        if self._data is not None:
            return self._data[offset : offset + n]
        return self._read(offset, n)


@dataclass
class ServerConfig:
    max_data_size: int = 50  # zigpy/Z2M default; the node's own limit is honoured too
    min_block_period_ms: int = 0
    max_concurrent: int = 16  # nodes downloading at once; the rest are told to wait
    busy_wait_s: int = 30  # request time offered to a node we cannot serve now
    session_idle_s: float = 120.0  # a download silent this long frees its slot
    upgrade_delay_s: int = 0  # Upgrade End Response: 0 means "upgrade now"
    checkpoint_bytes: int = 8192  # persist a downloading node at least this often
    max_attempts: int = 3  # INVALID_IMAGE / aborted downloads before a node is failed
    force: bool = False  # offer even when the node is not older
    nodes: set[str] | None = None  # only these nodes (None: every matching node)
    notify_jitter: int = 100  # Image Notify query jitter (1..100)


@dataclass
class _Session:
    image: ServedImage
    last_block: float = -math.inf
    last_seen: float = 0.0
    page_gen: int = 0
    since_checkpoint: int = 0


@dataclass
class ServerStats:
    frames_in: int = 0
    frames_out: int = 0
    blocks: int = 0
    wait_for_data: int = 0
    malformed: int = 0
    data_bytes: int = 0
    broadcasts: int = 0


@dataclass
class OtaServer:
    link: ZclLink
    clock: Clock
    store: ProgressStore = field(default_factory=MemoryProgressStore)
    config: ServerConfig = field(default_factory=ServerConfig)
    on_change: Callable[[NodeProgress], None] | None = None

    def __post_init__(self) -> None:
        self.images: list[ServedImage] = []
        self.nodes: dict[str, NodeProgress] = self.store.load()
        self.sessions: dict[str, _Session] = {}
        self.stats = ServerStats()
        self.busy_until = -math.inf
        self._tsn = 0

    # ---- setup -------------------------------------------------------------------

    def add_image(self, image: ServedImage) -> None:
        self.images.append(image)

    def set_busy(self, seconds: float) -> None:
        """Answer every block request with WAIT_FOR_DATA for ``seconds`` from now."""
        self.busy_until = self.clock.now() + seconds

    def notify(self, nodes: list[str] | None = None) -> None:
        """Unicast Image Notify (payload type 3) to nodes not yet finished.

        Without a list: every node the server knows about that is not final, which is
        how a restarted server wakes the nodes it was serving.
        """
        targets = nodes if nodes is not None else [
            n for n, p in self.nodes.items() if p.state not in FINAL_STATES]
        for node in targets:
            p = self.nodes.get(node)
            image = self._find_image(p) if p is not None else None
            if image is not None:
                h = image.header
                cmd: zcl.Command = zcl.ImageNotify(3, self.config.notify_jitter,
                                                   h.manufacturer_code, h.image_type,
                                                   h.file_version)
            else:
                cmd = zcl.ImageNotify(0, self.config.notify_jitter)
            self._send(node, cmd, tsn=self._next_tsn())

    def notify_all(self, image: ServedImage) -> None:
        """One broadcast Image Notify for ``image`` instead of one unicast per node.

        Payload type 3 names manufacturer, image type and the new file version, so a
        client of another type, or one already on that version, stays silent: that is
        how Silicon Labs' OTA client (ota-client.c, ``imageNotifyParse``) treats a
        broadcast, while it answers any unicast notify. The query jitter spreads the
        answers of a large population; a node that misses the frame (asleep past its
        parent's buffer, or lost) is reached later by ``notify`` per node.
        """
        if not hasattr(self.link, "broadcast"):
            raise TypeError(f"{type(self.link).__name__} cannot broadcast; notify per node")
        link = cast(BroadcastLink, self.link)
        h = image.header
        self.stats.frames_out += 1
        self.stats.broadcasts += 1
        cmd = zcl.ImageNotify(3, self.config.notify_jitter, h.manufacturer_code,
                              h.image_type, h.file_version)
        link.broadcast(zcl.encode_frame(
            zcl.Frame(self._next_tsn(), cmd, disable_default_response=True)))

    def progress(self) -> dict[str, NodeProgress]:
        return self.nodes

    # ---- frames in ---------------------------------------------------------------

    def handle_frame(self, node: str, raw: bytes) -> None:
        self.stats.frames_in += 1
        try:
            frame = zcl.decode_frame(raw)
        except ZclError as err:
            self.stats.malformed += 1
            log.debug("zigbee ota: malformed frame from %s: %s", node, err)
            return
        cmd = frame.command
        if isinstance(cmd, zcl.QueryNextImageRequest):
            self._on_query(node, frame.tsn, cmd)
        elif isinstance(cmd, zcl.ImageBlockRequest):
            self._on_block(node, frame.tsn, cmd)
        elif isinstance(cmd, zcl.ImagePageRequest):
            self._on_page(node, frame.tsn, cmd)
        elif isinstance(cmd, zcl.UpgradeEndRequest):
            self._on_upgrade_end(node, frame.tsn, cmd)
        else:
            self.stats.malformed += 1

    # ---- matching ----------------------------------------------------------------

    def _record(self, node: str) -> NodeProgress:
        p = self.nodes.get(node)
        if p is None:
            p = self.nodes[node] = NodeProgress(node=node)
        return p

    def _candidates(self, mfr: int, itype: int, hw: int | None,
                    node: str) -> list[ServedImage]:
        out = []
        for img in self.images:
            h = img.header
            if h.manufacturer_code != mfr:
                continue
            if h.image_type not in (itype, IMAGE_TYPE_WILDCARD):
                continue
            if not h.hardware_ok(hw):
                continue
            if h.upgrade_file_destination is not None and \
                    f"{h.upgrade_file_destination:016x}" != \
                    node.lower().removeprefix("0x").replace(":", ""):
                continue
            out.append(img)
        return sorted(out, key=lambda i: i.header.file_version, reverse=True)

    def _find_image(self, p: NodeProgress) -> ServedImage | None:
        for img in self._candidates(p.manufacturer_code, p.image_type, p.hardware_version,
                                    p.node):
            if img.header.file_version == p.target_version:
                return img
        return None

    def _image_for_version(self, node: str, mfr: int, itype: int,
                           version: int) -> ServedImage | None:
        p = self.nodes.get(node)
        hw = p.hardware_version if p is not None else None
        for img in self._candidates(mfr, itype, hw, node):
            if img.header.file_version == version:
                return img
        return None

    # ---- handlers ----------------------------------------------------------------

    def _on_query(self, node: str, tsn: int, q: zcl.QueryNextImageRequest) -> None:
        now = self.clock.now()
        p = self._record(node)
        p.manufacturer_code, p.image_type = q.manufacturer_code, q.image_type
        p.hardware_version = q.hardware_version
        p.current_version = q.current_file_version
        p.updated = now
        if p.state == UPGRADING and q.current_file_version == p.target_version:
            self._finish(p, DONE, f"running 0x{p.target_version:08X}")
        offer = None
        up_to_date = False
        if self.config.nodes is None or node in self.config.nodes:
            candidates = self._candidates(q.manufacturer_code, q.image_type,
                                          q.hardware_version, node)
            for img in candidates:  # newest first
                v = img.header.file_version
                if v > q.current_file_version or (self.config.force
                                                  and v != q.current_file_version):
                    offer = img
                    break
            up_to_date = offer is None and bool(candidates)
        if offer is None and up_to_date and p.state not in FINAL_STATES:
            done = p.target_version != 0 and p.target_version == q.current_file_version
            self._finish(p, DONE if done else SKIPPED,
                         f"already on 0x{q.current_file_version:08X}")
        if offer is None or p.state == FAILED:
            self._send(node, zcl.QueryNextImageResponse(zcl.NO_IMAGE_AVAILABLE), tsn)
            self._save(p)
            return
        h = offer.header
        if p.target_version != h.file_version or p.state in (IDLE, SKIPPED, DONE):
            p.target_version, p.size, p.offset = h.file_version, offer.size, 0
            p.started = now
        if p.state not in (DOWNLOADING,):
            p.state = OFFERED
        p.message = ""
        self._save(p)
        self._send(node, zcl.QueryNextImageResponse(
            zcl.SUCCESS, h.manufacturer_code, h.image_type, h.file_version, offer.size), tsn)

    def _wait(self, node: str, tsn: int, seconds: float) -> None:
        self.stats.wait_for_data += 1
        now = self.clock.now()
        self._send(node, zcl.ImageBlockResponse(
            zcl.WAIT_FOR_DATA, current_time=int(now), request_time=int(now + seconds),
            min_block_period=self.config.min_block_period_ms), tsn)

    def _admit(self, node: str, image: ServedImage) -> _Session | None:
        """The node's session, or None when it must wait (gateway busy or full)."""
        now = self.clock.now()
        if now < self.busy_until:
            return None
        for other, old in list(self.sessions.items()):
            if now - old.last_seen > self.config.session_idle_s:
                del self.sessions[other]
        s = self.sessions.get(node)
        if s is None:
            if len(self.sessions) >= self.config.max_concurrent:
                return None
            s = self.sessions[node] = _Session(image, last_seen=now)
        s.image = image
        s.last_seen = now
        return s

    def _validate(self, node: str, tsn: int, mfr: int, itype: int, version: int,
                  offset: int) -> ServedImage | None:
        image = self._image_for_version(node, mfr, itype, version)
        if image is None or (self.config.nodes is not None and node not in self.config.nodes):
            self._send(node, zcl.ImageBlockResponse(zcl.NO_IMAGE_AVAILABLE), tsn)
            return None
        if offset >= image.size:
            self._send(node, zcl.ImageBlockResponse(zcl.MALFORMED_COMMAND), tsn)
            return None
        return image

    def _on_block(self, node: str, tsn: int, r: zcl.ImageBlockRequest) -> None:
        image = self._validate(node, tsn, r.manufacturer_code, r.image_type, r.file_version,
                               r.file_offset)
        if image is None:
            return
        s = self._admit(node, image)
        now = self.clock.now()
        if s is None:
            wait = max(self.config.busy_wait_s, self.busy_until - now)
            self._wait(node, tsn, wait)
            return
        period = self.config.min_block_period_ms / 1000.0
        if now < s.last_block + period:
            self._wait(node, tsn, 0)  # same second: the node keeps MinimumBlockPeriod
            return
        self._serve_block(node, tsn, s, r.file_offset, r.max_data_size)

    def _serve_block(self, node: str, tsn: int, s: _Session, offset: int,
                     max_size: int) -> None:
        now = self.clock.now()
        size = min(max_size, self.config.max_data_size)
        data = s.image.read(offset, size)
        h = s.image.header
        self._send(node, zcl.ImageBlockResponse(
            zcl.SUCCESS, h.manufacturer_code, h.image_type, h.file_version, offset, data), tsn)
        s.last_block = now
        self.stats.blocks += 1
        self.stats.data_bytes += len(data)
        p = self._record(node)
        if p.state in (OFFERED, IDLE, DONE, SKIPPED) or p.target_version != h.file_version:
            p.state, p.target_version, p.size = DOWNLOADING, h.file_version, s.image.size
            p.started = p.started or now
            s.since_checkpoint = self.config.checkpoint_bytes  # persist the state change
        p.offset = offset + len(data)
        p.bytes_served += len(data)
        p.updated = now
        s.since_checkpoint += len(data)
        if s.since_checkpoint >= self.config.checkpoint_bytes or p.offset >= p.size:
            s.since_checkpoint = 0
            self._save(p)

    def _on_page(self, node: str, tsn: int, r: zcl.ImagePageRequest) -> None:
        image = self._validate(node, tsn, r.manufacturer_code, r.image_type, r.file_version,
                               r.file_offset)
        if image is None:
            return
        s = self._admit(node, image)
        if s is None:
            self._wait(node, tsn, max(self.config.busy_wait_s,
                                      self.busy_until - self.clock.now()))
            return
        s.page_gen += 1
        gen = s.page_gen
        spacing = max(r.response_spacing, self.config.min_block_period_ms) / 1000.0
        step = min(r.max_data_size, self.config.max_data_size)
        end = min(r.file_offset + r.page_size, image.size)
        offsets = list(range(r.file_offset, end, step))

        def push(i: int) -> None:
            live = self.sessions.get(node)
            if live is None or live.page_gen != gen:
                return  # a newer page request (or end of session) replaced this page
            self._serve_block(node, tsn, live, offsets[i], min(step, end - offsets[i]))
            if i + 1 < len(offsets):
                self.clock.call_later(spacing, lambda: push(i + 1))

        push(0)

    def _on_upgrade_end(self, node: str, tsn: int, r: zcl.UpgradeEndRequest) -> None:
        now = self.clock.now()
        p = self._record(node)
        self.sessions.pop(node, None)
        p.updated = now
        if r.status != zcl.SUCCESS:
            p.attempts += 1
            p.offset = 0
            if p.attempts >= self.config.max_attempts:
                self._finish(p, FAILED, f"node reported status 0x{r.status:02X} "
                             f"{p.attempts} times")
            else:
                p.state, p.message = IDLE, f"node reported status 0x{r.status:02X}; will retry"
                self._save(p)
            return  # the spec answers a failed Upgrade End with a Default Response only
        image = self._image_for_version(node, r.manufacturer_code, r.image_type,
                                        r.file_version)
        if image is None:
            self._send(node, zcl.ImageBlockResponse(zcl.NO_IMAGE_AVAILABLE), tsn)
            return
        delay = self.config.upgrade_delay_s
        upgrade_time = 0 if delay == 0 else int(now) + delay
        if p.state != DONE:
            p.state, p.offset, p.target_version = UPGRADING, image.size, r.file_version
            p.message = "downloaded; node told to upgrade"
            self._save(p)
        self._send(node, zcl.UpgradeEndResponse(r.manufacturer_code, r.image_type,
                                                r.file_version, int(now), upgrade_time), tsn)

    # ---- helpers -----------------------------------------------------------------

    def _finish(self, p: NodeProgress, state: str, message: str) -> None:
        p.state, p.message, p.finished = state, message, self.clock.now()
        self.sessions.pop(p.node, None)
        self._save(p)

    def _save(self, p: NodeProgress) -> None:
        self.store.save(p)
        if self.on_change is not None:
            self.on_change(p)

    def _next_tsn(self) -> int:
        self._tsn = (self._tsn + 1) & 0xFF
        return self._tsn

    def _send(self, node: str, cmd: zcl.Command, tsn: int) -> None:
        self.stats.frames_out += 1
        self.link.send(node, zcl.encode_frame(
            zcl.Frame(tsn, cmd, disable_default_response=True)))
