"""OtaServer policy, pacing, WAIT_FOR_DATA, pages and Upgrade End, driven frame by frame."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ferry.proxy.zigbee import otafile, zcl
from ferry.proxy.zigbee.progress import (
    DONE,
    DOWNLOADING,
    FAILED,
    SKIPPED,
    UPGRADING,
    MemoryProgressStore,
)
from ferry.proxy.zigbee.server import OtaServer, ServedImage, ServerConfig

MFR, ITYPE, OLD, NEW = 0x1234, 0x0001, 0x10, 0x20
NODE = "00124b0001020304"


class Link:
    def __init__(self) -> None:
        self.sent: list[tuple[str, zcl.Frame]] = []

    def send(self, node: str, frame: bytes) -> None:
        self.sent.append((node, zcl.decode_frame(frame)))

    def last(self) -> zcl.Command:
        return self.sent[-1][1].command


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.later: list[tuple[float, Callable[[], None]]] = []

    def now(self) -> float:
        return self.t

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self.later.append((self.t + delay, fn))

    def run_all(self) -> None:
        while self.later:
            self.later.sort(key=lambda x: x[0])
            t, fn = self.later.pop(0)
            self.t = t
            fn()


def image(version: int = NEW, size: int = 400, **kw: object) -> bytes:
    hdr = otafile.OtaHeader(MFR, ITYPE, version, **kw)  # type: ignore[arg-type]
    return otafile.build_simple(hdr, bytes(range(256)) * 2 + b"x" * (size - 512)).serialize()


def make(cfg: ServerConfig | None = None, data: bytes | None = None
         ) -> tuple[OtaServer, Link, Clock]:
    link, clock = Link(), Clock()
    srv = OtaServer(link=link, clock=clock, store=MemoryProgressStore(),
                    config=cfg or ServerConfig())
    srv.add_image(ServedImage(data if data is not None else image()))
    return srv, link, clock


def req(srv: OtaServer, cmd: zcl.Command, node: str = NODE, tsn: int = 1) -> None:
    srv.handle_frame(node, zcl.encode_frame(zcl.Frame(tsn, cmd)))


def query(srv: OtaServer, version: int = OLD, mfr: int = MFR, itype: int = ITYPE,
          hw: int | None = None, node: str = NODE) -> zcl.Command:
    req(srv, zcl.QueryNextImageRequest(mfr, itype, version, hw), node=node)
    return srv.link.last()  # type: ignore[attr-defined]


def test_offers_newer_image_with_its_size_and_answers_the_same_tsn() -> None:
    srv, link, _ = make()
    req(srv, zcl.QueryNextImageRequest(MFR, ITYPE, OLD), tsn=77)
    node, frame = link.sent[-1]
    assert node == NODE and frame.tsn == 77
    assert frame.command == zcl.QueryNextImageResponse(zcl.SUCCESS, MFR, ITYPE, NEW,
                                                       len(image()))


@pytest.mark.parametrize("kw", [dict(mfr=MFR + 1), dict(itype=ITYPE + 1), dict(version=NEW),
                                dict(version=NEW + 1)])
def test_no_image_unless_manufacturer_type_match_and_newer(kw: dict[str, int]) -> None:
    srv, _, _ = make()
    rsp = query(srv, **kw)  # type: ignore[arg-type]
    assert rsp == zcl.QueryNextImageResponse(zcl.NO_IMAGE_AVAILABLE)


def test_same_version_is_recorded_as_skipped_and_force_offers_it() -> None:
    srv, _, _ = make()
    assert query(srv, version=NEW) == zcl.QueryNextImageResponse(zcl.NO_IMAGE_AVAILABLE)
    assert srv.nodes[NODE].state == SKIPPED
    forced, _, _ = make(ServerConfig(force=True))
    rsp = query(forced, version=NEW + 5)  # a downgrade, forced
    assert isinstance(rsp, zcl.QueryNextImageResponse) and rsp.status == zcl.SUCCESS


def test_hardware_range_and_device_specific_destination() -> None:
    srv, _, _ = make(data=image(min_hardware_version=0x0100, max_hardware_version=0x01FF))
    assert query(srv, hw=0x0105).status == zcl.SUCCESS  # type: ignore[union-attr]
    assert query(srv, hw=0x0200).status == zcl.NO_IMAGE_AVAILABLE  # type: ignore[union-attr]
    assert query(srv, hw=None).status == zcl.NO_IMAGE_AVAILABLE  # type: ignore[union-attr]
    dev, _, _ = make(data=image(upgrade_file_destination=int(NODE, 16)))
    assert query(dev).status == zcl.SUCCESS  # type: ignore[union-attr]
    other = query(dev, node="00124b00ffffffff")
    assert other.status == zcl.NO_IMAGE_AVAILABLE  # type: ignore[union-attr]


def test_only_listed_nodes_are_served() -> None:
    srv, _, _ = make(ServerConfig(nodes={"aaaa"}))
    assert query(srv).status == zcl.NO_IMAGE_AVAILABLE  # type: ignore[union-attr]
    assert query(srv, node="aaaa").status == zcl.SUCCESS  # type: ignore[union-attr]


def test_blocks_are_capped_and_paced_with_wait_for_data() -> None:
    data = image()
    srv, link, clock = make(ServerConfig(max_data_size=50, min_block_period_ms=250), data)
    query(srv)
    req(srv, zcl.ImageBlockRequest(MFR, ITYPE, NEW, 0, 64))
    blk = link.last()
    assert isinstance(blk, zcl.ImageBlockResponse) and blk.status == zcl.SUCCESS
    assert blk.data == data[:50] and blk.file_offset == 0
    clock.t += 0.1  # too early
    req(srv, zcl.ImageBlockRequest(MFR, ITYPE, NEW, 50, 64))
    wait = link.last()
    assert isinstance(wait, zcl.ImageBlockResponse) and wait.status == zcl.WAIT_FOR_DATA
    assert wait.min_block_period == 250 and wait.request_time == wait.current_time
    clock.t += 0.2
    req(srv, zcl.ImageBlockRequest(MFR, ITYPE, NEW, 50, 40))
    blk = link.last()
    assert isinstance(blk, zcl.ImageBlockResponse) and blk.data == data[50:90]
    assert srv.nodes[NODE].state == DOWNLOADING and srv.nodes[NODE].offset == 90


def test_busy_gateway_and_full_sessions_get_wait_for_data_with_request_time() -> None:
    srv, link, clock = make(ServerConfig(max_concurrent=1, busy_wait_s=30))
    req(srv, zcl.ImageBlockRequest(MFR, ITYPE, NEW, 0, 50), node="a")
    assert link.last().status == zcl.SUCCESS  # type: ignore[union-attr]
    req(srv, zcl.ImageBlockRequest(MFR, ITYPE, NEW, 0, 50), node="b")
    w = link.last()
    assert isinstance(w, zcl.ImageBlockResponse) and w.status == zcl.WAIT_FOR_DATA
    assert w.request_time - w.current_time == 30
    srv.set_busy(100)
    req(srv, zcl.ImageBlockRequest(MFR, ITYPE, NEW, 50, 50), node="a")
    w = link.last()
    assert isinstance(w, zcl.ImageBlockResponse) and w.status == zcl.WAIT_FOR_DATA
    assert w.request_time - w.current_time == 100
    clock.t += 200  # busy over, and "a" idle long enough to free its slot
    req(srv, zcl.ImageBlockRequest(MFR, ITYPE, NEW, 0, 50), node="b")
    assert link.last().status == zcl.SUCCESS  # type: ignore[union-attr]


def test_unknown_version_gets_no_image_and_offset_past_end_is_malformed() -> None:
    srv, link, _ = make()
    req(srv, zcl.ImageBlockRequest(MFR, ITYPE, NEW + 1, 0, 50))
    assert link.last() == zcl.ImageBlockResponse(zcl.NO_IMAGE_AVAILABLE)
    req(srv, zcl.ImageBlockRequest(MFR, ITYPE, NEW, 10_000, 50))
    assert link.last() == zcl.ImageBlockResponse(zcl.MALFORMED_COMMAND)


def test_page_request_pushes_spaced_blocks() -> None:
    data = image(size=1000)
    srv, link, clock = make(ServerConfig(max_data_size=50), data)
    req(srv, zcl.ImagePageRequest(MFR, ITYPE, NEW, 100, 64, 256, 40))
    clock.run_all()
    blocks = [f.command for _, f in link.sent if isinstance(f.command, zcl.ImageBlockResponse)]
    assert [b.file_offset for b in blocks] == [100, 150, 200, 250, 300, 350]
    assert b"".join(b.data for b in blocks) == data[100:356]
    assert clock.t == pytest.approx(1000.0 + 5 * 0.040)


def test_upgrade_end_gets_upgrade_time_and_requery_marks_done() -> None:
    srv, link, clock = make(ServerConfig(upgrade_delay_s=30))
    query(srv)
    req(srv, zcl.UpgradeEndRequest(zcl.SUCCESS, MFR, ITYPE, NEW))
    rsp = link.last()
    assert isinstance(rsp, zcl.UpgradeEndResponse)
    assert rsp.upgrade_time - rsp.current_time == 30 and rsp.file_version == NEW
    assert srv.nodes[NODE].state == UPGRADING
    clock.t += 40
    assert query(srv, version=NEW) == zcl.QueryNextImageResponse(zcl.NO_IMAGE_AVAILABLE)
    assert srv.nodes[NODE].state == DONE


def test_repeated_invalid_image_fails_the_node() -> None:
    srv, _, _ = make(ServerConfig(max_attempts=2))
    query(srv)
    req(srv, zcl.UpgradeEndRequest(zcl.INVALID_IMAGE, MFR, ITYPE, NEW))
    assert query(srv).status == zcl.SUCCESS  # type: ignore[union-attr]
    req(srv, zcl.UpgradeEndRequest(zcl.INVALID_IMAGE, MFR, ITYPE, NEW))
    assert srv.nodes[NODE].state == FAILED
    assert query(srv) == zcl.QueryNextImageResponse(zcl.NO_IMAGE_AVAILABLE)


def test_restart_reloads_progress_and_notify_wakes_unfinished_nodes() -> None:
    srv, _link, clock = make(ServerConfig(checkpoint_bytes=1))
    query(srv)
    req(srv, zcl.ImageBlockRequest(MFR, ITYPE, NEW, 0, 50))
    store = srv.store
    link2 = Link()
    srv2 = OtaServer(link=link2, clock=clock, store=store, config=ServerConfig())
    srv2.add_image(ServedImage(image()))
    assert srv2.nodes[NODE].state == DOWNLOADING and srv2.nodes[NODE].offset == 50
    srv2.notify()
    assert link2.sent[-1][0] == NODE
    assert link2.last() == zcl.ImageNotify(3, 100, MFR, ITYPE, NEW)


def test_malformed_frames_are_counted_not_fatal() -> None:
    srv, link, _ = make()
    srv.handle_frame(NODE, b"\x01\x05\x03\x00")  # truncated Image Block Request
    srv.handle_frame(NODE, b"\x00\x05\x00")  # not cluster-specific
    assert srv.stats.malformed == 2 and link.sent == []
