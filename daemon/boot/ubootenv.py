"""The U-Boot environment, read and written natively (no ``fw_setenv`` subprocess).

Layout of one copy (U-Boot ``include/env_internal.h``)::

    single:     crc32 (4, LE) | data (envsize - 4)
    redundant:  crc32 (4, LE) | flags (1) | data (envsize - 5)

``data`` is ``name=value\\0`` entries ending with an empty entry; the CRC covers the whole
data area, padding included, so a torn write anywhere is caught.

The redundant flag byte has two meanings, and which one the U-Boot build uses depends
on its storage backend, not on anything written in the env, so it is a config setting:

- ``boolean`` (U-Boot ``env/flash.c``, NOR): 1 = active, 0 = obsolete. U-Boot writes the
  new copy with flag 1, then clears the old copy's flag to 0.
- ``incremental`` (every other backend, and libubootenv on plain files): a counter; the
  copy with the higher value (mod 256, 255 < 0) is current; the old copy is left alone.

Every write goes to the copy that is *not* current, in full, and is fsynced before
anything marks the old copy obsolete; a power cut at any byte leaves one valid copy
holding either the old or the new env. A single-copy env is rewritten in place and is
not power-safe; see docs/bootloader.md.

On ``/dev/mtdN`` (NOR, through daemon/boot/mtd.py) a copy is rewritten as libubootenv's
``libubootenv_mtdwrite`` and U-Boot's env/flash.c do: MEMGETINFO (NOR only: NAND's bad
blocks are refused), unlock and erase its sectors one by one, write it with the flag
byte still 0xFF, read it back, then program the flag, then the old copy's flag to 0 in
the boolean scheme. NOR can program that byte without an erase because every step
only clears bits; it goes out in an aligned 32-byte unit with the bytes around it as
they are, as U-Boot's CFI driver writes it. ``/dev/mtdblockN`` is refused: its cache
erases and rewrites behind ferry's back.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.daemon.boot.mtd import (
    MTD_MLCNANDFLASH,
    MTD_NANDFLASH,
    MTD_NORFLASH,
    MTD_WRITEABLE,
    Mtd,
    MtdInfo,
    block_device_hint,
    is_mtd_char,
    open_kernel_mtd,
)
from ferry.errors import FerryError

ACTIVE = 1
OBSOLETE = 0
# A flag byte on NOR is programmed inside an aligned unit this wide, the widest bus word
# the kernel's CFI maps know (MAP_BANKWIDTH_32, include/linux/mtd/map.h): see _program.
PROGRAM_UNIT = 32


class EnvError(FerryError):
    """The U-Boot env or its fw_env.config cannot be read or written safely."""


class NoValidEnvError(EnvError):
    """No copy of the env has a good CRC: U-Boot would boot with its default env."""


@dataclass(frozen=True)
class EnvDevice:
    """One line of fw_env.config: where one copy of the env lives."""

    path: Path
    offset: int
    size: int
    sector_size: int
    explicit_sector: bool = True  # False: not in fw_env.config (MTD: the erase block)

    @property
    def is_mtd(self) -> bool:
        return is_mtd_char(self.path)

    def erase_span(self, sector: int | None = None) -> tuple[int, int]:
        """Byte range that erasing this copy touches (whole sectors)."""
        sector = sector or self.sector_size
        start = self.offset - self.offset % sector
        end = self.offset + self.size
        end += -end % sector
        return start, end


@dataclass(frozen=True)
class EnvLayout:
    devices: tuple[EnvDevice, ...]

    @property
    def redundant(self) -> bool:
        return len(self.devices) == 2

    @property
    def size(self) -> int:
        return self.devices[0].size

    @property
    def data_size(self) -> int:
        return self.size - (5 if self.redundant else 4)


def _int(text: str, where: str) -> int:
    try:
        return int(text, 0)
    except ValueError as err:
        raise EnvError(f"{where}: {text!r} is not a number") from err


def parse_fw_env_config(text: str, *, origin: str = "fw_env.config") -> EnvLayout:
    """Parse libubootenv's fw_env.config: ``device offset envsize [sectorsize [sectors]]``.

    Relative device paths are kept as written; ``load_layout`` anchors them.
    """
    devices: list[EnvDevice] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{origin}:{lineno}"
        parts = line.split()
        if len(parts) < 3:
            raise EnvError(f"{where}: need 'device offset envsize [sectorsize]', got {raw!r}")
        offset = _int(parts[1], where)
        size = _int(parts[2], where)
        sector = _int(parts[3], where) if len(parts) > 3 else 0
        explicit = sector != 0
        if sector == 0:
            # libubootenv's default: one sector per copy (on MTD: the erase block)
            sector = size
        if offset < 0:
            raise EnvError(f"{where}: negative offsets (from the device end) are not supported")
        if size < 16:
            raise EnvError(f"{where}: env size {size} is too small")
        devices.append(EnvDevice(Path(parts[0]), offset, size, sector, explicit))
    if not devices:
        raise EnvError(f"{origin}: no env device configured")
    if len(devices) > 2:
        raise EnvError(f"{origin}: {len(devices)} lines; U-Boot keeps one or two env copies")
    if len(devices) == 2:
        a, b = devices
        if a.size != b.size:
            raise EnvError(f"{origin}: the two env copies differ in size ({a.size}, {b.size})")
        if a.path == b.path:
            (a0, a1), (b0, b1) = a.erase_span(), b.erase_span()
            if a0 < b1 and b0 < a1:
                raise EnvError(
                    f"{origin}: both env copies share an erase sector; erasing one would "
                    "destroy the other (check offsets and sector size)"
                )
    for d in devices:
        hint = block_device_hint(d.path)
        if hint is not None:
            raise EnvError(f"{origin}: {hint}")
    return EnvLayout(tuple(devices))


def load_layout(path: str | Path) -> EnvLayout:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise EnvError(
            f"cannot read {p}: {err.strerror}; set bootloader.fw_env_config"
        ) from err
    layout = parse_fw_env_config(text, origin=str(p))
    anchored = tuple(
        EnvDevice(d.path if d.path.is_absolute() else p.parent / d.path, d.offset, d.size,
                  d.sector_size, d.explicit_sector)
        for d in layout.devices
    )
    return EnvLayout(anchored)


# --- one copy: encode / decode ------------------------------------------------------


def encode_vars(env: Mapping[str, str], data_size: int) -> bytes:
    """The data area: sorted ``name=value\\0`` entries, an empty entry, zero padding."""
    out = bytearray()
    for name in sorted(env):
        value = env[name]
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise EnvError(f"invalid env entry {name!r}: names need no '=' and no NUL")
        out += name.encode("utf-8", "surrogateescape") + b"="
        out += value.encode("utf-8", "surrogateescape") + b"\0"
    out += b"\0"
    if len(out) > data_size:
        raise EnvError(f"env needs {len(out)} bytes but the env area holds {data_size}")
    return bytes(out) + bytes(data_size - len(out))


def decode_vars(data: bytes) -> dict[str, str]:
    env: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        end = data.find(b"\0", pos)
        if end < 0:
            end = len(data)
        entry = data[pos:end]
        if not entry:
            break
        name, sep, value = entry.partition(b"=")
        if sep:
            env[name.decode("utf-8", "surrogateescape")] = value.decode(
                "utf-8", "surrogateescape"
            )
        pos = end + 1
    return env


def encode_copy(env: Mapping[str, str], size: int, *, flag: int | None) -> bytes:
    """One whole copy; ``flag`` None means the single-copy layout."""
    head = 4 if flag is None else 5
    data = encode_vars(env, size - head)
    crc = struct.pack("<I", zlib.crc32(data))
    return crc + (b"" if flag is None else bytes([flag])) + data


@dataclass(frozen=True)
class Copy:
    """One copy as found on the device."""

    crc_ok: bool
    flag: int | None
    data: bytes

    def vars(self) -> dict[str, str]:
        return decode_vars(self.data)


def decode_copy(raw: bytes, *, redundant: bool) -> Copy:
    head = 5 if redundant else 4
    if len(raw) < head:
        return Copy(False, None, b"")
    (crc,) = struct.unpack("<I", raw[:4])
    data = raw[head:]
    return Copy(zlib.crc32(data) == crc, raw[4] if redundant else None, data)


def select_copy(copies: tuple[Copy, ...], flags: str) -> int:
    """Index of the copy U-Boot would load; NoValidEnvError if none.

    ``boolean`` follows ``env_flash_init`` in U-Boot's env/flash.c, ``incremental``
    follows ``env_import_redund`` in env/common.c.
    """
    if len(copies) == 1:
        if not copies[0].crc_ok:
            raise NoValidEnvError("the env has a bad CRC; U-Boot would use its default env")
        return 0
    a, b = copies
    if not a.crc_ok and not b.crc_ok:
        raise NoValidEnvError("both env copies have a bad CRC; U-Boot would use its default env")
    if a.crc_ok != b.crc_ok:
        return 0 if a.crc_ok else 1
    fa, fb = a.flag, b.flag
    if flags == "boolean":
        if fa == ACTIVE and fb == OBSOLETE:
            return 0
        if fa == OBSOLETE and fb == ACTIVE:
            return 1
        if fa == fb or fa == 0xFF:
            return 0
        # flag2 == 0xFF, and every case env_flash_init does not list, load copy 2.
        return 1
    if fa == 0xFF and fb == 0:
        return 1
    if fb == 0xFF and fa == 0:
        return 0
    assert fa is not None and fb is not None
    return 0 if fa >= fb else 1


def mtd_sector_size(dev: EnvDevice, info: MtdInfo) -> int:
    """The unit one copy is erased in, after refusing what ferry cannot write safely.

    NOR only: NAND has bad blocks, which libubootenv skips with the 5th column of
    fw_env.config and U-Boot's env/nand.c with its own range logic; ferry does neither.
    """
    if info.type != MTD_NORFLASH:
        kind = "NAND (bad blocks)" if info.type in (MTD_NANDFLASH, MTD_MLCNANDFLASH) \
            else info.type_name
        raise EnvError(f"{dev.path} is {kind} flash: ferry writes U-Boot envs on "
                       "bad-block-free NOR only (docs/bootloader.md)")
    if not info.flags & MTD_WRITEABLE:
        raise EnvError(f"{dev.path} is a read-only MTD partition; the env partition must "
                       "be writable (check the device tree's read-only property)")
    erase = info.erasesize or 1
    sector = dev.sector_size if dev.explicit_sector else erase
    if sector % erase:
        raise EnvError(f"{dev.path}: sector size {sector:#x} in fw_env.config is not a "
                       f"multiple of the flash's erase block ({erase:#x})")
    _start, end = dev.erase_span(sector)
    if end > info.size:
        raise EnvError(f"{dev.path}: env copy at {dev.offset:#x} (+{dev.size:#x}) ends "
                       f"beyond the device ({info.size:#x} bytes)")
    return sector


# --- the store: locked read-modify-write ---------------------------------------------


class _Sink:
    """Writes bytes to a device; tests replace it to cut power at a chosen byte."""

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n

    def fsync(self, fd: int) -> None:
        os.fsync(fd)


@dataclass
class EnvStore:
    """The env behind one fw_env.config. All changes of one ``update`` go in one write."""

    layout: EnvLayout
    flags: str = "incremental"
    lock_file: Path | None = None
    sink: _Sink | None = None
    # how /dev/mtdN is opened: the kernel's ioctls, or a fake NOR in the unit tests
    open_mtd: Callable[[Path, bool], Mtd] = open_kernel_mtd

    @classmethod
    def from_config(
        cls, fw_env_config: str | Path, *, flags: str = "incremental",
        lock_file: str | Path | None = None,
    ) -> EnvStore:
        if flags not in ("incremental", "boolean"):
            raise EnvError(f"flags must be 'incremental' or 'boolean', not {flags!r}")
        return cls(load_layout(fw_env_config), flags,
                   Path(lock_file) if lock_file is not None else None)

    # reading

    def read_copies(self) -> tuple[Copy, ...]:
        out = []
        for d in self.layout.devices:
            if d.is_mtd:
                with self._mtd(d, writable=False) as (m, _sector):
                    raw = self._mtd_call(d, "reading", d.offset, m.read, d.offset, d.size)
                out.append(decode_copy(raw, redundant=self.layout.redundant))
                continue
            try:
                with open(d.path, "rb") as f:
                    f.seek(d.offset)
                    raw = f.read(d.size)
            except OSError as err:
                raise EnvError(f"cannot read env device {d.path}: {err.strerror}") from err
            out.append(decode_copy(raw, redundant=self.layout.redundant))
        return tuple(out)

    def read(self) -> dict[str, str]:
        """The env U-Boot would load now."""
        with self._locked(shared=True):
            copies = self.read_copies()
            return copies[select_copy(copies, self.flags)].vars()

    # writing

    def update(self, changes: Mapping[str, str | None]) -> dict[str, str]:
        """Set (or with None, delete) variables in one write; returns the new env."""

        def apply(env: dict[str, str]) -> None:
            for k, v in changes.items():
                if v is None:
                    env.pop(k, None)
                else:
                    env[k] = v

        return self.modify(apply)

    def modify(self, fn: Callable[[dict[str, str]], None]) -> dict[str, str]:
        """Read, let ``fn`` change the dict, write once if anything changed.

        Refuses when no copy is valid (writing then would replace U-Boot's default env
        with a guess); use ``initialize`` for a deliberate first write.
        """
        with self._locked(shared=False):
            copies = self.read_copies()
            current = select_copy(copies, self.flags)
            old = copies[current].vars()
            new = dict(old)
            fn(new)
            if new != old:
                self._write(new, copies, current)
            return new

    def initialize(self, env: Mapping[str, str]) -> None:
        """Write ``env`` as the only content, whatever is there now (provisioning)."""
        with self._locked(shared=False):
            if not self.layout.redundant:
                self._write_copy(self.layout.devices[0], encode_copy(env, self.layout.size,
                                                                     flag=None))
                return
            first = ACTIVE if self.flags == "boolean" else 1
            second = OBSOLETE if self.flags == "boolean" else 0
            blob = dict(env)
            self._write_copy(self.layout.devices[1],
                             encode_copy(blob, self.layout.size, flag=second))
            self._write_copy(self.layout.devices[0],
                             encode_copy(blob, self.layout.size, flag=first))

    def _write(self, env: Mapping[str, str], copies: tuple[Copy, ...], current: int) -> None:
        size = self.layout.size
        if not self.layout.redundant:
            self._write_copy(self.layout.devices[0], encode_copy(env, size, flag=None))
            return
        target = 1 - current
        old_flag = copies[current].flag
        assert old_flag is not None
        if self.flags == "boolean":
            self._write_copy(self.layout.devices[target], encode_copy(env, size, flag=ACTIVE))
            # Only now, with the new copy durable, retire the old one (one byte; on NOR
            # a 1 -> 0 program needs no erase).
            old = self.layout.devices[current]
            if old.is_mtd:
                self._mtd_program(old, old.offset + 4, bytes([OBSOLETE]))
            else:
                self._write_bytes(old, old.offset + 4, bytes([OBSOLETE]))
        else:
            flag = (old_flag + 1) & 0xFF
            self._write_copy(self.layout.devices[target], encode_copy(env, size, flag=flag))

    def _write_copy(self, dev: EnvDevice, blob: bytes) -> None:
        if dev.is_mtd:
            self._mtd_write_copy(dev, blob)
        else:
            self._write_bytes(dev, dev.offset, blob)

    # --- MTD (NOR): erase before write, flag last, read back ---

    @contextlib.contextmanager
    def _mtd(self, dev: EnvDevice, *, writable: bool) -> Iterator[tuple[Mtd, int]]:
        """The opened device and the sector size to erase by, after MEMGETINFO's checks."""
        try:
            m = self.open_mtd(dev.path, writable)
        except OSError as err:
            raise EnvError(f"cannot open env device {dev.path}: {err.strerror}") from err
        try:
            info = self._mtd_call(dev, "MEMGETINFO on", 0, m.info)
            sector = mtd_sector_size(dev, info)
            if self.layout.redundant and all(d.path == dev.path for d in self.layout.devices):
                a, b = (d.erase_span(sector) for d in self.layout.devices)
                if a[0] < b[1] and b[0] < a[1]:
                    raise EnvError(
                        f"{dev.path}: both env copies share an erase block of "
                        f"{sector:#x} bytes; erasing one would destroy the other")
            yield m, sector
        finally:
            m.close()

    def _mtd_call(self, dev: EnvDevice, what: str, offset: int,
                  fn: Callable[..., bytes | MtdInfo | None], *args: int | bytes) -> Any:
        try:
            return fn(*args)
        except OSError as err:
            raise EnvError(f"{what} {dev.path} at {offset:#x} failed: "
                           f"{err.strerror or err}") from err

    def _mtd_write_copy(self, dev: EnvDevice, blob: bytes) -> None:
        """Erase the copy's sectors, write it with its flag byte still erased, read it
        back, then program the flag: until that last byte U-Boot and ``select_copy``
        see either a bad CRC or an unflagged copy, never a half-written one chosen.
        Bytes that share the sectors but not the copy are read first and put back, as
        U-Boot's env/flash.c does for a sector larger than the env."""
        redundant = self.layout.redundant
        with self._mtd(dev, writable=True) as (m, sector):
            start, end = dev.erase_span(sector)
            keep = bytearray(self._mtd_call(dev, "reading", start, m.read, start,
                                            end - start))
            body = bytearray(blob)
            flag = body[4] if redundant else None
            if redundant:
                body[4] = 0xFF
            rel = dev.offset - start
            keep[rel:rel + len(body)] = body
            image = bytes(keep)
            for s in range(start, end, sector):
                self._mtd_call(dev, "unlocking", s, m.unlock, s, sector)
                self._mtd_call(dev, "erasing", s, m.erase, s, sector)
            for lo, hi in ((start, dev.offset), (dev.offset, dev.offset + len(body)),
                           (dev.offset + len(body), end)):
                part = image[lo - start:hi - start]
                if part and part.count(0xFF) != len(part):
                    self._mtd_call(dev, "writing", lo, m.write, lo, part)
            back = self._mtd_call(dev, "reading back", start, m.read, start, end - start)
            if back != image:
                bad = next(i for i, (x, y) in enumerate(zip(back, image, strict=True)) if x != y)
                raise EnvError(f"{dev.path}: the env did not read back as written at "
                               f"{start + bad:#x} (a locked or worn-out sector?)")
            if flag is not None:
                self._program(dev, m, dev.offset + 4, bytes([flag]))

    def _mtd_program(self, dev: EnvDevice, offset: int, data: bytes) -> None:
        with self._mtd(dev, writable=True) as (m, sector):
            s = offset - offset % sector
            self._mtd_call(dev, "unlocking", s, m.unlock, s, sector)
            self._program(dev, m, offset, data)

    def _program(self, dev: EnvDevice, m: Mtd, offset: int, data: bytes) -> None:
        """Program bytes without an erase: only possible where every bit goes 1 -> 0.

        The bytes go out inside a whole aligned unit of PROGRAM_UNIT bytes that carries
        the flash's current content around them, as U-Boot's CFI driver does
        (drivers/mtd/cfi_flash.c, write_buff: the word around an unaligned byte is
        filled from flash_read8), never as a lone byte. The kernel's CFI driver pads a
        partial bus word with 0xFF, which real NOR ignores (it only clears bits) but an
        emulated flash that stores words as given does not: QEMU's pflash turned the
        three env bytes after a lone flag byte into 0xFF (the box, issue #17).
        Re-programming a byte with the value it holds clears no new bit."""
        lo = offset - offset % PROGRAM_UNIT
        hi = lo + -(-(offset + len(data) - lo) // PROGRAM_UNIT) * PROGRAM_UNIT
        old = self._mtd_call(dev, "reading", lo, m.read, lo, hi - lo)
        unit = bytearray(old)
        unit[offset - lo:offset - lo + len(data)] = data
        if any(o & n != n for o, n in zip(old, unit, strict=True)):
            raise EnvError(f"{dev.path}: cannot program {data.hex()} over "
                           f"{old[offset - lo:offset - lo + len(data)].hex()} at "
                           f"{offset:#x} without an erase")
        self._mtd_call(dev, "writing", lo, m.write, lo, bytes(unit))
        back = self._mtd_call(dev, "reading back", lo, m.read, lo, hi - lo)
        if back != unit:
            bad = next(i for i, (x, y) in enumerate(zip(back, unit, strict=True)) if x != y)
            raise EnvError(f"{dev.path}: {lo + bad:#x} reads {back[bad]:#04x} after "
                           f"programming {unit[bad]:#04x} (a locked sector?)")

    def _write_bytes(self, dev: EnvDevice, offset: int, blob: bytes) -> None:
        sink = self.sink or _Sink()
        try:
            fd = os.open(dev.path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                         0o600)
        except OSError as err:
            raise EnvError(f"cannot open env device {dev.path}: {err.strerror}") from err
        try:
            sink.pwrite(fd, blob, offset)
            sink.fsync(fd)
        except OSError as err:
            raise EnvError(f"writing the env to {dev.path} failed: {err.strerror}") from err
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _locked(self, *, shared: bool) -> Iterator[None]:
        if self.lock_file is None:
            yield
            return
        fd = open_lock(self.lock_file, create=True, required=not shared)
        if fd is None:
            # A reader that may not create the lock (ferry status as a user) reads
            # unlocked: writers only ever write the copy that is not current, so it
            # sees the old env or the new one.
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


_LOCK_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK


def open_lock(path: Path, *, create: bool, required: bool) -> int | None:
    """The env lock's fd, opened so that nobody else can choose what ferry opens.

    Where the lock lives in a world-writable directory (``/var/lock`` is ``/run/lock``,
    1777 on many systems), any user can plant a symlink there (root's ``O_CREAT`` would
    then create or open a file of the user's choosing) or pre-create the file and hold
    its lock forever. So: ``O_NOFOLLOW`` (a symlink is refused, its target never
    created), and the file must be a regular file owned by root (or by the user running
    ferry, for an unprivileged demo) and writable by nobody else. ``O_NONBLOCK`` keeps a
    FIFO planted there from hanging the open. Returns None when the lock cannot be opened
    and ``required`` is false (an unprivileged reader without access).
    """
    fd = None
    try:
        if create:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _LOCK_FLAGS, 0o644)
        else:
            fd = os.open(path, os.O_RDONLY | _LOCK_FLAGS)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise EnvError(f"refusing env lock {path}: it is a symbolic link (someone may "
                           "have planted it); remove it, or set bootloader.lock_file to a "
                           "path in a directory only root can write") from err
        if create and not required:
            return open_lock(path, create=False, required=False)
        if required:
            raise EnvError(f"cannot open env lock {path}: {err.strerror}") from err
        return None
    try:
        _check_lock(path, os.fstat(fd))
    except EnvError:
        os.close(fd)
        raise
    return fd


def _check_lock(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise EnvError(f"refusing env lock {path}: not a regular file; remove it")
    if st.st_uid not in (0, os.geteuid()):
        raise EnvError(f"refusing env lock {path}: owned by uid {st.st_uid}, not root; "
                       "another user may have created it to block ferry: remove it")
    if st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid != 0):
        raise EnvError(f"refusing env lock {path}: writable by other users (mode "
                       f"{stat.S_IMODE(st.st_mode):04o}); remove it or chmod go-w")
