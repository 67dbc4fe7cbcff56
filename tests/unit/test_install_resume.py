"""A download cut by a crash resumes after the restart with Range from the journal's
resume point (bundle head kept on disk + the fsynced slot prefix), not from byte 0."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from install_gateway import HEADER, MAGIC, Gateway, make_bundle, make_gateway, make_image
from install_http import Server

from ferry.daemon.install import slotwriter
from ferry.daemon.install.pipeline import install, make_context, resume
from ferry.daemon.journal import Deployment, Journal
from ferry.daemon.testhooks import killpoint
from ferry.packaging import compression

IMAGE = 3 << 20


@pytest.fixture
def gw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Gateway:
    g = make_gateway(tmp_path / "gw", slot_size=4 << 20)
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(g.boot_id))
    monkeypatch.setattr(slotwriter, "CHUNK", 64 << 10)
    monkeypatch.setattr(slotwriter, "STORED_CHUNK", 64 << 10)
    monkeypatch.setattr(slotwriter, "SYNC_EVERY", 256 << 10)
    return g


def crash_during_write(gw: Gateway, url: str, syncs: int) -> None:
    """Run the install in a forked child; SIGKILL it once ``syncs`` resume points are
    recorded (the writer runs on meanwhile, as it would when power goes)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.environ["FERRY_TEST_KILL_AT"] = f"slot.synced:{syncs}"
            pwrite = os.pwrite

            def slow_pwrite(fd: int, data: bytes, offset: int) -> int:
                time.sleep(0.02)  # a slow card: the syncer keeps up with the writer
                return pwrite(fd, data, offset)

            os.pwrite = slow_pwrite  # type: ignore[assignment]
            killpoint._parsed = False
            killpoint._counts.clear()
            install(gw.config, url)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@pytest.fixture
def raw_bundle(gw: Gateway, tmp_path: Path) -> tuple[bytes, Path]:
    image = make_image("1.1.0", IMAGE)
    return image, make_bundle(gw, tmp_path / "www" / "b.swu", version="1.1.0", image=image)


def random_image(version: str, size: int) -> bytes:
    """A bootable test image that zstd cannot shrink much: many frames, real data."""
    payload = os.urandom(size // 2) + bytes(size - HEADER.size - size // 2)
    return HEADER.pack(MAGIC, version.encode().ljust(16, b"\0"), len(payload),
                       hashlib.sha256(payload).digest()) + payload


@pytest.fixture
def zstd_bundle(gw: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                ) -> tuple[bytes, Path]:
    monkeypatch.setattr(compression, "FRAME_SIZE", 256 << 10)  # 12 frames
    image = random_image("1.1.0", IMAGE)
    return image, make_bundle(gw, tmp_path / "www" / "b.swu", version="1.1.0", image=image,
                              compress="zstd")


@contextlib.contextmanager
def after_crash(gw: Gateway, bundle: Path, syncs: int = 2
                ) -> Iterator[tuple[Server, Journal, Deployment]]:
    """The install SIGKILLed after ``syncs`` resume points: the server (its request
    log emptied) and the journal as the restarted process finds them."""
    with Server(bundle) as srv:
        crash_during_write(gw, srv.url, syncs=syncs)
        j = Journal.open(gw.data_dir)
        dep = j.pending()
        assert dep is not None and dep.state == "writing" and dep.dl_validator == '"v1"'
        srv.requests.clear()
        yield srv, j, dep


def overwrite_slot(gw: Gateway, offset: int, data: bytes) -> None:
    """What a power cut (unsynced pages lost) or a lying disk leaves in slot B."""
    with open(gw.slot_path("B"), "r+b") as f:
        f.seek(offset)
        f.write(data)


def resume_to_reboot(gw: Gateway, j: Journal) -> Deployment:
    resume(make_context(gw.config, journal=j))
    dep = j.latest()
    assert dep is not None and dep.state == "rebooting", dep and dep.error
    return dep


def ranges(srv: Server) -> list[str | None]:
    return [h.get("Range") for _, h in srv.requests]


def assert_boots_new(gw: Gateway, image: bytes) -> None:
    assert gw.slot_path("B").read_bytes()[:IMAGE] == image
    assert gw.boot() == "B"


def test_restart_resumes_with_range(gw: Gateway, raw_bundle: tuple[bytes, Path]) -> None:
    image, bundle = raw_bundle
    with after_crash(gw, bundle) as (srv, j, dep):
        point = dep.info["resume"]
        assert point["synced"] >= 2 * (256 << 10) and point["synced"] % (256 << 10) == 0
        assert point["synced"] <= IMAGE
        assert Path(point["head"]).stat().st_size == point["data_start"]
        dep = resume_to_reboot(gw, j)
        headers = [h for _, h in srv.requests]
        assert len(headers) == 1  # one request, for the rest only
        assert headers[0]["Range"] == f"bytes={point['data_start'] + point['synced']}-"
        assert headers[0]["If-Range"] == '"v1"'
        assert dep.info["resumed_at"] == point["data_start"] + point["synced"]
        assert dep.info.get("resume") is None  # the point is dropped once written
    assert_boots_new(gw, image)


def test_resume_needs_only_what_was_fsynced(gw: Gateway, raw_bundle: tuple[bytes, Path]
                                            ) -> None:
    """A real power cut also loses what was written after the last fsync (the kill -9
    above leaves it in the page cache). Zero the slot past the resume point, and past
    it only: the resumed install must not care, it takes the prefix and nothing more."""
    image, bundle = raw_bundle
    with after_crash(gw, bundle) as (srv, j, dep):
        point = dep.info["resume"]
        overwrite_slot(gw, point["synced"], bytes(IMAGE - point["synced"]))
        assert resume_to_reboot(gw, j).info.get("resume_failed") is None  # no start-over
        assert ranges(srv) == [f"bytes={point['data_start'] + point['synced']}-"]
    assert_boots_new(gw, image)


def test_changed_bundle_on_the_server_starts_over(gw: Gateway, raw_bundle: tuple[bytes, Path]
                                                  ) -> None:
    image, bundle = raw_bundle
    with after_crash(gw, bundle) as (srv, j, _dep):
        srv.etag = '"v2"'  # republished: the resume point no longer applies
        resume_to_reboot(gw, j)
        assert ranges(srv)[0] is not None and ranges(srv)[-1] is None  # tried, then byte 0
    assert_boots_new(gw, image)


def test_torn_slot_prefix_is_caught_by_the_hash_and_started_over(
        gw: Gateway, raw_bundle: tuple[bytes, Path]) -> None:
    image, bundle = raw_bundle
    with after_crash(gw, bundle) as (srv, j, _dep):
        overwrite_slot(gw, 4096, bytes(4096))
        dep = resume_to_reboot(gw, j)
        assert "does not match" in dep.info["resume_failed"]
        writes = [(s.name, s.status) for s in j.steps(dep.id) if s.name == "write"]
        assert writes[-2:] == [("write", "failed"), ("write", "done")]
        assert ranges(srv)[0] is not None and ranges(srv)[-1] is None  # resumed, then 0
    assert_boots_new(gw, image)


def test_a_bad_bundle_still_fails_after_starting_over(
        gw: Gateway, raw_bundle: tuple[bytes, Path]) -> None:
    """Starting over happens once: a bundle whose image really is bad still fails."""
    _image, bundle = raw_bundle
    with after_crash(gw, bundle) as (_srv, j, _dep):
        data = bytearray(bundle.read_bytes())
        data[-(1 << 20)] ^= 0xFF  # late in the image, past the resume point
        bundle.write_bytes(bytes(data))  # same ETag: the server claims it is unchanged
        from ferry.packaging.errors import HashMismatch

        with pytest.raises(HashMismatch):
            resume(make_context(gw.config, journal=j))
        assert j.latest().result == "failure"  # type: ignore[union-attr]
    assert gw.boot() == "A"


def test_zstd_rootfs_resumes_at_a_frame_boundary(gw: Gateway, zstd_bundle: tuple[bytes, Path]
                                                 ) -> None:
    """A compressed rootfs resumes too: at the end of the last zstd frame whose output
    was fsynced; the stored bytes before it are never fetched again and the signed
    decompressed-sha256 covers the slot prefix read back plus the rest."""
    image, bundle = zstd_bundle
    with after_crash(gw, bundle) as (srv, j, dep):
        point = dep.info["resume"]
        assert point["compressed"] is True
        assert point["synced"] % (256 << 10) == 0 and point["synced"] >= 256 << 10
        assert 0 < point["stored"] < bundle.stat().st_size
        overwrite_slot(gw, point["synced"], bytes(IMAGE - point["synced"]))
        assert resume_to_reboot(gw, j).info.get("resume_failed") is None
        assert ranges(srv) == [f"bytes={point['data_start'] + point['stored']}-"]
    assert_boots_new(gw, image)


def test_zstd_torn_prefix_fails_the_decompressed_hash_then_starts_over(
        gw: Gateway, zstd_bundle: tuple[bytes, Path]) -> None:
    image, bundle = zstd_bundle
    with after_crash(gw, bundle) as (srv, j, _dep):
        overwrite_slot(gw, 1000, b"\xff" * 100)
        assert "sha256" in resume_to_reboot(gw, j).info["resume_failed"]
        assert ranges(srv)[0] is not None and ranges(srv)[-1] is None  # resumed, then 0
    assert_boots_new(gw, image)


@pytest.mark.parametrize("syncs", [1, 4, 7, 10])
@pytest.mark.parametrize("kind", ["raw", "zstd"])
def test_power_cut_at_any_resume_point(gw: Gateway, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, kind: str,
                                       syncs: int) -> None:
    """Cut at early, middle and late resume points of both kinds of rootfs, losing
    everything the slot got after the last fsync: each resumes where its journal says,
    fetches only the rest, and ends with the whole image in the slot."""
    if kind == "zstd":
        monkeypatch.setattr(compression, "FRAME_SIZE", 256 << 10)
        image = random_image("1.1.0", IMAGE)
    else:
        image = make_image("1.1.0", IMAGE)
    bundle = make_bundle(gw, tmp_path / "www" / "b.swu", version="1.1.0", image=image,
                         compress=None if kind == "raw" else "zstd")
    with after_crash(gw, bundle, syncs=syncs) as (srv, j, dep):
        point = dep.info["resume"]
        assert point["synced"] >= syncs * (256 << 10)
        overwrite_slot(gw, point["synced"], bytes(IMAGE - point["synced"]))
        assert resume_to_reboot(gw, j).info.get("resume_failed") is None
        at = point["stored"] if kind == "zstd" else point["synced"]
        assert ranges(srv) == [f"bytes={point['data_start'] + at}-"]
    assert_boots_new(gw, image)
