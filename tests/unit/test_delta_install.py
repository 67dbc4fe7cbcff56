"""Delta installs end to end: the pipeline against a local HTTP server with real Range
support (single ranges, If-Range), a file-backed gateway and its boot model.

The gateway's booted slot holds a base ferry wrote and verified (its slot record);
the new image shares most blocks with it. What is checked is what crosses the wire
(requests and body bytes, counted by the server) and what boots.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from install_gateway import HEADER, MAGIC, Gateway, killed_mid_write, make_gateway

from ferry.daemon.boot.slotrecord import record_verified
from ferry.daemon.install.delta import ChunkHashMismatch
from ferry.daemon.install.pipeline import install
from ferry.daemon.journal import Journal
from ferry.packaging.chunker import ChunkParams
from ferry.packaging.description import TargetSpec
from ferry.packaging.writer import ImageInput, create_bundle, load_signing_key

SLOT = 4 << 20
BLOCK = 4096  # an ext4 block: the test images change in whole blocks
BLOCKS = 600  # 2.4 MiB images


class RangeHandler(BaseHTTPRequestHandler):
    """Honest single-range server (as nginx answers one range), plus faults."""

    server: RangeServer  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"
    # as nginx does (tcp_nodelay): else every small response waits for a delayed ACK
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        data = srv.path.read_bytes()
        rng = self.headers.get("Range")
        srv.requests.append(rng)
        start, end = 0, len(data) - 1
        partial = bool(rng) and srv.mode != "ignore-range" and (
            self.headers.get("If-Range") in (None, srv.etag))
        if partial and rng:
            a, _, b = rng.split("=", 1)[1].partition("-")
            start, end = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            self.send_response(200)
        body = bytearray(data[start:end + 1])
        # the head request (from byte 0) is left alone: the chunk requests are the target
        if srv.tamper is not None and 0 < start <= srv.tamper <= end and srv.tamper_left:
            body[srv.tamper - start] ^= 0xFF
            srv.tamper_left -= 1
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", srv.etag)
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        try:
            self.wfile.write(body)
            srv.sent += len(body)
        except OSError:
            pass


class RangeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, path: Path) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.path = path
        self.mode = "ok"
        self.etag = '"d1"'
        self.requests: list[str | None] = []
        self.sent = 0
        self.tamper: int | None = None  # bundle offset of a byte to corrupt
        self.tamper_left = 0
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{self.path.name}"

    def __enter__(self) -> RangeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


def blocks(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n * BLOCK)


def base_payload() -> bytes:
    return blocks(1, BLOCKS)


def changed_payload() -> bytes:
    """A dozen blocks rewritten, two inserted: what a package update does to ext4."""
    old = bytearray(base_payload())
    for b in range(40, BLOCKS, 50):
        old[b * BLOCK:(b + 1) * BLOCK] = blocks(100 + b, 1)
    return bytes(old[:300 * BLOCK] + blocks(9, 2) + old[300 * BLOCK:])


@pytest.fixture
def gw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Gateway:
    g = make_gateway(tmp_path / "gw", slot_size=SLOT)
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(g.boot_id))
    return g


def put_base(gw: Gateway, data: bytes, *, record: bool = True) -> None:
    """The booted slot A holds ``data``, written and verified by an earlier install."""
    with open(gw.slot_path("A"), "r+b") as f:
        f.write(data)
    if record:
        record_verified(gw.config, "rootfs.0", sha256=hashlib.sha256(data).hexdigest(),
                        size=len(data), version="1.0.0")


def bootable(version: str, payload: bytes) -> bytes:
    # install_gateway's boot model reads HEADER then the payload right after it
    return HEADER.pack(MAGIC, version.encode().ljust(16, b"\0"), len(payload),
                       hashlib.sha256(payload).digest()) + payload


def make_delta_bundle(gw: Gateway, out: Path, img: bytes, *,
                      target: bytes | None = None, version: str = "1.1.0",
                      avg: int = 8 << 10) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / "rootfs.img").write_bytes(img)
    inputs = [ImageInput(out.parent / "rootfs.img", "zstd", filename="rootfs.img.zst",
                         delta=ChunkParams(avg=avg))]
    if target is not None:
        (out.parent / "fw.bin").write_bytes(target)
        inputs.append(ImageInput(out.parent / "fw.bin", None, target=TargetSpec(
            transport="dfu", name="mcu", format="bin", version="2.0")))
    signing = load_signing_key(gw.pki_dir / "signer.key", gw.pki_dir / "signer.pem")
    create_bundle(out, signing=signing, version=version, compatible=["test-gw"],
                  images=inputs)
    return out


def rootfs_span(bundle: Path) -> tuple[int, int]:
    data = bundle.read_bytes()
    start = data.index(b"rootfs.img.zst\0", data.index(b"rootfs.img.zst.cidx\0") + 20)
    hdr = start - 110
    size = int(data[hdr + 54:hdr + 62], 16)
    begin = (start + len("rootfs.img.zst") + 1 + 3) & ~3
    return begin, begin + size


def rootfs_requests(srv: RangeServer, bundle: Path) -> list[str]:
    begin, end = rootfs_span(bundle)
    out = []
    for r in srv.requests:
        if r is None:
            out.append("whole")
            continue
        a = r.split("=", 1)[1].partition("-")[0]
        if begin <= int(a) < end:  # the head's requests may reach into it: not these
            out.append(r)
    return out


def delta_info(gw: Gateway) -> dict[str, int | str]:
    dep = Journal.open(gw.data_dir).latest()
    assert dep is not None
    return dict(dep.info["delta"])


OLD = bootable("1.0.0", base_payload())
NEW = bootable("1.1.0", changed_payload())


def test_delta_fetches_only_the_missing_chunks_and_boots(gw: Gateway, tmp_path: Path) -> None:
    put_base(gw, OLD)
    bundle = make_delta_bundle(gw, tmp_path / "www" / "b.swu", NEW, target=b"fw" * 5000)
    with RangeServer(bundle) as srv:
        install(gw.config, srv.url)
    assert gw.slot_path("B").read_bytes()[:len(NEW)] == NEW
    assert gw.boot() == "B" and gw.running_version() == "1.1.0"
    info = delta_info(gw)
    assert info["mode"] == "delta" and info["refetched"] == 0
    assert 0 < int(info["fetched_chunks"]) < int(info["chunks"]) // 3
    # the whole bundle is 2.4 MiB of incompressible data: a fraction crossed the wire
    assert srv.sent < bundle.stat().st_size // 4
    assert all(r is not None and "-" in r for r in srv.requests)  # only ranges
    assert int(info["requests"]) == len(rootfs_requests(srv, bundle))


def test_everything_changed_falls_back_to_the_whole_member(gw: Gateway,
                                                           tmp_path: Path) -> None:
    put_base(gw, OLD)
    new = bootable("1.1.0", blocks(77, BLOCKS))
    bundle = make_delta_bundle(gw, tmp_path / "www" / "b.swu", new)
    with RangeServer(bundle) as srv:
        install(gw.config, srv.url)
    begin, end = rootfs_span(bundle)
    assert rootfs_requests(srv, bundle) == [f"bytes={begin}-{end - 1}"]  # one request
    assert delta_info(gw)["mode"] == "full"
    assert gw.boot() == "B"


def test_identical_pair_fetches_no_chunk(gw: Gateway, tmp_path: Path) -> None:
    put_base(gw, OLD)
    bundle = make_delta_bundle(gw, tmp_path / "www" / "b.swu", OLD)
    with RangeServer(bundle) as srv:
        install(gw.config, srv.url)
    assert rootfs_requests(srv, bundle) == []
    info = delta_info(gw)
    assert info["fetched_bytes"] == 0 and info["reused"] == info["chunks"]
    assert srv.sent < 64 << 10  # the head (description, signature, index) and the trailer
    assert gw.boot() == "B"


def test_a_chunk_corrupted_once_is_fetched_again(gw: Gateway, tmp_path: Path) -> None:
    put_base(gw, OLD)
    bundle = make_delta_bundle(gw, tmp_path / "www" / "b.swu", NEW)
    begin = rootfs_span(bundle)[0]
    with RangeServer(bundle) as srv:
        srv.tamper, srv.tamper_left = begin + 10, 1  # the first chunk: the new header
        install(gw.config, srv.url)
    assert delta_info(gw)["refetched"] == 1
    assert gw.boot() == "B"


def test_a_tampered_chunk_is_refused(gw: Gateway, tmp_path: Path) -> None:
    put_base(gw, OLD)
    bundle = make_delta_bundle(gw, tmp_path / "www" / "b.swu", NEW)
    begin = rootfs_span(bundle)[0]
    with RangeServer(bundle) as srv:
        srv.tamper, srv.tamper_left = begin + 10, 100  # the first chunk: the new header
        with pytest.raises(ChunkHashMismatch, match="fails its sha256 twice") as err:
            install(gw.config, srv.url)
    assert "\n" not in str(err.value)
    dep = Journal.open(gw.data_dir).latest()
    assert dep is not None and dep.result == "failure" and "sha256" in (dep.error or "")
    assert "B" not in gw.env()["BOOT_ORDER"].split()  # never activated
    assert gw.boot() == "A"


def test_a_changed_base_is_not_trusted(gw: Gateway, tmp_path: Path) -> None:
    """The base's record says one thing, the slot holds another (local changes): the
    chunks that differ are fetched, the install still ends with the signed image."""
    put_base(gw, OLD)
    with open(gw.slot_path("A"), "r+b") as f:  # after indexing would be the same
        f.seek(len(OLD) // 2)
        f.write(b"\xaa" * (8 * BLOCK))
    bundle = make_delta_bundle(gw, tmp_path / "www" / "b.swu", NEW)
    with RangeServer(bundle) as srv:
        install(gw.config, srv.url)
    assert gw.slot_path("B").read_bytes()[:len(NEW)] == NEW
    assert gw.boot() == "B"


def test_server_ignoring_range_gets_the_whole_bundle(gw: Gateway, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    put_base(gw, OLD)
    bundle = make_delta_bundle(gw, tmp_path / "www" / "b.swu", NEW)
    with RangeServer(bundle) as srv, caplog.at_level(logging.WARNING):
        srv.mode = "ignore-range"
        install(gw.config, srv.url)
    assert "ignores Range" in caplog.text
    assert gw.boot() == "B"


def test_without_a_verified_base_the_bundle_is_downloaded_whole(gw: Gateway,
                                                                tmp_path: Path) -> None:
    put_base(gw, OLD, record=False)
    bundle = make_delta_bundle(gw, tmp_path / "www" / "b.swu", NEW)
    with RangeServer(bundle) as srv:
        install(gw.config, srv.url)
    assert srv.requests == [None]  # one plain GET, as for any bundle
    assert gw.boot() == "B"


def commit_new_slot(gw: Gateway) -> None:
    from ferry.daemon.install.pipeline import make_context, resume

    assert gw.boot() == "B"
    dep = resume(make_context(gw.config))
    assert dep is not None and (dep.state == "committed" or dep.result == "success"), dep


def test_the_next_delta_uses_the_kept_index_of_the_slot(gw: Gateway, tmp_path: Path) -> None:
    put_base(gw, OLD)
    with RangeServer(make_delta_bundle(gw, tmp_path / "w1" / "b.swu", NEW)) as srv:
        install(gw.config, srv.url)
    assert delta_info(gw)["notes"] == ["active slot read"]
    commit_new_slot(gw)
    newer = bootable("1.2.0", changed_payload()[:-BLOCK] + blocks(55, 1))
    with RangeServer(make_delta_bundle(gw, tmp_path / "w2" / "b.swu", newer,
                                       version="1.2.0")) as srv:
        install(gw.config, srv.url)
    info = delta_info(gw)
    assert info["notes"] == ["active slot index kept"]
    assert int(info["reused"]) > int(info["chunks"]) // 2
    assert gw.slot_path("A").read_bytes()[:len(newer)] == newer


def test_a_wrong_kept_index_costs_fetches_not_bytes(gw: Gateway, tmp_path: Path) -> None:
    from ferry.daemon.install import deltacache

    put_base(gw, OLD)
    # a kept index for slot A's image that does not describe its bytes
    wrong = make_delta_bundle(gw, tmp_path / "w0" / "b.swu", NEW)
    from ferry.packaging.keyring import load_keyring
    from ferry.packaging.reader import BundleReader

    with open(wrong, "rb") as fh:
        reader = BundleReader(fh, load_keyring(gw.config.keyring.path))
        for _entry, stream in reader.images():
            stream.read()
    assert reader.delta_index is not None
    deltacache.save(gw.config, "rootfs.0", hashlib.sha256(OLD).hexdigest(),
                    reader.delta_index)
    with RangeServer(make_delta_bundle(gw, tmp_path / "w1" / "b.swu", NEW)) as srv:
        install(gw.config, srv.url)
    info = delta_info(gw)
    assert info["notes"][0] == "active slot index kept"
    assert any("changed in the active slot" in n for n in info["notes"])
    assert gw.slot_path("B").read_bytes()[:len(NEW)] == NEW
    assert gw.boot() == "B"


def test_a_delta_bundle_installed_whole_keeps_its_index(gw: Gateway, tmp_path: Path) -> None:
    put_base(gw, OLD, record=False)
    install(gw.config, str(make_delta_bundle(gw, tmp_path / "w1" / "b.swu", NEW)))  # a path
    commit_new_slot(gw)
    newer = bootable("1.2.0", changed_payload()[:-BLOCK] + blocks(56, 1))
    with RangeServer(make_delta_bundle(gw, tmp_path / "w2" / "b.swu", newer,
                                       version="1.2.0")) as srv:
        install(gw.config, srv.url)
    info = delta_info(gw)
    assert info["notes"] == ["active slot index kept"] and info["mode"] == "delta"
    assert gw.slot_path("A").read_bytes()[:len(newer)] == newer


def test_a_delta_write_cut_short_resumes_without_fetching_again(gw: Gateway,
                                                              tmp_path: Path) -> None:
    """A power cut in the middle of a delta install's slot write (SIGKILL of the
    installing process, forked here): the resumed deployment finds the chunks the
    interrupted write already put into the inactive slot at their own offsets, hashes
    them, keeps them, and fetches only the chunks that never arrived."""
    from ferry.daemon.install.pipeline import make_context, resume

    put_base(gw, OLD)
    bundle = make_delta_bundle(gw, tmp_path / "www" / "b.swu", NEW)
    with RangeServer(bundle) as srv:
        # 24 x 64 KiB written: past half of the 2.4 MiB image
        killed_mid_write(lambda: install(gw.config, srv.url), nth=24)
        before = srv.sent
        dep = resume(make_context(gw.config))
        resumed_bytes = srv.sent - before
    assert dep is not None
    assert gw.slot_path("B").read_bytes()[:len(NEW)] == NEW
    assert gw.boot() == "B" and gw.running_version() == "1.1.0"
    info = delta_info(gw)
    missing = int(info["chunks"]) - int(info["reused"])
    assert int(info["kept"]) > 0 and info["refetched"] == 0, info
    assert int(info["kept"]) + int(info["fetched_chunks"]) == missing, info
    # the chunks fetched after the cut are fewer bytes than the whole delta a gateway
    # with this base fetches (ferry bundle inspect's estimate of the same plan)
    import json

    (tmp_path / "old.img").write_bytes(OLD)
    out = gw.ferry("bundle", "inspect", "--json", "--keyring", str(gw.pki_dir / "ca.pem"),
                   "--delta-base", str(tmp_path / "old.img"), str(bundle))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    whole_delta = int(doc["delta_estimate"]["fetch_bytes"])
    assert 0 < int(info["fetched_bytes"]) < whole_delta, (info, whole_delta)
    assert resumed_bytes < before + whole_delta


def test_the_booted_slot_is_indexed_at_idle_for_the_next_delta(gw: Gateway,
                                                               tmp_path: Path) -> None:
    """After a full install the booted slot has a verified record but no kept index:
    ferryd starts the indexer (a process of its own at idle priority) once it has
    resumed, and the next delta install plans from that index instead of reading and
    cutting the whole slot. Nothing to do once the index is kept, or without a record."""
    from ferry.daemon.boot.bootloader import make_bootloader
    from ferry.daemon.install import deltaindexer

    boot = make_bootloader(gw.config, warn=False)
    put_base(gw, OLD, record=False)
    assert deltaindexer.wanted(gw.config, boot) is None  # no record: never indexed
    put_base(gw, OLD)
    assert deltaindexer.wanted(gw.config, boot) is not None
    proc = deltaindexer.schedule(gw.config, boot)
    assert proc is not None and proc.wait(timeout=120) == 0
    assert deltaindexer.wanted(gw.config, boot) is None  # kept for this image now
    assert deltaindexer.schedule(gw.config, boot) is None

    # the chunk parameters ferry bundle create --delta uses by default
    bundle = make_delta_bundle(gw, tmp_path / "www" / "b.swu", NEW,
                               avg=ChunkParams().avg)
    with RangeServer(bundle) as srv:
        install(gw.config, srv.url)
    assert gw.boot() == "B" and gw.running_version() == "1.1.0"
    info = delta_info(gw)
    assert "active slot index kept" in info["notes"], info
    assert info["mode"] == "delta" and 0 < int(info["reused"]) < int(info["chunks"])
