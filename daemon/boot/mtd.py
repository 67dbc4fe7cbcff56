"""The kernel's MTD character device (``/dev/mtdN``): the few ioctls a NOR env writer needs.

A U-Boot env in SPI or parallel NOR is reached from Linux through the MTD char device,
not a block device: NOR programs bits only from 1 to 0, so every rewrite of a copy needs
an erase of its whole sector(s) first (``MEMERASE``), which a plain ``pwrite`` never
does. This module is the seam between ferry's env logic (``ubootenv``) and the kernel:
``Mtd`` is what the env store calls, ``KernelMtd`` is the real device, and the unit tests
put a file with NOR semantics behind the same protocol.

Numbers and layouts are the kernel's UAPI, ``<mtd/mtd-abi.h>``::

    struct mtd_info_user { __u8 type; __u32 flags; __u32 size; __u32 erasesize;
                           __u32 writesize; __u32 oobsize; __u64 padding; };   // 32 bytes
    struct erase_info_user { __u32 start; __u32 length; };                    // 8 bytes
    #define MEMGETINFO  _IOR('M', 1, struct mtd_info_user)
    #define MEMERASE    _IOW('M', 2, struct erase_info_user)
    #define MEMUNLOCK   _IOW('M', 6, struct erase_info_user)

and libubootenv's ``src/uboot_mtd.c`` (``libubootenv_mtdwrite``) is the independent
implementation ferry's sequence follows: unlock (its failure ignored), erase, write.
tests/unit/test_uboot_mtd.py compiles a C program against the host's header to check
these numbers.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# enum in <mtd/mtd-abi.h>: MTD_ABSENT 0, MTD_RAM 1, MTD_ROM 2, MTD_NORFLASH 3,
# MTD_NANDFLASH 4, MTD_DATAFLASH 6, MTD_UBIVOLUME 7, MTD_MLCNANDFLASH 8
MTD_NORFLASH = 3
MTD_NANDFLASH = 4
MTD_MLCNANDFLASH = 8
TYPE_NAMES = {0: "absent", 1: "RAM", 2: "ROM", 3: "NOR", 4: "NAND", 6: "DataFlash",
              7: "UBI volume", 8: "MLC NAND"}
MTD_WRITEABLE = 0x400

_INFO = struct.Struct("=B3x5IQ")  # struct mtd_info_user, natural alignment
_ERASE = struct.Struct("=2I")  # struct erase_info_user


def _ioc(direction: int, nr: int, size: int) -> int:
    """Linux's generic ``_IOC`` (asm-generic/ioctl.h: arm, arm64, x86, riscv)."""
    return (direction << 30) | (size << 16) | (ord("M") << 8) | nr


_IOC_WRITE, _IOC_READ = 1, 2
MEMGETINFO = _ioc(_IOC_READ, 1, _INFO.size)
MEMERASE = _ioc(_IOC_WRITE, 2, _ERASE.size)
MEMUNLOCK = _ioc(_IOC_WRITE, 6, _ERASE.size)

# What MEMUNLOCK answers on a chip without lock bits: EOPNOTSUPP from mtd_unlock, or the
# kernel-internal ENOTSUPP (524) some drivers leak; ENOTTY from a kernel without it.
_NO_LOCKING = {errno.EOPNOTSUPP, errno.ENOTTY, 524}

_CHAR = re.compile(r"^/dev/mtd(\d+)$")
_BLOCK = re.compile(r"^/dev/mtdblock(\d+)$")


def is_mtd_char(path: Path) -> bool:
    """``/dev/mtdN``, the name libubootenv also keys its MTD handling on."""
    return _CHAR.match(str(path)) is not None


def block_device_hint(path: Path) -> str | None:
    """For ``/dev/mtdblockN``, the message that says which device to name instead."""
    m = _BLOCK.match(str(path))
    if m is None:
        return None
    return (f"{path} is the MTD block emulation (its writes go through a read-erase-write "
            f"cache that a power cut can leave half-erased); name the char device "
            f"/dev/mtd{m.group(1)} in fw_env.config, as libubootenv requires")


@dataclass(frozen=True)
class MtdInfo:
    """``struct mtd_info_user`` as MEMGETINFO fills it."""

    type: int
    flags: int
    size: int
    erasesize: int
    writesize: int
    oobsize: int

    @classmethod
    def unpack(cls, raw: bytes) -> MtdInfo:
        t, flags, size, erasesize, writesize, oobsize, _pad = _INFO.unpack(raw)
        return cls(t, flags, size, erasesize, writesize, oobsize)

    def pack(self) -> bytes:
        return _INFO.pack(self.type, self.flags, self.size, self.erasesize, self.writesize,
                          self.oobsize, 0)

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type, f"type {self.type}")


class Mtd(Protocol):
    """One opened MTD device: what the env store needs of it."""

    def info(self) -> MtdInfo: ...

    def unlock(self, start: int, length: int) -> None: ...

    def erase(self, start: int, length: int) -> None: ...

    def read(self, offset: int, size: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...

    def close(self) -> None: ...


class KernelMtd:
    """``/dev/mtdN`` through the kernel's ioctls; raises OSError as the kernel answers."""

    def __init__(self, path: Path, *, writable: bool) -> None:
        self.path = path
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
        self.fd = os.open(path, flags)

    def info(self) -> MtdInfo:
        buf = bytearray(_INFO.size)
        fcntl.ioctl(self.fd, MEMGETINFO, buf)
        return MtdInfo.unpack(bytes(buf))

    def unlock(self, start: int, length: int) -> None:
        try:
            fcntl.ioctl(self.fd, MEMUNLOCK, _ERASE.pack(start, length))
        except OSError as err:
            if err.errno not in _NO_LOCKING:
                raise

    def erase(self, start: int, length: int) -> None:
        fcntl.ioctl(self.fd, MEMERASE, _ERASE.pack(start, length))

    def read(self, offset: int, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            chunk = os.pread(self.fd, size - len(out), offset + len(out))
            if not chunk:
                raise OSError(errno.EIO, f"short read at {offset + len(out):#x}")
            out += chunk
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        # mtdchar programs synchronously: when pwrite returns, the bits are in the flash
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n

    def close(self) -> None:
        os.close(self.fd)


def open_kernel_mtd(path: Path, writable: bool) -> Mtd:
    return KernelMtd(path, writable=writable)
