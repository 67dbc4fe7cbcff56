"""The U-Boot env codec: fw_env.config, copy format, which copy U-Boot loads, write
order, and power cuts at every byte of a write."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import stat
import struct
import zlib
from pathlib import Path

import pytest

from ferry.daemon.boot.ubootenv import (
    Copy,
    EnvError,
    EnvStore,
    NoValidEnvError,
    _Sink,
    decode_copy,
    decode_vars,
    encode_copy,
    encode_vars,
    parse_fw_env_config,
    select_copy,
)

SIZE = 0x1000


def make_env(tmp_path: Path, *, redundant: bool, flags: str = "incremental") -> EnvStore:
    img = tmp_path / "env.img"
    img.write_bytes(b"\xff" * (2 * SIZE))
    lines = f"env.img 0x0 {SIZE:#x} {SIZE:#x}\n"
    if redundant:
        lines += f"env.img {SIZE:#x} {SIZE:#x} {SIZE:#x}\n"
    cfg = tmp_path / "fw_env.config"
    cfg.write_text(lines)
    return EnvStore.from_config(cfg, flags=flags, lock_file=tmp_path / "lock")


# --- fw_env.config ----------------------------------------------------------------


def test_fw_env_config_parsing():
    layout = parse_fw_env_config(
        "# comment\n/dev/mmcblk0 0x400000 0x40000 0x40000  # first\n\n"
        "/dev/mmcblk0 4456448 0x40000\n"
    )
    assert layout.redundant
    a, b = layout.devices
    assert (a.offset, a.size, a.sector_size) == (0x400000, 0x40000, 0x40000)
    assert (b.offset, b.sector_size) == (0x440000, 0x40000)  # sector defaults to env size
    assert layout.data_size == 0x40000 - 5
    single = parse_fw_env_config("/dev/x 0 0x2000 0x10000\n")
    assert not single.redundant and single.data_size == 0x2000 - 4


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "no env device"),
        ("/dev/x 0\n", "device offset envsize"),
        ("/dev/x zz 0x1000\n", "not a number"),
        ("/dev/x 0 0x1000\n/dev/x 0x1000 0x2000\n", "differ in size"),
        # 64 KiB sectors: copies 4 KiB apart share one erase sector
        ("/dev/x 0 0x1000 0x10000\n/dev/x 0x1000 0x1000 0x10000\n", "erase sector"),
        ("/dev/mtdblock1 0 0x1000 0x10000\n", "char device /dev/mtd1"),
        ("a 0 0x1000\nb 0 0x1000\nc 0 0x1000\n", "one or two"),
    ],
)
def test_fw_env_config_refusals(text, needle):
    with pytest.raises(EnvError, match=needle):
        parse_fw_env_config(text)


def test_relative_device_is_relative_to_the_config(tmp_path):
    store = make_env(tmp_path, redundant=False)
    assert store.layout.devices[0].path == tmp_path / "env.img"


# --- copy format ------------------------------------------------------------------

VALUES = {
    "bootcmd": "run a; run b",
    "spaces": "a b  c ",
    "subst": "${BOOT_ORDER} $x",
    "empty": "",
    "eq": "x=y=z",
    "utf": "grüße",
}


def test_copy_round_trip_and_crc():
    raw = encode_copy(VALUES, SIZE, flag=None)
    assert len(raw) == SIZE
    (crc,) = struct.unpack("<I", raw[:4])
    assert crc == zlib.crc32(raw[4:])  # CRC covers the whole data area, padding too
    c = decode_copy(raw, redundant=False)
    assert c.crc_ok and c.vars() == VALUES
    red = encode_copy(VALUES, SIZE, flag=7)
    assert red[4] == 7 and struct.unpack("<I", red[:4])[0] == zlib.crc32(red[5:])
    assert decode_copy(red, redundant=True).vars() == VALUES


def test_one_changed_byte_breaks_the_crc():
    raw = bytearray(encode_copy({"a": "1"}, SIZE, flag=None))
    raw[SIZE - 1] ^= 1  # even in the padding
    assert not decode_copy(bytes(raw), redundant=False).crc_ok


def test_data_layout_is_what_uboot_expects():
    data = encode_vars({"b": "2", "a": "1"}, 16)
    assert data == b"a=1\0b=2\0\0" + bytes(7)
    assert decode_vars(b"a=1\0\0b=2\0") == {"a": "1"}  # stops at the empty entry


def test_env_too_big_and_bad_names():
    with pytest.raises(EnvError, match="holds"):
        encode_vars({"a": "x" * 100}, 50)
    with pytest.raises(EnvError, match="invalid"):
        encode_vars({"a=b": "1"}, 50)


# --- which copy is loaded ---------------------------------------------------------


def C(ok: bool, flag: int) -> Copy:
    return Copy(ok, flag, b"")


@pytest.mark.parametrize(
    ("a", "b", "flags", "want"),
    [
        (C(True, 1), C(False, 1), "boolean", 0),
        (C(False, 1), C(True, 0), "boolean", 1),
        (C(True, 1), C(True, 0), "boolean", 0),
        (C(True, 0), C(True, 1), "boolean", 1),
        (C(True, 1), C(True, 1), "boolean", 0),  # cut before the old flag was cleared
        (C(True, 0xFF), C(True, 0), "boolean", 0),
        (C(True, 0), C(True, 0xFF), "boolean", 1),
        # the reference's trap: libubootenv counted to 3 and 2; env/flash.c loads copy 2
        (C(True, 3), C(True, 2), "boolean", 1),
        (C(True, 5), C(True, 4), "incremental", 0),
        (C(True, 4), C(True, 5), "incremental", 1),
        (C(True, 0xFF), C(True, 0), "incremental", 1),  # wrap-around
        (C(True, 0), C(True, 0xFF), "incremental", 0),
        (C(False, 9), C(True, 1), "incremental", 1),
    ],
)
def test_select_copy_like_uboot(a, b, flags, want):
    assert select_copy((a, b), flags) == want


def test_no_valid_copy_is_an_error():
    with pytest.raises(NoValidEnvError):
        select_copy((C(False, 1), C(False, 0)), "incremental")
    with pytest.raises(NoValidEnvError):
        select_copy((Copy(False, None, b""),), "incremental")


# --- the store ---------------------------------------------------------------------


class RecordingSink(_Sink):
    def __init__(self) -> None:
        self.ops: list[tuple[str, int, int]] = []

    def pwrite(self, fd, data, offset):
        self.ops.append(("write", offset, len(data)))
        super().pwrite(fd, data, offset)

    def fsync(self, fd):
        self.ops.append(("fsync", 0, 0))
        super().fsync(fd)


def test_boolean_write_order(tmp_path):
    store = make_env(tmp_path, redundant=True, flags="boolean")
    store.initialize({"a": "1"})
    assert [c.flag for c in store.read_copies()] == [1, 0]
    rec = RecordingSink()
    store.sink = rec
    store.update({"a": "2", "b": "3"})
    # new copy in full, synced; only then the old copy's flag byte, synced
    assert rec.ops == [("write", SIZE, SIZE), ("fsync", 0, 0), ("write", 4, 1), ("fsync", 0, 0)]
    assert [c.flag for c in store.read_copies()] == [0, 1]
    assert store.read() == {"a": "2", "b": "3"}


def test_incremental_write_order(tmp_path):
    store = make_env(tmp_path, redundant=True, flags="incremental")
    store.initialize({"a": "1"})
    rec = RecordingSink()
    store.sink = rec
    store.update({"a": "2"})
    store.update({"a": "3"})
    assert rec.ops == [("write", SIZE, SIZE), ("fsync", 0, 0), ("write", 0, SIZE), ("fsync", 0, 0)]
    assert [c.flag for c in store.read_copies()] == [3, 2]
    assert store.read() == {"a": "3"}


def test_no_change_no_write_and_deletes(tmp_path):
    store = make_env(tmp_path, redundant=True)
    store.initialize({"a": "1", "b": "2"})
    rec = RecordingSink()
    store.sink = rec
    store.update({"a": "1"})
    assert rec.ops == []
    assert store.update({"b": None}) == {"a": "1"}
    assert store.read() == {"a": "1"}


def test_refuses_to_write_over_an_env_uboot_would_reject(tmp_path):
    store = make_env(tmp_path, redundant=True)  # erased flash: no valid copy
    with pytest.raises(NoValidEnvError):
        store.update({"a": "1"})
    assert (tmp_path / "env.img").read_bytes() == b"\xff" * (2 * SIZE)


class PowerCut(Exception):
    pass


class CuttingSink(_Sink):
    """Writes the first ``budget`` bytes, then 'loses power' (raises)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def pwrite(self, fd, data, offset):
        n = min(len(data), self.budget)
        if n:
            super().pwrite(fd, data[:n], offset)
        self.budget -= n
        if n < len(data):
            raise PowerCut

    def fsync(self, fd):
        super().fsync(fd)


def cut_points(total: int) -> list[int]:
    # every byte of the header and both ends, plus a spread through the body
    pts = set(range(0, 12)) | set(range(total - 8, total + 2))
    pts |= set(range(0, total, 97))
    return sorted(p for p in pts if p >= 0)


@pytest.mark.parametrize("flags", ["boolean", "incremental"])
def test_power_cut_at_any_byte_keeps_old_or_new(tmp_path, flags):
    store = make_env(tmp_path, redundant=True, flags=flags)
    old = {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3"}
    new = {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3"}
    seen = set()
    for cut in cut_points(SIZE + 1):
        store.sink = None
        store.initialize(old)
        store.update({"x": "warmup"})  # copies are not in their initial places
        store.update({"x": None})
        store.sink = CuttingSink(cut)
        with contextlib.suppress(PowerCut):
            store.update({"BOOT_ORDER": "B A"})
        store.sink = None
        got = store.read()  # never NoValidEnvError
        assert got in (old, new), cut
        seen.add(got["BOOT_ORDER"])
    assert seen == {"A B", "B A"}


def test_power_cut_on_single_copy_destroys_the_env(tmp_path):
    store = make_env(tmp_path, redundant=False)
    # Rewritten in place: a cut after the new CRC but before the last changed byte
    # leaves a CRC that matches neither old nor new data.
    broken = 0
    for cut in (1, 4, 8, 14):
        store.sink = None
        store.initialize({"BOOT_ORDER": "A B"})
        store.sink = CuttingSink(cut)
        with pytest.raises(PowerCut):
            store.update({"BOOT_ORDER": "B A"})
        store.sink = None
        with pytest.raises(NoValidEnvError):
            store.read()
        broken += 1
    assert broken == 4


def _bump(cfg: str, lock: str, n: int) -> None:
    store = EnvStore.from_config(cfg, lock_file=lock)
    for _ in range(n):
        store.modify(lambda env: env.__setitem__("n", str(int(env["n"]) + 1)))


def test_writers_are_serialised_by_the_lock(tmp_path):
    store = make_env(tmp_path, redundant=True)
    store.initialize({"n": "0"})
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_bump, args=(str(tmp_path / "fw_env.config"),
                                        str(tmp_path / "lock"), 25))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert store.read()["n"] == "50"


def test_reader_without_lock_access_still_reads(tmp_path):
    store = make_env(tmp_path, redundant=True)
    store.initialize({"a": "1"})
    store.lock_file = tmp_path / "missing-dir-file" / "x" / "lock"
    (tmp_path / "missing-dir-file").write_text("")  # a file where a dir should be
    assert store.read() == {"a": "1"}
    with pytest.raises(EnvError, match="env lock"):
        store.update({"a": "2"})


# --- the lock: nobody else chooses what ferry opens (issue #16) ----------------------


def test_symlink_at_the_lock_path_is_refused_and_its_target_never_created(tmp_path):
    store = make_env(tmp_path, redundant=True)
    store.initialize({"a": "1"})
    victim = tmp_path / "etc-shadow-like"
    lock = tmp_path / "lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(victim)
    for action in (store.read, lambda: store.update({"a": "2"})):
        with pytest.raises(EnvError, match="symbolic link"):
            action()
    assert not victim.exists()
    store.lock_file = tmp_path / "good-lock"
    assert store.read() == {"a": "1"}  # nothing was written meanwhile


def test_lock_owned_by_another_user_is_refused(tmp_path):
    store = make_env(tmp_path, redundant=True)
    store.initialize({"a": "1"})
    lock = tmp_path / "lock"
    os.chown(lock, 65534, 65534)  # as a user who pre-created it in /run/lock would
    with pytest.raises(EnvError, match="owned by uid 65534"):
        store.update({"a": "2"})
    with pytest.raises(EnvError, match="owned by uid 65534"):
        store.read()


def test_world_writable_lock_is_refused_and_a_good_one_is_created_0644(tmp_path):
    store = make_env(tmp_path, redundant=True)
    store.lock_file = tmp_path / "run" / "ferry" / "fw_env.lock"
    store.initialize({"a": "1"})
    assert stat.S_IMODE(store.lock_file.stat().st_mode) == 0o644
    store.lock_file.chmod(0o666)
    with pytest.raises(EnvError, match="writable by other users"):
        store.update({"a": "2"})
    store.lock_file.chmod(0o644)
    assert store.update({"a": "2"}) == {"a": "2"}


def test_fifo_at_the_lock_path_is_refused_without_hanging(tmp_path):
    store = make_env(tmp_path, redundant=True)
    store.initialize({"a": "1"})
    (tmp_path / "lock").unlink()
    os.mkfifo(tmp_path / "lock")
    with pytest.raises(EnvError, match="not a regular file"):
        store.read()


def test_the_default_lock_is_ferrys_own_under_run_ferry():
    from ferry.daemon.config import BootloaderConfig

    assert BootloaderConfig().lock_file == Path("/run/ferry/fw_env.lock")
