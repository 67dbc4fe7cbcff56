"""The U-Boot env on ``/dev/mtdN`` (NOR), without a kernel MTD device.

``FakeNor`` stands behind the store's ``open_mtd`` seam with the semantics of real NOR,
which is what makes these tests mean something: an erase sets a whole, aligned erase
block to 0xFF (anything unaligned is EINVAL, as mtdchar answers), and a program can only
clear bits (the cell ends as old & new), so a writer that forgot to erase reads back
garbage. A power budget counts erase blocks and programmed bytes and cuts the power
inside an erase (half the block erased) or a write (a prefix programmed).

The ioctl numbers and struct layouts of daemon/boot/mtd.py are checked against the
kernel's own header by compiling a C program (gcc and linux-libc-dev, .ci/deps). The
real device is exercised in the box (tests/system/test_box.py), against U-Boot's
``saveenv`` on the same flash.
"""

from __future__ import annotations

import errno
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ferry.daemon.boot import mtd
from ferry.daemon.boot.ubootenv import (
    EnvError,
    EnvStore,
    load_layout,
    parse_fw_env_config,
    select_copy,
)

ERASE = 0x100
SIZE = 0x100


class PowerCut(Exception):
    pass


@dataclass
class FakeNor:
    """A NOR chip: erase blocks of ``erasesize``, programs that only clear bits."""

    size: int = 8 * ERASE
    erasesize: int = ERASE
    type: int = mtd.MTD_NORFLASH
    flags: int = mtd.MTD_WRITEABLE | 0x800  # MTD_CAP_NORFLASH
    data: bytearray = field(default_factory=bytearray)
    budget: int | None = None  # erase blocks + programmed bytes until the power goes
    log: list[tuple[str, int, int]] = field(default_factory=list)
    unlock_errno: int | None = errno.EOPNOTSUPP  # CFI chips without lock bits

    def __post_init__(self) -> None:
        if not self.data:
            self.data = bytearray(b"\xff" * self.size)

    def _spend(self, n: int) -> int:
        if self.budget is None:
            return n
        allowed = min(n, self.budget)
        self.budget -= allowed
        return allowed

    # the Mtd protocol

    def info(self) -> mtd.MtdInfo:
        return mtd.MtdInfo(self.type, self.flags, self.size, self.erasesize, 1, 0)

    def unlock(self, start: int, length: int) -> None:
        self.log.append(("unlock", start, length))
        if self.unlock_errno is not None and self.unlock_errno != errno.EOPNOTSUPP:
            raise OSError(self.unlock_errno, "unlock refused")

    def erase(self, start: int, length: int) -> None:
        if start % self.erasesize or length % self.erasesize or start + length > self.size:
            raise OSError(errno.EINVAL, "unaligned erase")
        self.log.append(("erase", start, length))
        for block in range(start, start + length, self.erasesize):
            if self._spend(1) == 0:
                # cut mid-erase: half the block erased, the rest as it was
                half = self.erasesize // 2
                self.data[block:block + half] = b"\xff" * half
                raise PowerCut
            self.data[block:block + self.erasesize] = b"\xff" * self.erasesize

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self.data[offset:offset + size])

    def write(self, offset: int, data: bytes) -> None:
        self.log.append(("write", offset, len(data)))
        n = self._spend(len(data))
        for i in range(n):
            self.data[offset + i] &= data[i]  # NOR: bits only go 1 -> 0
        if n < len(data):
            raise PowerCut

    def close(self) -> None:
        pass


@dataclass
class QemuPflash(FakeNor):
    """QEMU's pflash_cfi01 behind the kernel's CFI driver, as the box showed it: the
    driver pads a partial bus word (4 bytes on the virt board's two x16 chips) with
    0xFF, and QEMU stores each programmed word as given instead of ANDing it into the
    cells (hw/block/pflash_cfi01.c, pflash_data_write). A lone byte written there turns
    its word's other bytes into 0xFF."""

    bank: int = 4

    def write(self, offset: int, data: bytes) -> None:
        self.log.append(("write", offset, len(data)))
        lo = offset - offset % self.bank
        hi = offset + len(data) + (-(offset + len(data))) % self.bank
        padded = b"\xff" * (offset - lo) + data + b"\xff" * (hi - offset - len(data))
        self.data[lo:hi] = padded


def store_on(nor: FakeNor, config: str, flags: str = "boolean") -> EnvStore:
    layout = parse_fw_env_config(config)
    return EnvStore(layout, flags, open_mtd=lambda path, writable: nor)


REDUNDANT = f"/dev/mtd0 0x200 {SIZE:#x} {ERASE:#x}\n/dev/mtd0 0x400 {SIZE:#x} {ERASE:#x}\n"
ENV = {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3"}


def copies_of(nor: FakeNor) -> tuple[bytes, bytes]:
    return nor.read(0x200, SIZE), nor.read(0x400, SIZE)


def crc_ok(raw: bytes) -> bool:
    return struct.unpack("<I", raw[:4])[0] == zlib.crc32(raw[5:])


# --- the kernel's numbers -----------------------------------------------------------

C_PROBE = r"""
#include <stdio.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <mtd/mtd-user.h>
int main(void) {
    printf("%lu %lu %lu\n", (unsigned long)MEMGETINFO, (unsigned long)MEMERASE,
           (unsigned long)MEMUNLOCK);
    printf("%zu %zu\n", sizeof(struct mtd_info_user), sizeof(struct erase_info_user));
    printf("%zu %zu %zu %zu %zu %zu\n", offsetof(struct mtd_info_user, type),
           offsetof(struct mtd_info_user, flags), offsetof(struct mtd_info_user, size),
           offsetof(struct mtd_info_user, erasesize), offsetof(struct mtd_info_user, writesize),
           offsetof(struct mtd_info_user, oobsize));
    printf("%d %d %d %d\n", MTD_NORFLASH, MTD_NANDFLASH, MTD_MLCNANDFLASH, MTD_WRITEABLE);
    return 0;
}
"""


def test_ioctl_numbers_and_layouts_match_the_kernel_header(tmp_path: Path) -> None:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc missing: run 'bash .ci/setup' (.ci/deps/base.apt)")
    src = tmp_path / "probe.c"
    src.write_text(C_PROBE)
    subprocess.run([gcc, "-o", str(tmp_path / "probe"), str(src)], check=True)
    out = subprocess.run([str(tmp_path / "probe")], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert [int(x) for x in out[0].split()] == [mtd.MEMGETINFO, mtd.MEMERASE, mtd.MEMUNLOCK]
    assert [int(x) for x in out[1].split()] == [32, 8]
    info = mtd.MtdInfo(3, 0x400, 0x8000000, 0x40000, 1, 0)
    raw = info.pack()
    assert len(raw) == 32
    offs = [int(x) for x in out[2].split()]
    assert raw[offs[0]] == 3
    assert [struct.unpack_from("=I", raw, o)[0] for o in offs[1:]] == [
        0x400, 0x8000000, 0x40000, 1, 0]
    assert mtd.MtdInfo.unpack(raw) == info
    assert [int(x) for x in out[3].split()] == [
        mtd.MTD_NORFLASH, mtd.MTD_NANDFLASH, mtd.MTD_MLCNANDFLASH, mtd.MTD_WRITEABLE]


# --- the fake is NOR ----------------------------------------------------------------


def test_the_fake_only_clears_bits_so_a_write_without_erase_corrupts() -> None:
    nor = FakeNor()
    nor.write(0, b"\x0f\xf0")
    nor.write(0, b"\xf0\xf0")  # no erase in between
    assert nor.read(0, 2) == b"\x00\xf0"  # not what was written last
    with pytest.raises(OSError) as err:
        nor.erase(0x10, ERASE)
    assert err.value.errno == errno.EINVAL
    nor.erase(0, ERASE)
    assert nor.read(0, 2) == b"\xff\xff"


def test_a_writer_that_skips_the_erase_is_caught_and_the_old_env_stays() -> None:
    nor = FakeNor()
    store = store_on(nor, REDUNDANT)
    store.initialize(ENV)
    store.update({"BOOT_ORDER": "B A"})  # now both copies hold data
    nor.erase = lambda start, length: None  # type: ignore[method-assign]
    with pytest.raises(EnvError, match="did not read back"):
        store.update({"BOOT_ORDER": "A B", "x": "a longer value than before"})
    assert store.read()["BOOT_ORDER"] == "B A"


# --- writing ------------------------------------------------------------------------


def test_initialize_then_read_with_boolean_flags() -> None:
    nor = FakeNor()
    store = store_on(nor, REDUNDANT)
    store.initialize(ENV)
    a, b = copies_of(nor)
    assert crc_ok(a) and crc_ok(b) and (a[4], b[4]) == (1, 0)
    assert store.read() == ENV


def test_update_erases_only_the_inactive_copy_and_sets_its_flag_last() -> None:
    nor = FakeNor()
    store = store_on(nor, REDUNDANT)
    store.initialize(ENV)
    nor.log.clear()
    store.update({"BOOT_ORDER": "B A"})
    # copy 0 (0x200) is active: copy 1 (0x400) is erased and written, its flag byte
    # programmed 0xFF -> 0x01 last, then copy 0's flag 0x01 -> 0x00
    # (each flag inside its aligned 32-byte unit, the bytes around it as they are)
    assert nor.log == [
        ("unlock", 0x400, ERASE), ("erase", 0x400, ERASE), ("write", 0x400, SIZE),
        ("write", 0x400, 32), ("unlock", 0x200, ERASE), ("write", 0x200, 32),
    ]
    a, b = copies_of(nor)
    assert (a[4], b[4]) == (0, 1) and crc_ok(a) and crc_ok(b)
    assert store.read()["BOOT_ORDER"] == "B A"
    nor.log.clear()
    store.update({"BOOT_ORDER": "A B"})  # and back: copy 0 is the one rewritten now
    assert [e for e in nor.log if e[0] == "erase"] == [("erase", 0x200, ERASE)]
    assert store.read()["BOOT_ORDER"] == "A B"


def test_every_change_survives_two_writers_in_a_row() -> None:
    """The §1.7 trap (incremental counters on a NOR build lose every other change) is
    absent: each of many updates is what the next read, and select_copy as U-Boot's
    env_flash_init, sees."""
    nor = FakeNor()
    store = store_on(nor, REDUNDANT)
    store.initialize(ENV)
    for i in range(7):
        store.update({"n": str(i)})
        assert store.read()["n"] == str(i)
        a, b = copies_of(nor)
        assert sorted((a[4], b[4])) == [0, 1]


@pytest.mark.parametrize("flags", ["boolean", "incremental"])
def test_a_power_cut_anywhere_leaves_the_old_or_the_new_env(flags: str) -> None:
    base = FakeNor()
    store = store_on(base, REDUNDANT, flags)
    store.initialize(ENV)
    store.update({"BOOT_ORDER": "B A"})  # so the cut hits a rewrite of used flash
    before = store.read()
    after = {**before, "BOOT_ORDER": "A B", "BOOT_B_LEFT": "0"}
    outcomes = set()
    budget = 0
    while True:
        nor = FakeNor(data=bytearray(base.data), budget=budget)
        cut = store_on(nor, REDUNDANT, flags)
        try:
            cut.update({"BOOT_ORDER": "A B", "BOOT_B_LEFT": "0"})
        except PowerCut:
            nor.budget = None
            seen = cut.read()
            assert seen in (before, after), budget
            outcomes.add("old" if seen == before else "new")
            # ...and the next write after the power is back works from there
            cut.update({"z": "1"})
            assert cut.read() == {**seen, "z": "1"}
            budget += 1
            continue
        assert cut.read() == after
        break
    assert outcomes == {"old", "new"} and budget > SIZE


def test_bytes_sharing_the_erase_block_are_kept() -> None:
    """A sector larger than the env (U-Boot's env/flash.c keeps the rest too)."""
    nor = FakeNor(erasesize=0x200, size=0x1000)
    config = "/dev/mtd0 0x0 0x100 0x200\n/dev/mtd0 0x400 0x100 0x200\n"
    nor.write(0x180, b"keep me")
    nor.write(0x580, b"and me")
    store = store_on(nor, config)
    store.initialize(ENV)
    store.update({"BOOT_ORDER": "B A"})
    assert nor.read(0x180, 7) == b"keep me" and nor.read(0x580, 6) == b"and me"
    assert store.read()["BOOT_ORDER"] == "B A"


def test_sector_size_defaults_to_the_erase_block() -> None:
    nor = FakeNor(erasesize=0x200, size=0x1000)
    store = store_on(nor, "/dev/mtd0 0x0 0x100\n/dev/mtd0 0x200 0x100\n")
    store.initialize(ENV)
    assert ("erase", 0x200, 0x200) in nor.log and ("erase", 0x0, 0x200) in nor.log


def test_single_copy_on_nor() -> None:
    nor = FakeNor()
    store = store_on(nor, f"/dev/mtd0 0x200 {SIZE:#x}\n")
    store.initialize(ENV)
    store.update({"BOOT_A_LEFT": "2"})
    assert store.read()["BOOT_A_LEFT"] == "2"


def test_unlock_not_supported_is_ignored_other_errors_are_not() -> None:
    nor = FakeNor(unlock_errno=errno.EOPNOTSUPP)
    store_on(nor, REDUNDANT).initialize(ENV)
    nor = FakeNor(unlock_errno=errno.EIO)
    with pytest.raises(EnvError, match=r"unlocking /dev/mtd0 at 0x400 failed"):
        store_on(nor, REDUNDANT).initialize(ENV)


def test_the_kernel_seam_ignores_eopnotsupp_from_memunlock(monkeypatch) -> None:
    calls = []

    def ioctl(fd: int, request: int, arg: bytes) -> None:
        calls.append((request, struct.unpack("=2I", arg)))
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(mtd.fcntl, "ioctl", ioctl)
    dev = mtd.KernelMtd.__new__(mtd.KernelMtd)
    dev.fd = -1
    dev.unlock(0x40000, 0x40000)
    assert calls == [(mtd.MEMUNLOCK, (0x40000, 0x40000))]
    with pytest.raises(OSError):
        dev.erase(0x40000, 0x40000)


# --- refusals -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nor", "config", "needle"),
    [
        (FakeNor(type=mtd.MTD_NANDFLASH), REDUNDANT, r"NAND \(bad blocks\).*NOR only"),
        (FakeNor(type=mtd.MTD_MLCNANDFLASH), REDUNDANT, r"NAND \(bad blocks\)"),
        (FakeNor(type=7), REDUNDANT, "UBI volume flash"),
        (FakeNor(flags=0), REDUNDANT, "read-only MTD partition"),
        (FakeNor(erasesize=0x200, size=0x1000), REDUNDANT, "not a multiple of the flash's"),
        # no sector in the config: the 0x400 erase block holds both copies
        (FakeNor(erasesize=0x400, size=0x1000), "/dev/mtd0 0x0 0x100\n/dev/mtd0 0x200 0x100\n",
         "share an erase block"),
        (FakeNor(size=0x400), REDUNDANT, "ends beyond the device"),
    ],
)
def test_refused_before_anything_is_written(nor: FakeNor, config: str, needle: str) -> None:
    before = bytes(nor.data)
    store = store_on(nor, config)
    with pytest.raises(EnvError, match=needle):
        store.initialize(ENV)
    with pytest.raises(EnvError, match=needle):
        store.read()
    assert bytes(nor.data) == before


def test_mtdblock_is_refused_with_the_char_device_to_use(tmp_path: Path) -> None:
    cfg = tmp_path / "fw_env.config"
    cfg.write_text("/dev/mtdblock3 0x0 0x40000 0x40000\n")
    with pytest.raises(EnvError, match=r"name the char device /dev/mtd3"):
        load_layout(cfg)


def test_cannot_open_is_one_line(tmp_path: Path) -> None:
    def refuse(path: Path, writable: bool) -> mtd.Mtd:
        raise PermissionError(errno.EACCES, "Permission denied")

    store = EnvStore(parse_fw_env_config(REDUNDANT), "boolean", open_mtd=refuse)
    with pytest.raises(EnvError, match=r"^cannot open env device /dev/mtd0: Permission denied$"):
        store.read()


def test_select_copy_reads_what_a_cut_before_the_flag_leaves() -> None:
    """Data written, flag byte still 0xFF: U-Boot's env_flash_init loads that copy
    (its 0xFF cases), and so does ferry; both copies are whole envs."""
    from ferry.daemon.boot.ubootenv import decode_copy, encode_copy

    old = decode_copy(encode_copy({"v": "old"}, SIZE, flag=1), redundant=True)
    new = bytearray(encode_copy({"v": "new"}, SIZE, flag=1))
    new[4] = 0xFF
    fresh = decode_copy(bytes(new), redundant=True)
    assert select_copy((old, fresh), "boolean") == 1
    assert select_copy((fresh, old), "boolean") == 0


def test_flags_survive_a_flash_that_stores_padded_words_as_given() -> None:
    """The box (QEMU's pflash): programming a flag byte alone wiped the next three env
    bytes of both copies, so ferry and fw_printenv found no valid env after the first
    ``ferry mark``. Written inside a unit carrying the current bytes, both copies keep
    their CRC."""
    nor = QemuPflash()
    store = store_on(nor, REDUNDANT)
    store.initialize(ENV)
    for i in range(3):
        store.update({"n": str(i)})
        a, b = copies_of(nor)
        assert crc_ok(a) and crc_ok(b), i
        assert sorted((a[4], b[4])) == [0, 1]
        assert store.read()["n"] == str(i)
