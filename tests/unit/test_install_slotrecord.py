"""Only a verified slot can be booted (issue #16 item 1, docs/security.md).

The attack: a bundle whose signed sw-description is genuine but whose rootfs bytes were
replaced. The install streams the attacker's bytes into slot B and fails its hash at
the end, but until now `ferry mark active B` (and D-Bus `Mark`) booted them anyway.
These tests run that scenario end to end on a file-backed gateway, then check each
part of the gate: the record, the floor, the re-hash, the booted slot.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
from install_gateway import (
    Gateway,
    image_version,
    killed_mid_write,
    make_bundle,
    make_gateway,
    make_image,
)

from ferry.daemon.boot.bootloader import make_bootloader
from ferry.daemon.boot.slotrecord import (
    FAILED,
    VERIFIED,
    WRITING,
    begin_write,
    get_record,
    record_slot_version,
    record_verified,
    rehash,
)
from ferry.daemon.boot.slots import SlotNotVerified, mark
from ferry.daemon.install import pipeline
from ferry.daemon.install.pipeline import install, make_context, resume
from ferry.daemon.install.slotwriter import write_slot
from ferry.daemon.journal import Journal
from ferry.daemon.versions import BelowFloor
from ferry.packaging.errors import BundleError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "system"))

SLOT = 4 << 20
IMAGE = 3 << 20  # six of the slot writer's 512 KiB chunks


@pytest.fixture
def gw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Gateway:
    g = make_gateway(tmp_path / "gw", slot_size=SLOT)
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(g.boot_id))
    return g


def run_install(gw: Gateway, bundle: Path, **kw: object) -> int:
    ctx = make_context(gw.config)
    try:
        return install(gw.config, str(bundle), ctx=ctx, **kw)  # type: ignore[arg-type]
    finally:
        ctx.journal.close()


def tampered_bundle(gw: Gateway, tmp_path: Path) -> Path:
    """A genuine signed bundle whose rootfs bytes were swapped after signing for an
    intact image of the attacker's own (same length, so every header still fits)."""
    genuine = make_image("1.1.0", IMAGE)
    bundle = make_bundle(gw, tmp_path / "tampered.swu", version="1.1.0", image=genuine)
    evil = make_image("6.6.6", IMAGE - (1 << 20))
    evil += b"\xee" * (IMAGE - len(evil))  # the last chunk never reaches the slot
    data = bundle.read_bytes()
    assert data.count(genuine) == 1
    bundle.write_bytes(data.replace(genuine, evil))
    return bundle


def set_floor(gw: Gateway, floor: str) -> None:
    text = gw.config_path.read_text()
    gw.config_path.write_text(text.replace("[install]\n", f'[install]\nmin_version = "{floor}"\n'))


def slot_bytes(gw: Gateway, bootname: str) -> bytes:
    return gw.slot_path(bootname).read_bytes()


def order(gw: Gateway) -> list[str]:
    return gw.env()["BOOT_ORDER"].split()


# --- the attack, end to end ------------------------------------------------------------

def test_tampered_rootfs_fails_and_mark_active_refuses_over_the_cli(gw: Gateway,
                                                                     tmp_path: Path) -> None:
    bundle = tampered_bundle(gw, tmp_path)
    with pytest.raises(BundleError):
        run_install(gw, bundle)
    # the danger is real: the attacker's intact image sits in slot B
    assert image_version(slot_bytes(gw, "B")) == "6.6.6"
    rec = get_record(gw.config, "rootfs.1")
    assert rec is not None and rec.state == FAILED and rec.reason == "failed its hash"
    before = gw.env()

    cli = gw.ferry("mark", "active", "B")  # standalone: --config, straight on the env
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert cli.stderr.strip() == (
        "ferry: slot B (rootfs.1) holds no verified image (its last write failed its "
        "hash): install a bundle to it first")
    good = gw.ferry("mark", "good", "other")  # good would put it back in the order too
    assert good.returncode == 1 and "holds no verified image" in good.stderr
    assert gw.env() == before
    assert gw.boot() == "A"  # U-Boot never tries the attacker's image


def test_tampered_rootfs_mark_is_refused_over_dbus(gw: Gateway, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from dbus_fixtures import private_bus, running_ferryd

    from ferry.daemon.cli import dbus_client as client

    bundle = tampered_bundle(gw, tmp_path)
    with private_bus(with_policy=True) as address:
        monkeypatch.setenv("FERRY_BUS_ADDRESS", address)
        with running_ferryd(gw.config_path, address, FERRY_BOOT_ID_PATH=str(gw.boot_id)):
            result, error = client.install(str(bundle), force=False,
                                           on_progress=lambda *p: None)
            assert result != 0 and "does not match sw-description" in error, error
            assert image_version(slot_bytes(gw, "B")) == "6.6.6"
            before = gw.env()
            with pytest.raises(client.DaemonError) as refused:
                client.mark("active", "B")
            assert ("slot B (rootfs.1) holds no verified image (its last write failed its "
                    "hash): install a bundle to it first") in str(refused.value)
            with pytest.raises(client.DaemonError, match="holds no verified image"):
                client.mark("good", "other")
            assert gw.env() == before
            name, _ = client.mark("bad", "B")  # taking bootability away is always allowed
            assert name == "rootfs.1"
    assert gw.boot() == "A"


def test_a_verified_install_can_be_marked_active_again(gw: Gateway, tmp_path: Path) -> None:
    image = make_image("1.1.0", IMAGE)
    run_install(gw, make_bundle(gw, tmp_path / "b.swu", version="1.1.0", image=image))
    rec = get_record(gw.config, "rootfs.1")
    assert rec is not None and rec.state == VERIFIED and rec.version == "1.1.0"
    assert rec.sha256 == hashlib.sha256(image).hexdigest() and rec.size == len(image)
    assert gw.ferry("mark", "bad", "B").returncode == 0
    assert order(gw) == ["A"]
    seen: list[tuple[int, int]] = []
    config = gw.config
    name, message = mark(config, make_bootloader(config, warn=False), "active", "B",
                         progress=lambda d, t: seen.append((d, t)))
    assert name == "rootfs.1" and "sha256 verified" in message
    assert order(gw)[0] == "B"
    assert seen and seen[-1] == (len(image), len(image))  # the whole image was re-read
    assert gw.boot() == "B"


@pytest.mark.parametrize("compress", ["zstd", "zlib"])
def test_compressed_installs_record_the_digest_of_the_written_bytes(
        gw: Gateway, tmp_path: Path, compress: str) -> None:
    image = make_image("1.1.0", 600_000)
    run_install(gw, make_bundle(gw, tmp_path / "b.swu", version="1.1.0", image=image,
                                compress=compress))
    rec = get_record(gw.config, "rootfs.1")
    assert rec is not None and rec.verified
    assert rec.sha256 == hashlib.sha256(image).hexdigest() and rec.size == len(image)


def test_compressed_without_signed_decompressed_hash_records_the_written_digest(
        gw: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bundle from a tool that signs only the stored (compressed) sha256: the stream is
    verified, and the record holds the writer's own digest of what it produced."""
    from ferry.packaging import writer

    real = writer.ImageEntry
    monkeypatch.setattr(writer, "ImageEntry",
                        lambda **kw: real(**{**kw, "decompressed_sha256": None}))
    image = make_image("1.1.0", 600_000)
    bundle = make_bundle(gw, tmp_path / "b.swu", version="1.1.0", image=image,
                         compress="zstd")
    assert b"decompressed-sha256" not in bundle.read_bytes()[:4096]
    run_install(gw, bundle)
    rec = get_record(gw.config, "rootfs.1")
    assert rec is not None and rec.verified
    assert rec.sha256 == hashlib.sha256(image).hexdigest() and rec.size == len(image)
    assert gw.ferry("mark", "bad", "B").returncode == 0
    assert gw.ferry("mark", "active", "B").returncode == 0  # the re-hash agrees


def test_slot_writer_digest_without_an_expected_hash(tmp_path: Path) -> None:
    import zstandard

    data = os.urandom(1 << 20) * 2
    slot = tmp_path / "slot"
    res = write_slot(_Bytes(zstandard.ZstdCompressor().compress(data)), slot,  # type: ignore[arg-type]
                     compressed="zstd", digest=True)
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert write_slot(_Bytes(data), tmp_path / "s2").sha256 is None  # type: ignore[arg-type]


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        n = len(self.data) - self.pos if n < 0 else n
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out


# --- the record's life ----------------------------------------------------------------

def test_slot_writer_drops_the_record_before_the_first_byte(gw: Gateway) -> None:
    config = gw.config
    record_verified(config, "rootfs.1", sha256="ab" * 32, size=10, version="1.0.0")
    states: list[str] = []

    def progress(_done: int) -> None:
        rec = get_record(config, "rootfs.1")
        states.append(rec.state if rec else "none")

    class Src:
        def __init__(self) -> None:
            self.left = 2 << 20

        def read(self, n: int) -> bytes:
            n = min(n, self.left)
            self.left -= n
            return b"x" * n

    write_slot(Src(), gw.slot_path("B"), progress=progress,  # type: ignore[arg-type]
               before_open=lambda: begin_write(config, "rootfs.1"))
    assert states and set(states) == {WRITING}


def test_dropping_the_record_waits_for_a_mark_in_progress(gw: Gateway) -> None:
    """`mark` checks and writes the env under the record lock; an install's begin_write
    (before it marks the slot bad) cannot slip in between."""
    import threading

    from ferry.daemon.boot.slotrecord import held

    config = gw.config
    record_verified(config, "rootfs.1", sha256="ab" * 32, size=10, version="1.0.0")
    with held(config) as recs:
        t = threading.Thread(target=begin_write, args=(config, "rootfs.1"))
        t.start()
        t.join(0.5)
        assert t.is_alive()  # blocked on the lock
        assert recs.get("rootfs.1").state == VERIFIED  # type: ignore[union-attr]
    t.join(30)
    assert not t.is_alive()
    assert get_record(config, "rootfs.1").state == WRITING  # type: ignore[union-attr]


def test_a_failing_before_open_leaves_the_slot_untouched(tmp_path: Path) -> None:
    slot = tmp_path / "slot"

    def refuse() -> None:
        raise OSError("data dir is read-only")

    with pytest.raises(OSError):
        write_slot(iter([]), slot, before_open=refuse)  # type: ignore[arg-type]
    assert not slot.exists()  # never opened, never created


def _install_killed_mid_write(gw: Gateway, bundle: Path) -> None:
    """Power cut: SIGKILL at the first write into the slot, in a forked child."""
    killed_mid_write(lambda: run_install(gw, bundle), nth=2)


def test_power_cut_mid_write_leaves_no_record(gw: Gateway, tmp_path: Path) -> None:
    run_install(gw, make_bundle(gw, tmp_path / "v11.swu", version="1.1.0",
                                image=make_image("1.1.0", IMAGE)))
    assert get_record(gw.config, "rootfs.1").state == VERIFIED  # type: ignore[union-attr]
    assert gw.ferry("mark", "bad", "B").returncode == 0
    # the 1.1.0 deployment is still pending its reboot; it is closed so 1.2.0 may start
    j = Journal.open(gw.data_dir)
    try:
        pending = j.pending()
        assert pending is not None
        j.finish(pending.id, "failure", "test: abandoned")
    finally:
        j.close()
    _install_killed_mid_write(gw, make_bundle(gw, tmp_path / "v12.swu", version="1.2.0",
                                              image=make_image("1.2.0", IMAGE)))
    rec = get_record(gw.config, "rootfs.1")
    assert rec is not None and rec.state == WRITING and rec.sha256 is None
    cli = gw.ferry("mark", "active", "B")
    assert cli.returncode == 1
    assert "holds no verified image (its last write, started " in cli.stderr
    assert "did not finish): install a bundle to it first" in cli.stderr
    assert "B" not in order(gw)


def test_provisioned_version_without_digest_is_not_enough(gw: Gateway) -> None:
    record_slot_version(gw.config, "rootfs.1", "1.0.0")  # as factory provisioning does
    cli = gw.ferry("mark", "active", "other")
    assert cli.returncode == 1
    assert "version 1.0.0 was recorded without a verified digest" in cli.stderr
    nothing = gw.ferry("mark", "active", "B")
    assert nothing.returncode == 1


def test_no_record_at_all_is_refused(gw: Gateway) -> None:
    cli = gw.ferry("mark", "active", "B")
    assert cli.returncode == 1
    assert "ferry has no record of writing it" in cli.stderr


# --- re-hash ------------------------------------------------------------------------------

def _verified_b(gw: Gateway, tmp_path: Path) -> bytes:
    image = make_image("1.1.0", IMAGE)
    run_install(gw, make_bundle(gw, tmp_path / "b.swu", version="1.1.0", image=image))
    assert gw.ferry("mark", "bad", "B").returncode == 0
    return image


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def test_rehash_catches_a_flipped_byte(gw: Gateway, tmp_path: Path) -> None:
    _verified_b(gw, tmp_path)
    flip(gw.slot_path("B"), IMAGE // 2 + 12345)
    cli = gw.ferry("mark", "active", "B")
    assert cli.returncode == 1
    assert "slot B (rootfs.1) no longer holds the image ferry verified" in cli.stderr
    assert "install a bundle to it again" in cli.stderr
    assert "B" not in order(gw)
    rec = get_record(gw.config, "rootfs.1")
    assert rec is not None and rec.state == FAILED
    flip(gw.slot_path("B"), IMAGE // 2 + 12345)  # even put back, the record stays gone
    again = gw.ferry("mark", "active", "B")
    assert again.returncode == 1 and "was verified, but the slot changed since" in again.stderr


def test_rehash_catches_a_short_slot_and_ignores_bytes_past_the_image(
        gw: Gateway, tmp_path: Path) -> None:
    image = _verified_b(gw, tmp_path)
    flip(gw.slot_path("B"), IMAGE + 100)  # past the image: not part of what was verified
    assert gw.ferry("mark", "active", "B").returncode == 0
    assert gw.ferry("mark", "bad", "B").returncode == 0
    with open(gw.slot_path("B"), "r+b") as f:
        f.truncate(len(image) - 1)
    cli = gw.ferry("mark", "active", "B")
    assert cli.returncode == 1 and f"holds only {len(image) - 1} of the {len(image)}" in cli.stderr


def test_rehash_streams_in_fixed_chunks(tmp_path: Path) -> None:
    data = os.urandom(3 << 20) + b"tail"
    dev = tmp_path / "dev"
    dev.write_bytes(data)
    seen: list[int] = []
    digest, got = rehash(dev, 3 << 20, progress=lambda d, t: seen.append(d))
    assert (digest, got) == (hashlib.sha256(data[: 3 << 20]).hexdigest(), 3 << 20)
    assert seen == [1 << 20, 2 << 20, 3 << 20]  # O(1) memory: 1 MiB at a time


# --- the version floor ----------------------------------------------------------------------

def test_mark_active_refuses_a_verified_slot_below_the_floor(gw: Gateway, tmp_path: Path) -> None:
    _verified_b(gw, tmp_path)
    set_floor(gw, "1.2.0")
    cli = gw.ferry("mark", "active", "B")
    assert cli.returncode == 1
    assert ("slot B (rootfs.1) holds version 1.1.0, below the minimum 1.2.0 set in [install] "
            "min_version; install a newer bundle to it") in cli.stderr
    assert gw.ferry("mark", "good", "B").returncode == 1
    assert "B" not in order(gw)
    assert "--force" not in gw.ferry("mark", "--help").stdout  # nothing to lift it with


def test_pipeline_activate_rechecks_the_floor_even_forced(gw: Gateway, tmp_path: Path) -> None:
    """A deployment cut off before its activate step meets a floor raised meanwhile."""
    bundle = make_bundle(gw, tmp_path / "b.swu", version="1.1.0",
                         image=make_image("1.1.0", IMAGE))
    ctx = make_context(gw.config)
    try:
        dep_id = ctx.journal.create(str(bundle), origin="cli", force=True)
        pipeline._prepare(ctx, dep_id)  # verified, written, staged: "activating"
        assert ctx.journal.get(dep_id).state == "activating"
    finally:
        ctx.journal.close()
    set_floor(gw, "1.2.0")
    ctx = make_context(gw.config)
    try:
        with pytest.raises(BelowFloor, match=r"holds version 1\.1\.0, below the minimum 1\.2\.0"):
            resume(ctx)
        dep = ctx.journal.get(dep_id)
    finally:
        ctx.journal.close()
    assert dep.result == "failure" and "below the minimum" in (dep.error or "")
    assert "B" not in order(gw) and gw.boot() == "A"


def test_pipeline_activate_needs_the_record(gw: Gateway, tmp_path: Path) -> None:
    bundle = make_bundle(gw, tmp_path / "b.swu", version="1.1.0",
                         image=make_image("1.1.0", IMAGE))
    ctx = make_context(gw.config)
    try:
        dep_id = ctx.journal.create(str(bundle), origin="cli")
        pipeline._prepare(ctx, dep_id)
        begin_write(gw.config, "rootfs.1")  # someone began writing the slot since
        with pytest.raises(SlotNotVerified, match="did not finish"):
            resume(ctx)
    finally:
        ctx.journal.close()
    assert "B" not in order(gw)


def test_booted_slot_active_obeys_the_floor_but_good_commits(gw: Gateway) -> None:
    """A: running 1.0.0 with no record (factory image, or one U-Boot fell back to)."""
    assert gw.ferry("mark", "active", "booted").returncode == 0  # no record needed
    set_floor(gw, "1.1.0")
    cli = gw.ferry("mark", "active", "booted")
    assert cli.returncode == 1
    assert ("slot A (rootfs.0) runs version 1.0.0, below the minimum 1.1.0 set in [install] "
            "min_version") in cli.stderr
    good = gw.ferry("mark", "good", "booted")  # the every-boot commit still works
    assert good.returncode == 0, good.stderr


def test_mark_bad_needs_no_record(gw: Gateway) -> None:
    assert gw.ferry("mark", "bad", "B").returncode == 0
    assert order(gw) == ["A"]


def test_a_zstd_rootfs_is_proven_by_its_decompressed_hash_alone(
        gw: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A zstd rootfs whose decompressed-sha256 is signed is not hashed twice: the stored
    bytes go only through the decompressor, and the slot writer checks its whole output
    against the signed hash (issue 22: a second sha256 pass per compressed byte). A
    member altered after signing (a byte flipped in a raw zstd block, so it still
    decodes) fails on that check and leaves no verified slot."""
    from ferry.packaging.reader import ImageStream

    dropped: list[bool] = []
    real = ImageStream.verified_by_output

    def spy(self: ImageStream) -> bool:
        dropped.append(real(self))
        return dropped[-1]

    monkeypatch.setattr(ImageStream, "verified_by_output", spy)
    # frames without zstd's own content checksum (optional in the format), so the
    # altered bytes decode cleanly and only the signed sha256 can catch them
    import zstandard

    from ferry.packaging import compression

    real_level = zstandard.ZstdCompressionParameters.from_level
    monkeypatch.setattr(compression.zstandard.ZstdCompressionParameters, "from_level",
                        lambda level, **kw: real_level(level, **{**kw,
                                                                 "write_checksum": False}))
    image = os.urandom(600_000)  # incompressible: zstd stores raw blocks
    good = make_bundle(gw, tmp_path / "good.swu", version="1.1.0", image=image,
                       compress="zstd")
    data = bytearray(good.read_bytes())
    at = data.find(image[300_000:300_064])
    assert at > 0  # the raw block holds the image's bytes as they are
    data[at + 10] ^= 0xFF
    bad = tmp_path / "bad.swu"
    bad.write_bytes(bytes(data))
    from ferry.daemon.install.slotwriter import SlotHashMismatch

    with pytest.raises(SlotHashMismatch, match="does not match"):
        run_install(gw, bad)
    rec = get_record(gw.config, "rootfs.1")
    assert rec is not None and rec.state == FAILED and rec.reason == "failed its hash"
    assert gw.ferry("mark", "active", "B").returncode == 1

    run_install(gw, good)
    assert dropped == [True, True]
    rec = get_record(gw.config, "rootfs.1")
    assert rec is not None and rec.verified and rec.sha256 == hashlib.sha256(image).hexdigest()


def test_the_stored_hash_stays_for_images_the_output_cannot_prove(tmp_path: Path) -> None:
    """Only a zstd image with a signed decompressed-sha256 and no encryption, and only
    before its first byte, leaves its stored hash to the output check."""
    import io
    from dataclasses import replace

    from ferry.packaging.cpio import CpioStreamReader
    from ferry.packaging.description import ImageEntry
    from ferry.packaging.limits import Limits
    from ferry.packaging.reader import ImageStream

    base = ImageEntry(filename="rootfs.img", role="rootfs", sha256="0" * 64, size=10,
                      compressed="zstd",
                      decompressed_sha256="1" * 64, decompressed_size=20)
    cpio = CpioStreamReader(io.BytesIO(b""), Limits())
    for entry, expected in ((base, True), (replace(base, compressed=None), False),
                            (replace(base, decompressed_sha256=None), False),
                            (replace(base, compressed="zlib"), False)):
        assert ImageStream(cpio, entry).verified_by_output() is expected
    started = ImageStream(cpio, base)
    started.bytes_read = 1
    assert started.verified_by_output() is False
